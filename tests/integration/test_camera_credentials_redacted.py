"""Camera credentials never leave ingest: cameras whose URLs carry a password (one unreachable, one streaming from
the stack's demo camera) run in the real stack, and neither the ingest service's log file, nor the camera statuses
on vigil.monitoring, nor `vigil cameras`' output holds the password."""
from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from libs.common.topics import MONITORING
from protos import events_pb2
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import TopicRecorder
from tests.integration.stack_process import free_ports

pytestmark = pytest.mark.integration


def vigil_cameras(stack, *args: str) -> subprocess.CompletedProcess:
    command = Path(sys.executable).parent / "vigil"
    return subprocess.run([str(command), "--state-dir", str(stack.paths.state), "cameras", *args],
                          capture_output=True, text=True, timeout=60)


def camera_statuses(recorder: TopicRecorder) -> list[events_pb2.CameraStatus]:
    events = (events_pb2.MonitoringEvent.FromString(value) for _t, _key, value in recorder.since(0))
    return [event.camera_status for event in events if event.WhichOneof("detail") == "camera_status"]


def test_a_camera_password_appears_in_no_log_status_or_cli_output(stack):
    secret = f"pw-{uuid.uuid4().hex}"
    closed_port = free_ports(1)[0]
    cameras = {
        "creds-unreachable": f"rtsp://viewer:{secret}@127.0.0.1:{closed_port}/cam",
        "creds-streaming": f"rtsp://viewer:{secret}@127.0.0.1:{stack.config.ports.rtsp}/{stack.config.camera_id}",
    }
    log_path = stack.paths.logs() / "ingest.log"
    with TopicRecorder(stack.config.kafka_bootstrap, MONITORING) as monitoring:
        outputs = []
        try:
            for camera_id, url in cameras.items():
                added = vigil_cameras(stack, "add", camera_id, url, "--fps", "1")
                assert added.returncode == 0, added.stderr
                outputs.append(added)
            outputs.append(vigil_cameras(stack, "list"))
            # A URL the registry refuses is echoed in the refusal.
            refused = vigil_cameras(stack, "add", "creds-refused", f"ftp://viewer:{secret}@127.0.0.1/cam")
            assert refused.returncode == 2
            outputs.append(refused)

            def states() -> dict[str, str]:
                return {s.camera_id: events_pb2.CameraState.Name(s.state) for s in camera_statuses(monitoring)}

            # The unreachable camera has failed (and been retried, logging the reopen); the other streams.
            wait_for(lambda: states().get("creds-unreachable") == "CAMERA_STATE_OFFLINE"
                     and states().get("creds-streaming") == "CAMERA_STATE_ONLINE", 60, what="both cameras' states")
            wait_for(lambda: "creds-unreachable" in log_path.read_text(errors="replace"), 30,
                     what="ingest logging the cameras")
            # A couple more reconnect attempts, each logged (polled: on a loaded box they come slower).
            unreachable = f"127.0.0.1:{closed_port}"
            logged = log_path.read_text(errors="replace").count(unreachable)
            wait_for(lambda: log_path.read_text(errors="replace").count(unreachable) >= logged + 2, 60,
                     what="more reconnect attempts logged")
        finally:
            for camera_id in cameras:
                vigil_cameras(stack, "remove", camera_id)

    assert "creds-streaming" in log_path.read_text(errors="replace")
    assert secret not in log_path.read_text(errors="replace"), "the password is in ingest's log"
    reasons = [status.reason for status in camera_statuses(monitoring)]
    assert any("127.0.0.1" in reason for reason in reasons), reasons
    assert not [reason for reason in reasons if secret in reason], "the password is in a camera status"
    for output in outputs:
        assert secret not in output.stdout + output.stderr, f"the password is in `{' '.join(output.args[3:5])}`"
    assert "viewer" not in "".join(o.stdout for o in outputs), "the whole userinfo is masked"
