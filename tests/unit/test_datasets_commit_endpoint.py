"""The datasets service's commit endpoint (services/datasets/http_api.py) on a real uvicorn server on loopback:
POST /commit behind its token, answered with the version the consumer's next checkpoint commits, 504 when no
checkpoint answers in time, and refused off loopback without a token."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from services.datasets.http_api import commit_app, start_commit_server
from services.datasets.labels_intake import LabelIntake
from services.datasets.manifest import build_manifest
from libs.common.http import HttpServer

TOKEN = "commit-token-1234"


class NoStore:
    """The endpoint never touches the store: only the consumer's checkpoint does."""


def post(port: int, token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/commit", data=b"", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def served():
    intake = LabelIntake(NoStore(), lambda ref: b"", "site", "main")
    server = HttpServer(commit_app(intake, TOKEN, wait_s=0.5), "127.0.0.1", 0).start()
    try:
        yield intake, server.port
    finally:
        server.stop()


def test_a_commit_needs_the_token(served):
    _, port = served
    assert post(port)[0] == 401
    assert post(port, "wrong")[0] == 401


def test_a_commit_nobody_checkpoints_in_time_is_answered_504(served):
    _, port = served
    status, body = post(port, TOKEN)
    assert status == 504 and "did not commit" in body["error"]


def test_the_answer_is_the_version_the_next_checkpoint_commits(served):
    intake, port = served
    manifest = build_manifest("site", [], message="m", author="datasets")
    answers = []
    asking = threading.Thread(target=lambda: answers.append(post(port, TOKEN)))
    asking.start()
    deadline = time.monotonic() + 5
    while not intake.commit_requested and time.monotonic() < deadline:
        time.sleep(0.01)
    with intake.lock:  # what checkpoint does once its commit landed
        intake._answer(manifest)
    asking.join()
    assert answers == [(200, {"dataset": "site", "branch": "main", "version": manifest.version, "items": 0,
                              "parents": []})]


def test_serving_off_loopback_without_a_token_is_refused():
    with pytest.raises(ValueError, match="VIGIL_DATASETS_COMMIT_TOKEN"):
        start_commit_server(LabelIntake(NoStore(), lambda ref: b"", "site"), "0.0.0.0", 0, None)
