"""The metrics sink on the session's real stack: every reporting topic lands in ClickHouse, named queries and the
CLI answer from it, the sink exports its own metrics, and the dashboard renders in headless Chromium."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from libs.common.envelope import new_envelope
from libs.common.topics import DRIFT_WINDOWS, INFERENCE_SENSORS, MODELS, MONITORING
from protos import events_pb2
from tests.integration.chromium import ARTIFACTS, headless_chromium
from tests.integration.conftest import QUERY_API_TOKEN, query, query_api_headers, wait_for
from tests.integration.kafka_tools import produce

pytestmark = pytest.mark.integration


def named(stack, name: str, **parameters) -> list[dict]:
    request = urllib.request.Request(f"{stack.config.query_api_url}/api/query", method="POST",
                                     data=json.dumps({"named": name, "parameters": parameters}).encode(),
                                     headers=query_api_headers())
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.loads(response.read())
    return [dict(zip(payload["columns"], row)) for row in payload["rows"]]


@pytest.fixture(scope="module")
def reported(stack):
    """A drift window (sent twice, as a window closed again after a restart), an open drift alert, a model status
    and an undecodable monitoring event sent through Kafka, and stored."""
    marker = uuid.uuid4().hex[:8]
    camera = f"drift-{marker}"
    window = events_pb2.DriftWindow(
        envelope=new_envelope(f"camera/{camera}", "drift"), subject=f"camera/{camera}|yolov3-tiny|1",
        camera_id=camera, model=events_pb2.ModelRef(name="yolov3-tiny", version="1"), count=120, status="scored",
        alert_state="alert", summary=b"{}",
        scores=[events_pb2.DriftScore(feature=f"input.brightness.{marker}", metric="psi", score=0.4, threshold=0.2,
                                      drifted=True, window_count=120, reference_count=1200),
                events_pb2.DriftScore(feature="input.contrast", metric="ks", score=0.05, threshold=0.2, drifted=False,
                                      p_value=0.7, window_count=120, reference_count=1200)])
    window.window_start.FromNanoseconds(window.envelope.event_time.ToNanoseconds() - 60 * 10**9)
    window.window_end.CopyFrom(window.envelope.event_time)
    drift = events_pb2.MonitoringEvent(
        envelope=new_envelope(f"camera/{camera}", "drift"),
        drift_alert=events_pb2.DriftAlert(
            model_name="yolov3-tiny", model_version="1", camera_id=camera, state="raised", windows=3,
            feature=f"input.brightness.{marker}", metric="psi", score=0.4, threshold=0.2,
            top_features=[window.scores[0]]))
    status = events_pb2.MonitoringEvent(
        envelope=new_envelope("model/yolov3-tiny", "test"),
        model_status=events_pb2.ModelStatus(model=events_pb2.ModelRef(name="yolov3-tiny", version="1"), state="ready"))
    produce(stack.config.kafka_bootstrap, DRIFT_WINDOWS, [(window.subject.encode(), window.SerializeToString())] * 2)
    produce(stack.config.kafka_bootstrap, MONITORING, [(camera.encode(), drift.SerializeToString()),
                                                       (b"yolov3-tiny", status.SerializeToString())])
    # Into vigil.monitoring, not vigil.inference: other tests read every inference event from the beginning.
    produce(stack.config.kafka_bootstrap, MONITORING,
            [(marker.encode(), b"\xff\xfe not a protobuf " + marker.encode())])
    wait_for(lambda: query(stack, f"SELECT count() AS n FROM drift_alerts WHERE camera_id = '{camera}'")[0]["n"],
             60, what="the drift alert stored")
    wait_for(lambda: query(stack, f"SELECT count() AS n FROM drift_scores WHERE camera_id = '{camera}'")[0]["n"],
             60, what="the drift window's scores stored")
    # The sink dead-letters the bad event into vigil.dlq, then reads it back from there as a dead letter.
    wait_for(lambda: query(stack, f"SELECT count() AS n FROM dead_letters WHERE message_key = '{marker}' "
                                  "AND origin_topic = 'vigil.monitoring' AND reason = 'malformed_event' "
                                  "AND service = 'metrics'")[0]["n"], 60, what="the dead letter counted")
    return marker


def test_monitoring_events_and_dead_letters_from_kafka_are_stored(stack, reported):
    kinds = {r["kind"] for r in query(stack, "SELECT DISTINCT kind FROM monitoring_events")}
    assert {"drift_alert", "model_status"} <= kinds
    # The ingest service reports its camera's status on vigil.monitoring: the camera's health timeline.
    health = wait_for(lambda: named(stack, "camera_health_timeline", camera_id=stack.config.camera_id), 60,
                      what="camera status reports from ingest")
    assert health[-1]["state"] in {"online", "connecting"}
    rate = named(stack, "dead_letter_rate")
    assert any(r["origin_topic"] == "vigil.monitoring" and r["reason"] == "malformed_event" for r in rate)


def test_drift_windows_and_alerts_from_kafka_through_the_named_queries(stack, reported):
    camera = f"drift-{reported}"
    subject = f"camera/{camera}|yolov3-tiny|1"
    # The window was delivered twice: its two scores are stored once.
    scores = named(stack, "drift_scores", camera_id=camera)
    assert [(r["subject"], r["feature"], r["metric"], r["score"], r["drifted"], r["p_value"]) for r in scores] == [
        (subject, "input.brightness." + reported, "psi", 0.4, True, None),
        (subject, "input.contrast", "ks", 0.05, False, 0.7)]
    assert {(r["window_status"], r["alert_state"], r["window_count"], r["reference_count"]) for r in scores} == {
        ("scored", "alert", 120, 1200)}
    [latest] = named(stack, "drift_windows_latest", camera_id=camera)
    assert (latest["subject"], latest["status"], latest["alert_state"], latest["count"], latest["drifted_features"]) \
        == (subject, "scored", "alert", 120, ["input.brightness." + reported])
    [open_alert] = named(stack, "drift_alerts_open", camera_id=camera)
    assert (open_alert["subject"], open_alert["model_version"], open_alert["windows"], open_alert["top_features"]) \
        == (subject, "1", 3, ["input.brightness." + reported])
    # The drift service of the stack scores the stack's own camera too: its windows are there, scored or not.
    wait_for(lambda: named(stack, "drift_windows_latest", camera_id=stack.config.camera_id), 180,
             what="the drift service's windows of the stack's camera")


def test_named_queries_through_the_cli(stack):
    wait_for(lambda: named(stack, "fps_per_camera", camera_id=stack.config.camera_id), 120, what="results stored")
    command = Path(sys.executable).parent / "vigil"
    done = subprocess.run([str(command), "--state-dir", str(stack.paths.state), "query", "--named", "fps_per_camera",
                           "--param", f"camera_id={stack.config.camera_id}"],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["camera_id"] for r in rows] == [stack.config.camera_id] and rows[0]["frames"] > 0
    latency = [json.loads(line) for line in subprocess.run(
        [str(command), "--state-dir", str(stack.paths.state), "query", "--named", "latency_quantiles"],
        capture_output=True, text=True, timeout=60, cwd="/").stdout.splitlines()]
    stages = {r["stage"]: r for r in latency if r["model_name"] == "yolov3-tiny"}
    assert {"infer", "decode", "total"} <= set(stages)
    assert 0 < stages["infer"]["p50_ms"] <= stages["infer"]["p99_ms"] <= stages["total"]["p99_ms"]
    nothing = subprocess.run([str(command), "--state-dir", str(stack.paths.state), "query", "--named",
                              "fps_per_camera", "--param", "camera_id=no-such-camera"],
                             capture_output=True, text=True, timeout=60, cwd="/")
    assert (nothing.returncode, nothing.stdout) == (0, "")
    assert nothing.stderr == "vigil: no rows (columns: camera_id, frames, fps)\n"
    refused = subprocess.run([str(command), "--state-dir", str(stack.paths.state), "query",
                              "SELECT * FROM system.tables"], capture_output=True, text=True, timeout=60, cwd="/")
    assert refused.returncode == 2 and "system.tables" in refused.stderr


def test_the_sink_exports_lag_batch_size_insert_latency_and_rate(stack):
    expected = [r'vigil_metrics_consumer_lag\{partition="\d+",topic="vigil.inference"\} \d',
                r'vigil_metrics_batch_rows_count\{table="inference_events"\} [1-9]',
                r'vigil_metrics_insert_seconds_count\{table="inference_events"\} [1-9]',
                r'vigil_metrics_rows_per_second\{table="inference_events"\} \d',
                r'vigil_metrics_rows_stored_total\{table="inference_events"\} [1-9]']

    def missing():
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.config.ports.metrics_ops}/metrics", timeout=10) as r:
            text = r.read().decode()
        return [pattern for pattern in expected if not re.search(pattern, text)]

    # librdkafka's statistics (the lag) come every 5 s.
    wait_for(lambda: not missing(), 30, what="the sink's metrics in /metrics")


def test_the_query_api_and_the_dashboard_refuse_a_request_without_the_token(stack):
    for path, data in (("/api/query", json.dumps({"sql": "SELECT 1"}).encode()), ("/", None), ("/api/named", None)):
        request = urllib.request.Request(f"{stack.config.query_api_url}{path}", data=data)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401, path
    command = Path(sys.executable).parent / "vigil"
    without = subprocess.run([str(command), "--state-dir", str(stack.paths.state), "query", "SELECT 1"],
                             capture_output=True, text=True, timeout=60, cwd="/",
                             env={k: v for k, v in os.environ.items() if k != QUERY_API_TOKEN})
    assert without.returncode == 2 and "VIGIL_METRICS_API_TOKEN" in without.stderr, without.stderr


def test_dashboard_renders_charts_with_data_and_boxes_on_the_live_frame(stack, reported):
    wait_for(lambda: query(stack, "SELECT count() AS n FROM inference_events WHERE detection_count > 0 "
                                  "AND event_time > now() - INTERVAL 1 MINUTE")[0]["n"], 120, what="recent detections")
    sensor = f"dashboard-{uuid.uuid4().hex[:8]}"
    flagged = events_pb2.SensorAnomalyResult(
        envelope=new_envelope(f"sensor/{sensor}", "inference"), sensor_id=sensor, quantity="temperature",
        unit="°C", value=48.5, model=events_pb2.ModelRef(name="sensor-anomaly", version="1"), score=12.5,
        anomaly=True, threshold=4.2, reading_event_id=str(uuid.uuid4()))
    produce(stack.config.kafka_bootstrap, INFERENCE_SENSORS, [(sensor.encode(), flagged.SerializeToString())])
    model = f"dashboard-model-{uuid.uuid4().hex[:8]}"
    promoted = events_pb2.ModelVersion(
        envelope=new_envelope(f"registry/{model}", "vigil-models"),
        model=events_pb2.ModelRef(name=model, version="3", precision="int8"), stage="primary",
        metadata={"action": "promote", "by": "cli/dashboard-test"})
    produce(stack.config.kafka_bootstrap, MODELS, [(model.encode(), promoted.SerializeToString())])
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        requests_elsewhere = []
        page.on("request", lambda r: None if r.url.startswith(stack.config.query_api_url)
                else requests_elsewhere.append(r.url))
        # As an operator would: the token once in the address, then the cookie it sets carries every request.
        page.goto(f"{stack.config.query_api_url}/?camera={stack.config.camera_id}"
                  f"&token={os.environ[QUERY_API_TOKEN]}")
        assert page.url == f"{stack.config.query_api_url}/?camera={stack.config.camera_id}", "token left the URL"
        page.wait_for_function("Number(document.body.dataset.refreshed || 0) >= 1", timeout=30_000)
        # The live view needs a frame of the camera and a result with boxes: wait for both.
        page.wait_for_function(
            "document.getElementById('live').dataset.frame === '1' "
            "&& Number(document.getElementById('live').dataset.boxes) > 0", timeout=30_000)
        page.wait_for_function("Number(document.getElementById('dead-letters').dataset.points) > 0",
                               timeout=30_000)
        page.wait_for_selector(f"#sensor-anomalies tr[data-sensor='{sensor}']", timeout=30_000)
        page.wait_for_selector(f"#model-versions tr[data-model='{model}']", timeout=30_000)
        drift_subject = f"camera/drift-{reported}|yolov3-tiny|1"
        page.wait_for_selector(f"#drift-subjects tr[data-subject='{drift_subject}']", timeout=30_000)
        page.wait_for_selector(f"#drift-alerts tr[data-subject='{drift_subject}']", timeout=30_000)
        page.wait_for_function("Number(document.getElementById('drift-scores').dataset.points) > 0",
                               timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        anomaly_row = page.inner_text(f"#sensor-anomalies tr[data-sensor='{sensor}']")
        model_row = page.inner_text(f"#model-versions tr[data-model='{model}']")
        primaries = page.inner_text("#primary-models")
        drift_window_row = page.inner_text(f"#drift-subjects tr[data-subject='{drift_subject}']")
        drift_alert_row = page.inner_text(f"#drift-alerts tr[data-subject='{drift_subject}']")
        error = page.inner_text("#error")
        points = {chart: int(page.get_attribute(f"#{chart}", "data-points"))
                  for chart in ("throughput", "latency", "classes", "dead-letters", "drift-scores")}
        camera_row = page.inner_text(f"#cameras tr[data-camera='{stack.config.camera_id}']")
        boxes = int(page.get_attribute("#live", "data-boxes"))
        drawn = page.evaluate("document.querySelectorAll('.uplot canvas').length")
    assert error == ""
    assert all(n > 0 for n in points.values()), points
    assert drawn >= 5, "each chart is drawn by uPlot on a canvas"
    assert boxes > 0
    assert "online" in camera_row or "connecting" in camera_row
    assert "48.5 °C" in anomaly_row and "12.5 / 4.2" in anomaly_row, anomaly_row
    assert "primary" in model_row and "promote, cli/dashboard-test" in model_row, model_row
    assert f"{model} 3 (int8)" in primaries, primaries
    assert "scored" in drift_window_row and "alert" in drift_window_row, drift_window_row
    assert f"input.brightness.{reported} psi 0.400 / 0.200" in drift_alert_row, drift_alert_row
    assert requests_elsewhere == [], "the dashboard loads nothing from elsewhere"
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
