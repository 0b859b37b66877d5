"""Camera ingest on real infrastructure: a GStreamer RTSP server with eight mounts that the tests kill,
freeze and restart, the camera registry in Kafka, and ingest replicas as processes."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from cli.stack import camera
from cli.stack.component import ComponentSpec
from cli.stack.local import REPO_ROOT, service_ready
from libs.common.settings import KafkaSettings
from libs.common.topics import FRAMES, MONITORING
from protos import events_pb2
from services.ingest.camera_registry import CameraRegistryClient
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import TopicRecorder
from tests.integration.stack_process import free_ports, running

pytestmark = pytest.mark.integration

STATE_NAMES = {v: k.removeprefix("CAMERA_STATE_").lower() for k, v in events_pb2.CameraState.items()}


class CameraServer:
    """The demo footage on /cam0 .. /cam7 of a port of its own, which a test may kill, restart or freeze."""

    def __init__(self, stack, log_dir) -> None:
        self.port = free_ports(1)[0]
        self.spec = camera.spec(stack.paths, port=self.port, path="cam0", mounts=8,
                                rtp_port_min=43000, rtp_port_max=43999)
        self.log_dir = log_dir
        self._running: contextlib.ExitStack | None = None
        self.component = None

    def url(self, index: int) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam{index}"

    def start(self) -> None:
        self._running = contextlib.ExitStack()
        self.component = self._running.enter_context(running(self.spec, self.log_dir))

    def stop(self) -> None:
        if self._running is not None:
            self._running.close()
            self._running = None


@pytest.fixture
def camera_server(stack, tmp_path):
    server = CameraServer(stack, tmp_path / "camera-logs")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def registry(stack):
    client = CameraRegistryClient(KafkaSettings(bootstrap_servers=stack.config.kafka_bootstrap))
    added: list[str] = []

    class Registry:
        def add(self, camera_id: str, url: str, **fields) -> None:
            client.put(events_pb2.CameraConfig(camera_id=camera_id, url=url, **fields))
            added.append(camera_id)

        def remove(self, camera_id: str) -> None:
            client.remove(camera_id)

    yield Registry()
    for camera_id in added:
        client.remove(camera_id)


def statuses(recorder: TopicRecorder, since: float = 0.0) -> list[tuple[float, events_pb2.CameraStatus]]:
    found = []
    for t, _key, value in recorder.since(since):
        event = events_pb2.MonitoringEvent.FromString(value)
        if event.WhichOneof("detail") == "camera_status":
            found.append((t, event.camera_status))
    return found


def first_state_after(recorder, camera_id: str, state: str, since: float) -> float | None:
    return next((t for t, s in statuses(recorder, since) if s.camera_id == camera_id
                 and STATE_NAMES[s.state] == state), None)


def frames_per_camera(recorder: TopicRecorder, since: float, until: float) -> Counter:
    return Counter(key.decode() for t, key, _ in recorder.records if since <= t < until)


def test_eight_rtsp_cameras_produce_frames_at_their_configured_rate(stack, camera_server, registry):
    ids = [f"rate-{i}" for i in range(8)]
    with TopicRecorder(stack.config.kafka_bootstrap, FRAMES) as frames, \
            TopicRecorder(stack.config.kafka_bootstrap, MONITORING) as monitoring:
        for i, camera_id in enumerate(ids):
            registry.add(camera_id, camera_server.url(i), sample_fps=2.0)
        try:
            wait_for(lambda: set(ids) <= set(frames_per_camera(frames, 0, time.monotonic())), 60,
                     what="frames from all eight cameras")
        except AssertionError:
            print({s.camera_id: (STATE_NAMES[s.state], s.reason) for _, s in statuses(monitoring)})
            print(frames_per_camera(frames, 0, time.monotonic()))
            print(stack.supervisor.log_tail("ingest", 30))
            raise
        start = time.monotonic() + 2
        time.sleep(12)
        counts = frames_per_camera(frames, start, start + 10)
    rates = {camera_id: counts[camera_id] / 10 for camera_id in ids}
    assert all(1.6 <= rate <= 2.4 for rate in rates.values()), rates


def test_cameras_are_back_online_within_10s_of_the_server_returning(stack, camera_server, registry):
    ids = [f"outage-{i}" for i in range(3)]
    with TopicRecorder(stack.config.kafka_bootstrap, MONITORING) as monitoring:
        for i, camera_id in enumerate(ids):
            registry.add(camera_id, camera_server.url(i), sample_fps=2.0)
        for camera_id in ids:
            wait_for(lambda: first_state_after(monitoring, camera_id, "online", 0), 30, what=f"{camera_id} online")
        killed_at = time.monotonic()
        camera_server.stop()
        time.sleep(10)
        camera_server.start()
        returned_at = time.monotonic()
        for camera_id in ids:
            back = wait_for(lambda: first_state_after(monitoring, camera_id, "online", returned_at), 30,
                            what=f"{camera_id} back online")
            assert back - returned_at <= 10, f"{camera_id} online {back - returned_at:.1f}s after the server returned"
            lost = [STATE_NAMES[s.state] for t, s in statuses(monitoring, killed_at)
                    if s.camera_id == camera_id and t < returned_at]
            assert {"offline", "stalled"} & set(lost), f"{camera_id}: the outage was not reported: {lost}"
            reasons = [s.reason for t, s in statuses(monitoring, killed_at) if s.camera_id == camera_id and s.reason]
            assert reasons, "a lost stream says why"


def test_a_frozen_server_is_reported_stalled_by_the_watchdog_and_recovers(stack, camera_server, registry):
    with TopicRecorder(stack.config.kafka_bootstrap, MONITORING) as monitoring, \
            TopicRecorder(stack.config.kafka_bootstrap, FRAMES) as frames:
        registry.add("frozen", camera_server.url(0), sample_fps=2.0, stall_timeout_s=3.0)
        wait_for(lambda: first_state_after(monitoring, "frozen", "online", 0), 30, what="online")
        pid = camera_server.component.pid
        os.kill(pid, signal.SIGSTOP)  # accepts connections, sends nothing: a hung server
        frozen_at = time.monotonic()
        try:
            # Waited for generously: how long FFmpeg's buffers keep delivering after the freeze varies with the
            # box's load; the watchdog's promptness is checked against the last frame just below.
            stalled = wait_for(lambda: first_state_after(monitoring, "frozen", "stalled", frozen_at), 30, what="stalled")
            # From the last frame that got through (FFmpeg's buffers still deliver a little after the freeze):
            # the timeout, plus one sampling interval (0.5 s) and a second for the status to travel.
            last_frame = max(t for t, k, _ in frames.since(0) if k == b"frozen" and t < stalled)
            assert stalled - last_frame <= 3.0 + 1.5, f"stalled reported {stalled - last_frame:.1f}s after the last frame"
            time.sleep(3)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        wait_for(lambda: first_state_after(monitoring, "frozen", "online", resumed_at), 30, what="online again")


def vigil_cameras(stack, *args: str) -> subprocess.CompletedProcess:
    command = Path(sys.executable).parent / "vigil"
    return subprocess.run([str(command), "--state-dir", str(stack.paths.state), "cameras", *args],
                          capture_output=True, text=True, timeout=60)


def test_vigil_cameras_remove_stops_frames_and_add_starts_them_within_5s(stack, camera_server):
    with TopicRecorder(stack.config.kafka_bootstrap, FRAMES) as frames:
        added_at = time.monotonic()
        added = vigil_cameras(stack, "add", "coming-and-going", camera_server.url(1), "--fps", "5")
        assert added.returncode == 0, added.stderr
        try:
            first = wait_for(lambda: next((t for t, k, _ in frames.since(added_at) if k == b"coming-and-going"), None),
                             15, what="a first frame")
            assert first - added_at <= 5.0, f"first frame {first - added_at:.1f}s after the add"
            listed = vigil_cameras(stack, "list")
            assert '"camera_id": "coming-and-going"' in listed.stdout
            assert vigil_cameras(stack, "add", "coming-and-going", camera_server.url(1)).returncode == 2, \
                "adding an existing camera is refused (update changes it)"
            time.sleep(2)
        finally:
            removed = vigil_cameras(stack, "remove", "coming-and-going")
        assert removed.returncode == 0, removed.stderr
        removed_at = time.monotonic()
        time.sleep(8)
        late = [t - removed_at for t, k, _ in frames.since(removed_at + 5) if k == b"coming-and-going"]
        assert not late, f"frames {late} s after the remove"
    assert "coming-and-going" not in vigil_cameras(stack, "list").stdout


def test_two_replicas_split_the_cameras_and_a_survivor_takes_over_after_sigkill(stack, camera_server, registry, tmp_path):
    ops_port = free_ports(1)[0]
    second = ComponentSpec(
        "ingest-2", [sys.executable, "-m", "services.ingest"],
        healthy=lambda: service_ready(ops_port),
        env={**stack.config.service_env(), "VIGIL_INGEST_OPS_PORT": str(ops_port), "VIGIL_INGEST_REPLICA_ID": "local-2"},
        cwd=REPO_ROOT,
    )
    ids = [f"split-{i}" for i in range(8)]
    with TopicRecorder(stack.config.kafka_bootstrap, MONITORING) as monitoring, \
            TopicRecorder(stack.config.kafka_bootstrap, FRAMES) as frames:
        with running(second, tmp_path / "ingest-2") as replica:
            for i, camera_id in enumerate(ids):
                registry.add(camera_id, camera_server.url(i), sample_fps=1.0)

            def running_on() -> dict[str, str]:
                latest = {s.camera_id: s.replica for _, s in statuses(monitoring)
                          if s.camera_id in ids and STATE_NAMES[s.state] == "online"}
                return latest if set(latest) == set(ids) and set(latest.values()) == {"local-1", "local-2"} else {}

            split = wait_for(running_on, 60, what="the cameras online, spread over both replicas")
            moved = sorted(c for c, r in split.items() if r == "local-2")
            os.killpg(replica.pid, signal.SIGKILL)
            killed_at = time.monotonic()
        for camera_id in moved:
            back = wait_for(lambda: next((t for t, s in statuses(monitoring, killed_at) if s.camera_id == camera_id
                                          and s.replica == "local-1" and STATE_NAMES[s.state] == "online"), None),
                            45, what=f"{camera_id} on the survivor")
            assert back - killed_at <= 30, f"{camera_id} moved after {back - killed_at:.1f}s"
        wait_for(lambda: set(moved) <= set(frames_per_camera(frames, killed_at, time.monotonic())), 20,
                 what="frames of the moved cameras")


def test_bad_sources_get_a_clear_state_and_reason_and_nothing_crashes(stack, camera_server, registry, tmp_path):
    not_video = tmp_path / "notes.avi"
    not_video.write_text("this is not a video\n" * 100)
    closed_port = free_ports(1)[0]
    bad = {
        "unreachable": f"rtsp://127.0.0.1:{closed_port}/nothing",
        "not-a-stream": f"http://127.0.0.1:{stack.config.ports.ingest_ops}/metrics",
        "not-a-video": str(not_video),
    }
    with TopicRecorder(stack.config.kafka_bootstrap, MONITORING) as monitoring, \
            TopicRecorder(stack.config.kafka_bootstrap, FRAMES) as frames:
        for camera_id, url in bad.items():
            registry.add(camera_id, url, sample_fps=2.0)
        registry.add("dies-mid-stream", camera_server.url(3), sample_fps=2.0)
        wait_for(lambda: first_state_after(monitoring, "dies-mid-stream", "online", 0), 30, what="online")
        died_at = time.monotonic()
        camera_server.stop()

        def reasons() -> dict[str, str]:
            # Each camera's first reason: the one that camera went down with (a dead server's camera then retries,
            # and its later reasons say it cannot connect).
            found: dict[str, str] = {}
            for _, s in statuses(monitoring):
                if STATE_NAMES[s.state] in ("offline", "stalled") and s.reason:
                    found.setdefault(s.camera_id, s.reason)
            return found if set(bad) | {"dies-mid-stream"} <= set(found) else {}

        found = wait_for(reasons, 40, what="a state and reason for every bad source")
        assert found["unreachable"] == f"cannot connect to 127.0.0.1:{closed_port}: Connection refused"
        assert found["not-a-stream"] == "could not open stream"
        assert found["not-a-video"] == "could not open stream"
        assert found["dies-mid-stream"] in ("stream ended or read failed", "no frame for 5s")
        # The rest of the service is unharmed: the stack's own camera still streams, ingest is live.
        wait_for(lambda: stack.config.camera_id.encode() in {k for _, k, _ in frames.since(died_at)}, 20,
                 what="the demo camera's frames")
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.config.ports.ingest_ops}/livez", timeout=5) as response:
        assert response.status == 200


def test_a_camera_that_never_answers_does_not_hold_back_another_cameras_first_frame(stack, camera_server, registry):
    """OpenCV opens one capture at a time per process: a silent camera must not be waited for inside it."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the kernel; nobody ever answers
    port = silent.getsockname()[1]
    try:
        with TopicRecorder(stack.config.kafka_bootstrap, MONITORING) as monitoring, \
                TopicRecorder(stack.config.kafka_bootstrap, FRAMES) as frames:
            registry.add("silent", f"rtsp://127.0.0.1:{port}/cam", sample_fps=2.0)
            wait_for(lambda: first_state_after(monitoring, "silent", "connecting", 0), 15, what="silent connecting")
            time.sleep(1)  # its open is under way (the ingest's open timeout: 10 s)
            added_at = time.monotonic()
            registry.add("prompt", camera_server.url(2), sample_fps=5.0)
            first = wait_for(lambda: next((t for t, k, _ in frames.since(added_at) if k == b"prompt"), None), 20,
                             what="a first frame of the prompt camera")
            print(f"first frame {first - added_at:.1f}s after the add, beside a silent camera")
            assert first - added_at <= 5.0, f"first frame {first - added_at:.1f}s after the add"
            reason = wait_for(lambda: next((s.reason for _, s in statuses(monitoring) if s.camera_id == "silent"
                                            and STATE_NAMES[s.state] == "offline"), None), 30, what="silent offline")
            assert reason == f"no answer from 127.0.0.1:{port} within 10s"
    finally:
        silent.close()


def test_an_http_mjpeg_camera_streams_downscaled_frames(stack, registry, footage):
    from tests.integration.mjpeg_server import MjpegCamera

    with MjpegCamera(footage, fps=10) as mjpeg, TopicRecorder(stack.config.kafka_bootstrap, FRAMES) as frames:
        registry.add("mjpeg", mjpeg.url, sample_fps=5.0, max_width=384)
        received = wait_for(lambda: [events_pb2.Frame.FromString(v) for _, k, v in frames.since(0) if k == b"mjpeg"][:3]
                            or None, 30, what="frames from the MJPEG camera")
        assert all((f.width, f.height) == (384, 288) for f in received)


def test_the_motion_gate_skips_a_static_scene_and_reports_the_count(stack, registry, footage):
    from tests.integration.mjpeg_server import MjpegCamera

    with MjpegCamera(footage, fps=10, frames=1) as still, \
            TopicRecorder(stack.config.kafka_bootstrap, MONITORING) as monitoring, \
            TopicRecorder(stack.config.kafka_bootstrap, FRAMES) as frames:
        registry.add("still", still.url, sample_fps=5.0, motion_min_changed_fraction=0.01)
        skipped = wait_for(lambda: max((s.frames_skipped for _, s in statuses(monitoring) if s.camera_id == "still"),
                                       default=0) >= 10, 30, what="skipped frames reported")
        assert skipped
        produced = [k for _, k, _ in frames.since(0) if k == b"still"]
        assert len(produced) == 1, "only the first frame of an unchanging scene is produced"
