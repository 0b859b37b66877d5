"""Named queries, rollups and the ad-hoc guard, on a small known dataset in the real engine (chdb)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from libs.common.envelope import timestamp_from_ns
from protos import events_pb2
from services.metrics.api import QueryApi
from services.metrics.rows import dead_letter_row, inference_row, model_version_row, monitoring_rows, \
    sensor_anomaly_row
from services.metrics.sink import EventSink
from services.metrics.store import MetricsStore

# Recent enough to be inside every table's TTL (expired rows are dropped as they are inserted).
T0 = (datetime.now(timezone.utc) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
WINDOW = {"since": T0.isoformat(), "until": (T0 + timedelta(minutes=2)).isoformat()}
M0, M1 = T0.strftime("%H:%M"), (T0 + timedelta(minutes=1)).strftime("%H:%M")


def ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1e9)


def result(camera: str, at: datetime, labels: list[str], infer_ms: float, model: str = "yolov3-tiny",
           shadow: bool = False) -> events_pb2.InferenceResult:
    env = events_pb2.Envelope(event_id=str(uuid.uuid4()), event_time=timestamp_from_ns(ns(at)),
                              ingest_time=timestamp_from_ns(ns(at)), trace_id="t")
    return events_pb2.InferenceResult(
        envelope=env, camera_id=camera, frame_event_id=str(uuid.uuid4()), model=events_pb2.ModelRef(name=model),
        detections=[events_pb2.Detection(label=label, score=0.5, box=events_pb2.Box(x1=1, y1=2, x2=3, y2=4))
                    for label in labels],
        stage_latency_ms={"infer": infer_ms, "decode": 2.0}, width=768, height=576, shadow=shadow)


def monitoring(at: datetime, **detail) -> events_pb2.MonitoringEvent:
    env = events_pb2.Envelope(event_id=str(uuid.uuid4()), event_time=timestamp_from_ns(ns(at)),
                              ingest_time=timestamp_from_ns(ns(at)), source="test", producer="test")
    return events_pb2.MonitoringEvent(envelope=env, **detail)


def camera_status(at: datetime, state: int, fps: float, dropped: int) -> events_pb2.MonitoringEvent:
    return monitoring(at, camera_status=events_pb2.CameraStatus(
        camera_id="cam-a", state=state, fps_produced=fps, frames_dropped=dropped, reason="r"))


def sensor_result(at: datetime, value: float, score: float) -> events_pb2.SensorAnomalyResult:
    env = events_pb2.Envelope(event_id=str(uuid.uuid4()), event_time=timestamp_from_ns(ns(at)), trace_id="t")
    return events_pb2.SensorAnomalyResult(
        envelope=env, sensor_id="temp-1", quantity="temperature", unit="Cel", value=value,
        model=events_pb2.ModelRef(name="sensor-anomaly", version="1"), score=score, anomaly=score > 5.0,
        threshold=5.0, reading_event_id=str(uuid.uuid4()), features={"level": 0.1, "deviation": score})


def model_version(at: datetime, version: str, stage: str) -> events_pb2.ModelVersion:
    env = events_pb2.Envelope(event_id=str(uuid.uuid4()), event_time=timestamp_from_ns(ns(at)))
    return events_pb2.ModelVersion(
        envelope=env, model=events_pb2.ModelRef(name="yolov3-tiny", version=version, precision="bf16"), stage=stage,
        artifact=events_pb2.ObjectRef(bucket="vigil-models", key=f"yolov3-tiny/{version}/"),
        metadata={"action": "promote", "by": "cli/ops"})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = MetricsStore.open(tmp_path_factory.mktemp("chdb"), query_max_rows=1000, query_max_seconds=5)
    store.migrate()
    sink = EventSink(store)
    inference = []
    # cam-a: minute 10:00, 60 results of 2 persons and a car, infer 1..60 ms; minute 10:01, 60 results of one
    # person, infer 61..120 ms. cam-b: 30 results of a dog at 10:00 by another model, infer 10 ms.
    # Shadow results on cam-a count for nothing but their own model's latency.
    for i in range(60):
        inference.append(result("cam-a", T0 + timedelta(seconds=i), ["person", "person", "car"], i + 1))
        inference.append(result("cam-a", T0 + timedelta(seconds=60 + i), ["person"], 61 + i))
    for i in range(30):
        inference.append(result("cam-b", T0 + timedelta(seconds=2 * i), ["dog"], 10, model="other"))
    for i in range(10):
        inference.append(result("cam-a", T0 + timedelta(seconds=i), ["cat"], 500, model="shadow-m", shadow=True))
    rows = {"inference_events": [inference_row(r, 0) for r in inference]}
    events = [
        camera_status(T0 + timedelta(seconds=5), events_pb2.CAMERA_STATE_ONLINE, 5.0, 0),
        camera_status(T0 + timedelta(seconds=30), events_pb2.CAMERA_STATE_STALLED, 0.0, 3),
        camera_status(T0 + timedelta(seconds=70), events_pb2.CAMERA_STATE_ONLINE, 4.5, 7),
        monitoring(T0 + timedelta(seconds=40), drift_alert=events_pb2.DriftAlert(
            model_name="yolov3-tiny", feature="input.brightness", metric="psi", score=0.31, threshold=0.2)),
        monitoring(T0 + timedelta(seconds=50), model_status=events_pb2.ModelStatus(
            model=events_pb2.ModelRef(name="yolov3-tiny"), state="ready")),
    ]
    for event in events:
        for table, table_rows in monitoring_rows(event).items():
            rows.setdefault(table, []).extend(table_rows)
    t0_ms = int(T0.timestamp() * 1000)
    rows["dead_letters"] = [
        dead_letter_row("vigil.dlq", 0, offset, t0_ms + offset * 1000,
                        {"vigil.dlq.reason": b"undecodable_image", "vigil.dlq.origin.topic": b"vigil.frames"}, b"k", 10)
        for offset in range(3)
    ] + [dead_letter_row("vigil.dlq", 1, 0, t0_ms + 65_000, {"vigil.dlq.reason": b"malformed_event",
                                                               "vigil.dlq.origin.topic": b"vigil.inference"}, None, 3)]
    # A sensor scored once a minute: normal, flagged (a spike), normal.
    rows["sensor_anomalies"] = [sensor_anomaly_row(sensor_result(T0 + timedelta(seconds=20 * i), value, score), 0)
                                for i, (value, score) in enumerate([(21.0, 1.2), (35.5, 9.7), (21.2, 1.4)])]
    # yolov3-tiny 1 promoted; 80 s later 2 promoted, which retires 1 (announced at once).
    rows["model_versions"] = [model_version_row(model_version(T0 + timedelta(seconds=s), v, stage))
                              for s, v, stage in ((10, "1", "primary"), (90, "1", "retired"), (90, "2", "primary"))]
    report = sink.write(rows)
    assert report.stored == 160 + 5 + 3 + 1 + 4 + 3 + 3
    # The same batch again (a replay after a crash) changes nothing.
    assert sink.write(rows).stored == 0
    yield store
    store.close()


@pytest.fixture(scope="module")
def api(store):
    api = QueryApi(store, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{api.port}"
    api.stop()


def named(api: str, name: str, **parameters) -> list[dict]:
    body = json.dumps({"named": name, "parameters": {**WINDOW, **parameters}}).encode()
    request = urllib.request.Request(f"{api}/api/query", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        payload = json.loads(response.read())
    return [dict(zip(payload["columns"], row)) for row in payload["rows"]]


def refusal(api: str, sql: str) -> tuple[int, str]:
    request = urllib.request.Request(f"{api}/api/query", data=json.dumps({"sql": sql}).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]


def test_fps_per_camera_counts_primary_results_over_the_window(api):
    rows = named(api, "fps_per_camera")
    assert rows == [{"camera_id": "cam-a", "frames": 120, "fps": 1.0},
                    {"camera_id": "cam-b", "frames": 30, "fps": 0.25}]
    assert named(api, "fps_per_camera", camera_id="cam-b") == [{"camera_id": "cam-b", "frames": 30, "fps": 0.25}]


def test_throughput_is_per_minute_and_camera(api):
    rows = {(r["minute"][11:16], r["camera_id"]): (r["frames"], r["detections"]) for r in named(api, "throughput")}
    assert rows == {(M0, "cam-a"): (60, 180), (M1, "cam-a"): (60, 60), (M0, "cam-b"): (30, 30)}


def test_latency_quantiles_per_model_and_stage(api):
    rows = {(r["model_name"], r["stage"]): r for r in named(api, "latency_quantiles")}
    infer = rows[("yolov3-tiny", "infer")]
    # infer is 1..120 ms: quantiles interpolate between neighbours.
    assert infer["samples"] == 120
    assert infer["p50_ms"] == pytest.approx(60.5, abs=0.6)
    assert infer["p95_ms"] == pytest.approx(114.05, abs=1.2)
    assert infer["p99_ms"] == pytest.approx(118.81, abs=1.2)
    assert rows[("yolov3-tiny", "total")]["p50_ms"] == pytest.approx(62.5, abs=0.6)  # infer + decode (2 ms)
    assert rows[("yolov3-tiny", "decode")]["p99_ms"] == 2.0
    assert rows[("other", "infer")]["p95_ms"] == 10.0 and rows[("shadow-m", "infer")]["p50_ms"] == 500.0
    by_minute = named(api, "latency_over_time", stage="infer", model_name="yolov3-tiny")
    assert [r["p50_ms"] for r in by_minute] == [pytest.approx(30.5, abs=0.6), pytest.approx(90.5, abs=0.6)]


def test_detections_per_class_over_time_leave_out_shadow_models(api):
    rows = {(r["minute"][11:16], r["label"]): r["detections"] for r in named(api, "detections_per_class")}
    assert rows == {(M0, "person"): 120, (M0, "car"): 60, (M0, "dog"): 30, (M1, "person"): 60}


def test_camera_health_timeline_and_cameras_overview(api):
    timeline = named(api, "camera_health_timeline")
    assert [(r["state"], r["fps_produced"], r["frames_dropped"]) for r in timeline] == [
        ("online", 5.0, 0), ("stalled", 0.0, 3), ("online", 4.5, 7)]
    cameras = {r["camera_id"]: r for r in named(api, "cameras")}
    # fps is over the window's last minute: cam-a's 60 results of 10:01, none of cam-b's (all at 10:00).
    assert cameras["cam-a"]["state"] == "online" and cameras["cam-a"]["fps"] == 1.0
    assert cameras["cam-b"]["state"] == "unknown" and cameras["cam-b"]["fps"] == 0.0


def test_drift_alerts_and_monitoring_events(api, store):
    # A drift alert is a monitoring event and an open alert; its score is no drift_scores row (the windows' are).
    assert named(api, "drift_scores") == []
    [open_alert] = named(api, "drift_alerts_open")
    assert (open_alert["subject"], open_alert["top_features"], open_alert["top_scores"]) == (
        "yolov3-tiny", ["input.brightness"], [0.31])
    kinds = store.query_readonly("SELECT kind, subject FROM monitoring_events ORDER BY event_time")["rows"]
    assert kinds == [["camera_status", "cam-a"], ["camera_status", "cam-a"], ["drift_alert", "yolov3-tiny"],
                     ["model_status", "yolov3-tiny"], ["camera_status", "cam-a"]]


def test_dead_letter_rate_per_minute_origin_and_reason(api):
    rows = [(r["minute"][11:16], r["origin_topic"], r["reason"], r["letters"]) for r in named(api, "dead_letter_rate")]
    assert rows == [(M0, "vigil.frames", "undecodable_image", 3), (M1, "vigil.inference", "malformed_event", 1)]


def test_sensor_anomalies_lists_the_flagged_readings_or_every_scored_one(api):
    flagged = named(api, "sensor_anomalies")
    assert [(r["sensor_id"], r["value"], r["score"], r["anomaly"]) for r in flagged] == [
        ("temp-1", 35.5, pytest.approx(9.7), True)]
    every = named(api, "sensor_anomalies", sensor_id="temp-1", anomalies_only=0)
    assert [r["value"] for r in every] == [21.2, 35.5, 21.0], "newest first"
    assert [r["value"] for r in named(api, "sensor_anomalies", anomalies_only=0, limit=1)] == [21.2]
    assert named(api, "sensor_anomalies", sensor_id="other-sensor", anomalies_only=0) == []


def test_model_versions_lists_stage_changes_newest_first_over_ten_years_by_default(api):
    history = named(api, "model_versions", since="", until="")
    assert [(r["model_version"], r["stage"]) for r in history] == [("2", "primary"), ("1", "retired"),
                                                                   ("1", "primary")]
    assert {(r["action"], r["announced_by"]) for r in history} == {("promote", "cli/ops")}
    assert history[0]["artifact"] == "s3://vigil-models/yolov3-tiny/2/"
    assert named(api, "model_versions", model_name="other") == []
    newest = named(api, "model_versions", since=(T0 + timedelta(seconds=60)).isoformat(), limit=1)
    assert [r["model_version"] for r in newest] == ["2"]


def test_recent_detections_are_the_latest_results_of_a_camera(api):
    rows = named(api, "recent_detections", camera_id="cam-a", limit=2)
    assert [r["labels"] for r in rows] == [["person"], ["person"]]
    assert rows[0]["boxes"] == [[1.0, 2.0, 3.0, 4.0]] and rows[0]["width"] == 768


def test_detections_table_has_one_row_per_detection(store):
    count, events = store.query_readonly(
        "SELECT count(), uniqExact(event_id) FROM detections WHERE NOT shadow")["rows"][0]
    assert (count, events) == (60 * 3 + 60 + 30, 150)


def test_unknown_named_query_or_parameter_is_a_clear_error(api):
    with pytest.raises(urllib.error.HTTPError) as unknown:
        named(api, "no_such_query")
    assert unknown.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as bad:
        named(api, "fps_per_camera", colour="red")
    assert bad.value.code == 400 and "no parameter colour" in json.loads(bad.value.read())["error"]


@pytest.mark.parametrize("sql, says", [
    ("DROP TABLE inference_events", "read-only"),
    ("INSERT INTO inference_events (event_id) VALUES (generateUUIDv4())", "read-only"),
    ("ALTER TABLE inference_events DELETE WHERE 1", "read-only"),
    ("SELECT name FROM system.tables", "system.tables is not a table of the metrics store"),
    ("WITH t AS (SELECT * FROM system.settings) SELECT count() FROM t", "system.settings"),
    ("SELECT count() FROM inference_events WHERE camera_id IN (SELECT name FROM system.users)", "system.users"),
    ("SELECT * FROM INFORMATION_SCHEMA.TABLES", "INFORMATION_SCHEMA.TABLES"),
    ("SELECT * FROM merge('system', '.*')", "table function merge"),
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "read-only"),
    ("SELECT 1 SETTINGS readonly = 0", "read-only"),
])
def test_adhoc_sql_that_writes_or_reads_system_tables_is_refused(api, sql, says):
    status, error = refusal(api, sql)
    assert status == 403 and says in error


def test_a_query_that_matches_nothing_still_names_its_columns(api, store):
    body = json.dumps({"named": "fps_per_camera", "parameters": {**WINDOW, "camera_id": "no-such-camera"}}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{api}/api/query", data=body, method="POST"),
                                timeout=10) as response:
        assert json.loads(response.read()) == {"columns": ["camera_id", "frames", "fps"], "rows": []}
    assert store.query_readonly("SELECT label FROM detections WHERE label = 'unicorn';") == {
        "columns": ["label"], "rows": []}


def test_adhoc_sql_reads_the_stores_own_tables(api):
    request = urllib.request.Request(f"{api}/api/query?sql=SELECT%20count()%20AS%20n%20FROM%20detections")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["rows"] == [[60 * 3 + 60 + 30 + 10]]
