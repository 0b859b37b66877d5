"""One real local stack for the integration tests: Apache Kafka, SeaweedFS, the demo RTSP camera and Vigil's
services as processes, on free ports, in a temporary state directory. It is always stopped at the end."""
from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cli.stack.local import LocalStack, StackPorts


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> LocalStack:
    state = tmp_path_factory.mktemp("vigil-state")
    stack = LocalStack(state=state, ports=StackPorts.free(), extra_env={
        # Small batches keep the tests' latency low; the camera at 5 fps gives a steady stream.
        "metrics": {"VIGIL_METRICS_BATCH_MAX_WAIT_S": "0.5"},
    })
    stack.install()
    try:
        stack.up(progress=_progress)
        yield stack
    finally:
        for name in ("ingest", "inference", "metrics", "camera", "objectstore", "kafka"):
            if stack.supervisor.running_pid(name):
                _progress(f"--- last lines of {name}.log ---\n{stack.supervisor.log_tail(name, 8)}")
        stack.supervisor.down(progress=_progress)


def query(stack: LocalStack, sql: str) -> list[dict]:
    request = urllib.request.Request(f"{stack.config.query_api_url}/api/query", data=json.dumps({"sql": sql}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.loads(response.read())
    return [dict(zip(payload["columns"], row)) for row in payload["rows"]]


def wait_for(condition, timeout_s: float, interval_s: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="session")
def footage(stack) -> Path:
    from cli.stack.camera import fetch_footage
    return fetch_footage(stack.paths.cache)
