"""One real local stack for the integration tests: Apache Kafka, SeaweedFS, the demo RTSP camera and Vigil's
services as processes, on free ports, in a temporary state directory. It is always stopped at the end."""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cli.stack.local import LocalStack, StackPorts

QUERY_API_TOKEN = "VIGIL_METRICS_API_TOKEN"


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> LocalStack:
    state = tmp_path_factory.mktemp("vigil-state")
    # The query API and dashboard behind a token, as in a cluster: the tests (and the `vigil query` they run,
    # which inherits this process's environment) send it.
    token = secrets.token_urlsafe(16)
    stack = LocalStack(state=state, ports=StackPorts.free(), extra_env={
        # Small batches keep the tests' latency low; the camera at 5 fps gives a steady stream.
        "metrics": {"VIGIL_METRICS_BATCH_MAX_WAIT_S": "0.5", QUERY_API_TOKEN: token},
    })
    previous_token = os.environ.get(QUERY_API_TOKEN)
    os.environ[QUERY_API_TOKEN] = token
    stack.install()
    try:
        stack.up(progress=_progress)
        yield stack
    finally:
        for name in ("ingest", "inference", "metrics", "camera", "objectstore", "kafka"):
            if stack.supervisor.running_pid(name):
                _progress(f"--- last lines of {name}.log ---\n{stack.supervisor.log_tail(name, 8)}")
        stack.supervisor.down(progress=_progress)
        if previous_token is None:
            os.environ.pop(QUERY_API_TOKEN, None)
        else:
            os.environ[QUERY_API_TOKEN] = previous_token


def query_api_headers() -> dict[str, str]:
    """What a request to the stack's query API carries: JSON, and the stack's token."""
    return {"Content-Type": "application/json", "Authorization": f"Bearer {os.environ[QUERY_API_TOKEN]}"}


def query(stack: LocalStack, sql: str) -> list[dict]:
    request = urllib.request.Request(f"{stack.config.query_api_url}/api/query", data=json.dumps({"sql": sql}).encode(),
                                     headers=query_api_headers(), method="POST")
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
