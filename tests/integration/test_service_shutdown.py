"""Services as processes on the shared runtime: SIGTERM stops them cleanly with exit 0; a task that dies stops
the whole process with a non-zero exit (so its supervisor restarts it) instead of leaving half a service up."""
from __future__ import annotations

import subprocess
import sys
import uuid

from cli.stack.component import ComponentSpec
from cli.stack.local import REPO_ROOT, service_ready
from tests.integration.stack_process import free_ports, running


def inference_env(stack, ops_port: int, **extra: str) -> dict[str, str]:
    grpc_port = free_ports(1)[0]
    return {**stack.config.service_env(), "VIGIL_INFERENCE_OPS_PORT": str(ops_port),
            "VIGIL_INFERENCE_GRPC_PORT": str(grpc_port), "VIGIL_INFERENCE_CONSUME": "false",
            "VIGIL_INFERENCE_FOLLOW_REGISTRY": "false", **extra}


def test_sigterm_stops_a_serving_inference_process_with_exit_zero(stack, tmp_path):
    ops_port = free_ports(1)[0]
    spec = ComponentSpec("inference-alone", [sys.executable, "-m", "services.inference"],
                         healthy=lambda: service_ready(ops_port),
                         env=inference_env(stack, ops_port, VIGIL_INFERENCE_CONSUME_SENSORS="false"), cwd=REPO_ROOT)
    with running(spec, tmp_path / "logs") as inference:
        pass
    assert inference.returncode == 0, inference.log_tail()
    assert '"stopped"' in inference.log_tail()


def test_sigterm_stops_standalone_sensor_ingest_with_exit_zero(stack, tmp_path):
    ops_port = free_ports(1)[0]
    env = {**stack.config.service_env(), "VIGIL_INGEST_OPS_PORT": str(ops_port),
           "VIGIL_INGEST_SENSORS_HTTP_PORT": "0", "VIGIL_INGEST_SENSORS_GROUP_ID": f"shutdown-{uuid.uuid4().hex[:8]}"}
    spec = ComponentSpec("sensors-alone", [sys.executable, "-m", "services.ingest.sensors"],
                         healthy=lambda: service_ready(ops_port), env=env, cwd=REPO_ROOT)
    with running(spec, tmp_path / "logs") as sensors:
        pass
    assert sensors.returncode == 0, sensors.log_tail()


def test_a_task_that_dies_stops_the_process_with_a_non_zero_exit(stack, tmp_path):
    # The sensor path's model cannot load: its task fails after the gRPC server is already serving.
    env = inference_env(stack, free_ports(1)[0], VIGIL_INFERENCE_CONSUME_SENSORS="true",
                        VIGIL_INFERENCE_SENSOR_MODEL_DIR=str(tmp_path / "no-model-here"))
    done = subprocess.run([sys.executable, "-m", "services.inference"], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "task failed" in done.stderr and "sensor-path" in done.stderr


def test_sigterm_stops_a_second_annotation_replica_with_exit_zero(stack, tmp_path):
    # A second replica beside the stack's: it joins the intake's group, follows the queue, serves its UI.
    ops_port, ui_port = free_ports(2)
    env = {**stack.config.service_env(), "VIGIL_ANNOTATION_OPS_PORT": str(ops_port),
           "VIGIL_ANNOTATION_UI_PORT": str(ui_port),
           "VIGIL_ANNOTATION_INFERENCE_GRPC": f"127.0.0.1:{stack.config.ports.grpc}"}
    spec = ComponentSpec("annotation-replica", [sys.executable, "-m", "services.annotation"],
                         healthy=lambda: service_ready(ops_port), env=env, cwd=REPO_ROOT)
    with running(spec, tmp_path / "logs") as annotation:
        pass
    assert annotation.returncode == 0, annotation.log_tail()
