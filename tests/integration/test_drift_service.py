"""The drift service on the real stack: a camera served over RTSP turns dark and back, and a drift worker of the
test's own (short windows, its own consumer group) raises and clears a DriftAlert; the worker killed with SIGKILL
in the middle of a window resumes it from its changelog with the exact count and one alert; a malformed message
goes to vigil.dlq; SIGTERM stops the worker with exit 0.

The stack's own drift worker (60 s windows) reads the same topics and writes to the same output topics: the tests
tell their worker's events apart by camera id (unique per test) and window length."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import cv2
import pytest

from cli.stack import camera
from cli.stack.component import ComponentSpec
from cli.stack.local import REPO_ROOT, service_ready
from libs.common.kafka import DLQ_ORIGIN_TOPIC, DLQ_REASON, DLQ_SERVICE
from libs.common.settings import KafkaSettings
from libs.common.topics import DLQ, DRIFT_WINDOWS, FRAMES, INFERENCE, MONITORING
from protos import events_pb2
from services.ingest.camera_registry import CameraRegistryClient
from tests.integration.conftest import query, wait_for
from tests.integration.kafka_tools import TopicRecorder, end_offsets, produce, read_range
from tests.integration.stack_process import free_ports, running

pytestmark = pytest.mark.integration

# Windows shortened for the test. The reference must span the looped clip (79.5 s): thresholds are learnt from the
# reference windows' spread, and three 8 s windows of it left thresholds above any score (no alert at all).
WINDOW_S = 10.0
REFERENCE_WINDOWS = 8
SAMPLE_FPS = 5.0
DRIFT_POLICY = {"VIGIL_DRIFT_WINDOW_S": str(WINDOW_S), "VIGIL_DRIFT_GRACE_S": "2",
                "VIGIL_DRIFT_REFERENCE_WINDOWS": str(REFERENCE_WINDOWS), "VIGIL_DRIFT_RAISE_AFTER": "2",
                "VIGIL_DRIFT_CLEAR_AFTER": "2",
                # 50 frames a window at 5 fps; a loaded machine delivers fewer.
                "VIGIL_DRIFT_MIN_FRAMES": "25"}
DARK_BRIGHTNESS = 0.3


def seconds(ts) -> float:
    return ts.seconds + ts.nanos / 1e9


# --- the darkened camera -----------------------------------------------------------------------------------------
def darken(source: Path, target: Path, brightness: float) -> Path:
    """The clip at `brightness` of its own (dusk), same size and frame rate, as Motion-JPEG AVI."""
    reader = cv2.VideoCapture(str(source))
    fps = reader.get(cv2.CAP_PROP_FPS) or 10.0
    size = (int(reader.get(cv2.CAP_PROP_FRAME_WIDTH)), int(reader.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened(), f"cannot write {target}"
    try:
        while True:
            ok, frame = reader.read()
            if not ok:
                break
            writer.write(cv2.convertScaleAbs(frame, alpha=brightness, beta=0))
    finally:
        reader.release()
        writer.release()
    return target


@pytest.fixture(scope="module")
def dark_camera_url(stack, footage, tmp_path_factory):
    """The darkened clip served over RTSP by a GStreamer server of its own (encoded to H.264 once, up front)."""
    folder = tmp_path_factory.mktemp("dark-camera")
    clip = darken(footage, folder / "vtest-dark.avi", DARK_BRIGHTNESS)
    encoded = folder / "vtest-dark.h264.mkv"
    script = [str(camera.SYSTEM_PYTHON), str(camera.SERVER_SCRIPT), "--file", str(clip), "--encoded", str(encoded)]
    subprocess.run([*script, "--encode-only"], check=True, timeout=300)
    port = free_ports(1)[0]
    spec = ComponentSpec("camera-dark", [*script, "--host", camera.HOST, "--port", str(port), "--path", "dark",
                                         "--rtp-ports", "44000-44999"],
                         healthy=lambda: camera.rtsp_answers(camera.HOST, port), env={"PYTHONUNBUFFERED": "1"},
                         cwd=folder, start_timeout_s=60.0)
    with running(spec, folder / "logs"):
        yield camera.rtsp_url(port, "dark")


@pytest.fixture
def cameras(stack):
    """Cameras the test registers (and changes), removed at the end."""
    client = CameraRegistryClient(KafkaSettings(bootstrap_servers=stack.config.kafka_bootstrap))
    added: set[str] = set()

    class Cameras:
        def put(self, camera_id: str, url: str) -> None:
            client.put(events_pb2.CameraConfig(camera_id=camera_id, url=url, sample_fps=SAMPLE_FPS))
            added.add(camera_id)

    yield Cameras()
    for camera_id in added:
        client.remove(camera_id)


# --- a drift worker of the test's own ----------------------------------------------------------------------------
class DriftWorker:
    def __init__(self, stack, tmp_path: Path, **env: str) -> None:
        self.ops_port = free_ports(1)[0]
        self.group_id = f"drift-test-{uuid.uuid4().hex[:8]}"
        self.log_dir = tmp_path / "drift-logs"
        self.tmp_path = tmp_path
        self.env = {**stack.config.service_env(), **DRIFT_POLICY, "VIGIL_DRIFT_OPS_PORT": str(self.ops_port),
                    "VIGIL_DRIFT_GROUP_ID": self.group_id, "VIGIL_DRIFT_SHUTDOWN_TIMEOUT_S": "20", **env}
        self.starts = 0

    def run(self):
        """A context: the worker started (a fresh data directory each time: tables come from their changelog),
        yielded once ready, stopped on the way out."""
        self.starts += 1
        data_dir = self.tmp_path / f"drift-data-{self.starts}"
        spec = ComponentSpec("drift-test", [sys.executable, "-m", "services.drift"],
                             healthy=lambda: service_ready(self.ops_port),
                             env={**self.env, "VIGIL_DRIFT_DATA_DIR": str(data_dir)}, cwd=REPO_ROOT,
                             start_timeout_s=120.0)
        return running(spec, self.log_dir, grace_s=40.0)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a counter's samples whose labels include `labels` (0 when none)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ops_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            sample, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in sample for k, v in labels.items()):
                total += float(value)
        return total


def windows_of(recorder: TopicRecorder, subject: str) -> list[events_pb2.DriftWindow]:
    """The test worker's DriftWindows of a subject (the stack's worker has other window lengths)."""
    found = []
    for _t, key, value in recorder.since(0):
        if key != subject.encode():
            continue
        window = events_pb2.DriftWindow.FromString(value)
        if abs(seconds(window.window_end) - seconds(window.window_start) - WINDOW_S) < 1e-3:
            found.append(window)
    return found


def alerts_of(recorder: TopicRecorder, camera_id: str) -> list[tuple[float, str, events_pb2.DriftAlert]]:
    """(arrival, event id, alert) of the test worker's DriftAlerts on a camera's input subject."""
    found = []
    for t, _key, value in recorder.since(0):
        event = events_pb2.MonitoringEvent.FromString(value)
        if event.WhichOneof("detail") != "drift_alert":
            continue
        alert = event.drift_alert
        if alert.camera_id == camera_id and not alert.model_name \
                and abs(seconds(alert.window_end) - seconds(alert.window_start) - WINDOW_S) < 1e-3:
            found.append((t, event.envelope.event_id, alert))
    return found


def describe(windows: list[events_pb2.DriftWindow]) -> list[tuple]:
    return [(int(seconds(w.window_start)) % 1000, w.status, w.count, w.alert_state,
             [(s.feature, round(s.score, 3)) for s in sorted(w.scores, key=lambda s: -s.score)[:2]])
            for w in windows]


# --- tests -------------------------------------------------------------------------------------------------------
# What reads the source topics (VIGIL_DRIFT_SOURCE_READER): faust's agent, or the service's own aiokafka consumer.
READERS = pytest.mark.parametrize("reader", ["faust", "aiokafka"])


def test_darkened_rtsp_camera_raises_a_drift_alert_that_clears_when_the_light_returns(
        stack, dark_camera_url, cameras, tmp_path):
    camera_id = f"dusk-{uuid.uuid4().hex[:6]}"
    subject = f"camera/{camera_id}"
    worker = DriftWorker(stack, tmp_path)
    bootstrap = stack.config.kafka_bootstrap
    with worker.run() as drift, TopicRecorder(bootstrap, DRIFT_WINDOWS) as windows, \
            TopicRecorder(bootstrap, MONITORING) as monitoring:
        print(f"drift worker ready in {drift.startup_s:.1f} s")
        started = time.monotonic()
        cameras.put(camera_id, stack.config.camera_url)
        try:
            wait_for(lambda: sum(w.status == "reference" for w in windows_of(windows, subject)) >= REFERENCE_WINDOWS,
                     REFERENCE_WINDOWS * WINDOW_S + 60, what="the reference windows")
            print(f"reference after {time.monotonic() - started:.0f} s")
            wait_for(lambda: sum(w.status == "scored" for w in windows_of(windows, subject)) >= 2, 60,
                     what="two scored windows of normal footage")
            assert not alerts_of(monitoring, camera_id), "an alert on normal footage"

            cameras.put(camera_id, dark_camera_url)
            darkened_at, darkened_wall = time.monotonic(), time.time()
            raised = wait_for(lambda: [a for a in alerts_of(monitoring, camera_id) if a[2].state == "raised"], 90,
                              what="a raised DriftAlert after the darkening")
            _t, _id, alert = raised[0]
            delay_windows = (seconds(alert.window_end) - darkened_wall) / WINDOW_S
            print(f"raised {raised[0][0] - darkened_at:.0f} s after the darkening, with the window ending "
                  f"{delay_windows:.2f} windows after it: {alert.feature} {alert.metric} "
                  f"{alert.score:.3f} > {alert.threshold:.3f}")
            assert alert.feature.startswith("input."), alert
            assert alert.top_features[0].feature == alert.feature and alert.score > alert.threshold
            # Which input features lead depends on the reference's spread: with 10 s windows of the looped clip,
            # mean luma's learnt threshold can sit at KS 1.0, and contrast or sharpness name the dusk.
            assert all(f.feature.startswith("input.") for f in alert.top_features), alert.top_features
            assert delay_windows <= 3, "alerted within 3 windows of the drift's start"

            cameras.put(camera_id, stack.config.camera_url)
            restored_at = time.monotonic()
            cleared = wait_for(lambda: [a for a in alerts_of(monitoring, camera_id) if a[2].state == "cleared"], 90,
                               what="the alert cleared after the light returned")
            print(f"cleared {cleared[0][0] - restored_at:.0f} s after the light returned")
        finally:
            print(describe(windows_of(windows, subject)))
        # One raise and one clear (a repeated event keeps its id), in that order.
        alerts = alerts_of(monitoring, camera_id)
        ids = {state: {i for _t, i, a in alerts if a.state == state} for state in ("raised", "cleared")}
        assert len(ids["raised"]) == 1 and len(ids["cleared"]) == 1, [(a.state, seconds(a.window_end))
                                                                        for _t, _i, a in alerts]
        assert seconds(raised[0][2].window_end) < seconds(cleared[0][2].window_end)
        assert drift.process.poll() is None, drift.log_tail()
    # The metrics sink stores every window's scores (one row per feature) in drift_scores.
    scored = wait_for(lambda: int(query(stack, f"SELECT count() AS n FROM drift_scores WHERE subject = '{subject}' "
                                               "AND window_status = 'scored'")[0]["n"]), 60, what="drift_scores rows")
    print(f"drift_scores rows for {subject}: {scored}")


@READERS
def test_a_worker_killed_mid_window_resumes_it_with_an_exact_count_and_one_alert(
        stack, dark_camera_url, cameras, tmp_path, reader):
    camera_id = f"killed-{uuid.uuid4().hex[:6]}"
    subject = f"camera/{camera_id}"
    worker = DriftWorker(stack, tmp_path, VIGIL_DRIFT_SOURCE_READER=reader)
    bootstrap = stack.config.kafka_bootstrap
    with TopicRecorder(bootstrap, FRAMES) as frames, TopicRecorder(bootstrap, DRIFT_WINDOWS) as windows, \
            TopicRecorder(bootstrap, MONITORING) as monitoring:
        try:
            with worker.run() as first:
                cameras.put(camera_id, stack.config.camera_url)
                wait_for(lambda: sum(w.status == "reference" for w in windows_of(windows, subject))
                         >= REFERENCE_WINDOWS, REFERENCE_WINDOWS * WINDOW_S + 60, what="the reference windows")
                cameras.put(camera_id, dark_camera_url)
                # The first drifting window; with RAISE_AFTER=2 the next one raises: kill the worker in its middle.
                drifting = wait_for(lambda: [w for w in windows_of(windows, subject) if w.alert_state == "drifting"],
                                    90, what="a drifting window")
                target_start = seconds(drifting[0].window_end)
                while time.time() < target_start + WINDOW_S / 2:
                    time.sleep(0.1)
                recorded = worker.metric("vigil_drift_events_total", topic=FRAMES, outcome="recorded")
                assert not [w for w in windows_of(windows, subject) if seconds(w.window_start) >= target_start]
                os.killpg(first.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                print(f"killed at {time.time() - target_start:.1f} s into the window, {recorded:.0f} frames "
                      "recorded so far")
            with worker.run() as second:
                ready_at = time.monotonic()
                # Ready means its state is back from the changelog (the log is shared by both runs).
                assert second.log_path.read_text().count('"drift state restored"') == 2, "ready before restored"
                print(f"restarted: ready {ready_at - killed_at:.1f} s after the kill ({second.startup_s:.1f} s "
                      "from its start)")
                resumed = wait_for(lambda: [w for w in windows_of(windows, subject)
                                            if abs(seconds(w.window_start) - target_start) < 1e-3], 120,
                                   what="the killed window, closed after the restart")
                print(f"the killed window closed {time.monotonic() - killed_at:.1f} s after the kill")
                wait_for(lambda: [a for a in alerts_of(monitoring, camera_id) if a[2].state == "raised"], 60,
                         what="a raised alert")
                # Any duplicate window or raise would be out by now: wait for two later windows.
                wait_for(lambda: sum(seconds(w.window_start) > target_start
                                     for w in windows_of(windows, subject)) >= 2, 60, what="two later windows")
                assert second.process.poll() is None, second.log_tail()
        finally:
            print(describe(windows_of(windows, subject)))
        frame_times = []
        for _t, key, value in frames.since(0):
            if key == camera_id.encode():
                frame = events_pb2.Frame.FromString(value)
                if frame.HasField("image_stats"):
                    frame_times.append(seconds(frame.envelope.event_time))
        expected = sum(target_start <= t < target_start + WINDOW_S for t in frame_times)
        counts = {w.count for w in resumed}
        print(f"killed window: {counts} counted, {expected} frames on {FRAMES}")
        assert counts == {expected}, "the killed window holds every frame once"
        raises = {event_id for _t, event_id, a in alerts_of(monitoring, camera_id) if a.state == "raised"}
        assert len(raises) == 1, [(a.state, seconds(a.window_end)) for _t, _i, a in alerts_of(monitoring, camera_id)]


@READERS
def test_a_malformed_inference_message_is_dead_lettered_and_the_worker_keeps_running(stack, tmp_path, reader):
    worker = DriftWorker(stack, tmp_path, VIGIL_DRIFT_SOURCE_READER=reader)
    bootstrap = stack.config.kafka_bootstrap
    with worker.run() as drift:
        # Consuming from every partition's current end: the demo camera's results are being read.
        wait_for(lambda: worker.metric("vigil_drift_events_total", topic=INFERENCE) > 0, 60,
                 what="the worker reading vigil.inference")
        garbage = b"\xff\x00not a protobuf " + uuid.uuid4().bytes
        dlq_start = end_offsets(bootstrap, DLQ)
        produce(bootstrap, INFERENCE, [(stack.config.camera_id.encode(), garbage)])
        wait_for(lambda: worker.metric("vigil_drift_events_total", topic=INFERENCE, outcome="malformed_event") >= 1,
                 30, what="the worker refusing the message")

        def dead_letter():
            messages = read_range(bootstrap, DLQ, dlq_start, end_offsets(bootstrap, DLQ))
            return [m for m in messages if m.value() == garbage
                    and dict(m.headers() or []).get(DLQ_SERVICE) == b"drift"]
        letters = wait_for(dead_letter, 30, what="the message on vigil.dlq from drift")
        headers = dict(letters[0].headers())
        assert headers[DLQ_REASON] == b"malformed_event" and headers[DLQ_ORIGIN_TOPIC] == INFERENCE.encode()
        recorded = worker.metric("vigil_drift_events_total", topic=FRAMES, outcome="recorded")
        wait_for(lambda: worker.metric("vigil_drift_events_total", topic=FRAMES, outcome="recorded") > recorded, 30,
                 what="frames recorded after the bad message")
        assert drift.process.poll() is None, drift.log_tail()
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.ops_port}/livez", timeout=5) as response:
            assert response.status == 200


@READERS
def test_sigterm_stops_the_drift_worker_with_exit_zero_within_its_grace_period(stack, tmp_path, reader):
    worker = DriftWorker(stack, tmp_path, VIGIL_DRIFT_SHUTDOWN_TIMEOUT_S="20", VIGIL_DRIFT_SOURCE_READER=reader)
    with worker.run() as drift:
        wait_for(lambda: worker.metric("vigil_drift_events_total", topic=FRAMES) > 0, 60,
                 what="the worker consuming frames")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(drift.pid, signal.SIGTERM)
        stopping = time.monotonic()
        code = drift.process.wait(timeout=40)
        stopped_in = time.monotonic() - stopping
    print(f"stopped in {stopped_in:.1f} s with exit {code}")
    assert code == 0, drift.log_tail()
    assert stopped_in < 20, "within the grace period"
    assert '"stopped"' in drift.log_tail()
