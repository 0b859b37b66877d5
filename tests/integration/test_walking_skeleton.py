"""The thin path on real infrastructure: RTSP camera → ingest → Kafka → OpenVINO → Kafka → ClickHouse."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from libs.common.envelope import new_envelope
from libs.common.kafka import DLQ_ORIGIN_OFFSET, DLQ_ORIGIN_TOPIC, DLQ_REASON
from libs.common.topics import DLQ, FRAMES, INFERENCE
from protos import events_pb2
from tests.integration.conftest import query, wait_for
from tests.integration.kafka_tools import decodable, end_offsets, produce, read_range

pytestmark = pytest.mark.integration


def inference_results(stack) -> list[events_pb2.InferenceResult]:
    bootstrap = stack.config.kafka_bootstrap
    return decodable(events_pb2.InferenceResult, read_range(bootstrap, INFERENCE, None, end_offsets(bootstrap, INFERENCE)))


def test_a_camera_frame_becomes_an_inference_event_and_a_row_with_the_persons_in_the_footage(stack):
    rows = wait_for(lambda: query(stack, (
        "SELECT toString(event_id) AS event_id, toString(frame_event_id) AS frame_event_id, trace_id, labels "
        f"FROM inference_events WHERE camera_id = '{stack.config.camera_id}' AND countEqual(labels, 'person') >= 2 "
        "LIMIT 1")), 120, what="a row with persons")
    row = rows[0]

    bootstrap = stack.config.kafka_bootstrap
    frames = decodable(events_pb2.Frame, read_range(bootstrap, FRAMES, None, end_offsets(bootstrap, FRAMES)))
    frame = next(f for f in frames if f.envelope.event_id == row["frame_event_id"])
    assert frame.camera_id == stack.config.camera_id
    assert (frame.width, frame.height) == (768, 576)
    assert cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_COLOR).shape == (576, 768, 3)

    result = next(r for r in inference_results(stack) if r.envelope.event_id == row["event_id"])
    assert result.frame_event_id == frame.envelope.event_id
    # One trace from the camera frame to the stored row.
    assert result.envelope.trace_id == frame.envelope.trace_id == row["trace_id"]
    assert result.model.name == "yolov3-tiny"
    persons = [d for d in result.detections if d.label == "person"]
    assert len(persons) >= 2
    for d in persons:
        assert 0 <= d.box.x1 < d.box.x2 <= 768 and 0 <= d.box.y1 < d.box.y2 <= 576
    assert set(result.stage_latency_ms) == {"queue", "decode", "preprocess", "infer", "postprocess"}


def test_malformed_frame_events_are_dead_lettered_with_a_reason_and_good_frames_keep_flowing(stack):
    bootstrap = stack.config.kafka_bootstrap
    not_a_jpeg = events_pb2.Frame(envelope=new_envelope("camera/bad", "test"), camera_id="bad", encoding="jpeg",
                                  data=b"this is not an image", width=10, height=10)
    empty = events_pb2.Frame(envelope=new_envelope("camera/bad", "test"), camera_id="bad", encoding="jpeg")
    bad = {
        b"random-bytes": bytes(range(256)) * 3,
        b"not-a-jpeg": not_a_jpeg.SerializeToString(),
        b"empty": empty.SerializeToString(),
    }
    dlq_start = end_offsets(bootstrap, DLQ)
    results_before = stack_row_count(stack)
    produce(bootstrap, FRAMES, list(bad.items()))

    def dead_letters():
        letters = read_range(bootstrap, DLQ, dlq_start, end_offsets(bootstrap, DLQ))
        return letters if len(letters) >= 3 else None

    letters = {m.key(): m for m in wait_for(dead_letters, 60, what="three dead letters")}
    assert set(letters) == set(bad)
    reasons = {key: dict(m.headers())[DLQ_REASON].decode() for key, m in letters.items()}
    assert reasons == {b"random-bytes": "malformed_event", b"not-a-jpeg": "undecodable_image",
                       b"empty": "empty_payload"}
    for key, message in letters.items():
        headers = dict(message.headers())
        assert message.value() == bad[key], "the dead letter keeps the original bytes"
        assert headers[DLQ_ORIGIN_TOPIC] == FRAMES.encode()
        assert int(headers[DLQ_ORIGIN_OFFSET]) >= 0
    # The service is still processing the camera's frames.
    wait_for(lambda: stack_row_count(stack) > results_before + 5, 60, what="new rows after the bad frames")


def stack_row_count(stack) -> int:
    return query(stack, "SELECT count() AS n FROM inference_events")[0]["n"]


def test_tritonclient_gets_metadata_and_the_persons_in_a_real_image(stack, footage):
    probe = subprocess.run(
        [sys.executable, "-m", "tests.integration.triton_client_probe", f"127.0.0.1:{stack.config.ports.grpc}",
         str(footage), "200"], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert {"name": "image", "datatype": "UINT8", "shape": ["-1", "-1", "3"]} in seen["metadata"]["inputs"]
    assert [o["name"] for o in seen["metadata"]["outputs"]] == ["boxes", "scores", "classes"]
    assert seen["boxes_shape"] == [len(seen["scores"]), 4] and len(seen["classes"]) == len(seen["scores"])
    assert seen["classes"].count("person") >= 3
    assert min(seen["scores"]) >= 0.25
    assert seen["wrong_dtype"].startswith("StatusCode.INVALID_ARGUMENT") and "'image'" in seen["wrong_dtype"]
    assert seen["unknown_model"].startswith("StatusCode.NOT_FOUND")


def vigil(stack, *args: str) -> subprocess.CompletedProcess:
    """The installed `vigil` command, run from outside the repository as a user would."""
    command = Path(sys.executable).parent / "vigil"
    return subprocess.run([str(command), "--state-dir", str(stack.paths.state), *args],
                          capture_output=True, text=True, timeout=120, cwd="/")


def test_the_cli_tails_inference_events_and_queries_the_store(stack):
    tailed = vigil(stack, "tail", INFERENCE, "--count", "3")
    assert tailed.returncode == 0, tailed.stderr
    events = [json.loads(line) for line in tailed.stdout.splitlines()]
    assert len(events) == 3
    assert all(e["camera_id"] == stack.config.camera_id and e["model"]["name"] == "yolov3-tiny" for e in events)

    counted = vigil(stack, "query", "SELECT count() AS n FROM inference_events")
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout)["n"] > 0

    refused = vigil(stack, "query", "DROP TABLE inference_events")
    assert refused.returncode == 2 and "read-only" in refused.stderr

    status = vigil(stack, "status", "--json")
    assert status.returncode == 0, status.stdout
    components = {c["name"]: c for c in json.loads(status.stdout)["components"]}
    assert all(c["healthy"] for c in components.values()), components


def test_sigkill_of_inference_mid_stream_loses_no_frame_and_the_store_keeps_each_event_once(stack):
    bootstrap = stack.config.kafka_bootstrap
    wait_for(lambda: stack_row_count(stack) > 0, 120, what="the stream to flow")
    try:
        time.sleep(2)
        stack.supervisor.kill("inference")
        # Frames keep arriving while inference is dead: a dozen (over 2 s at 5 fps), polled on a loaded box.
        frames_at_kill = sum(end_offsets(bootstrap, FRAMES).values())
        wait_for(lambda: sum(end_offsets(bootstrap, FRAMES).values()) >= frames_at_kill + 12, 60,
                 what="frames arriving while inference is dead")
        stack.supervisor.up(progress=lambda *_: None)  # restarts what is not running
        time.sleep(3)
        stack.supervisor.stop("ingest", progress=lambda *_: None)  # a finite stream from here on
        frames_end = end_offsets(bootstrap, FRAMES)
        frames = decodable(events_pb2.Frame, [m for m in read_range(bootstrap, FRAMES, None, frames_end)
                                              if m.key() == stack.config.camera_id.encode()])
        frame_ids = {f.envelope.event_id for f in frames}

        def every_frame_has_a_result():
            results = inference_results(stack)
            covered = {r.frame_event_id for r in results}
            return results if frame_ids <= covered else None

        results = wait_for(every_frame_has_a_result, 120, interval_s=2, what="a result for every frame")
        results = [r for r in results if r.camera_id == stack.config.camera_id]  # other tests' cameras aside
        distinct = {r.envelope.event_id for r in results}
        duplicates = len(results) - len(distinct)
        print(f"frames: {len(frame_ids)}, results: {len(results)}, duplicates after SIGKILL: {duplicates}")

        seen: list[dict] = []

        def store_caught_up():
            seen.append(query(stack, "SELECT count() AS n, uniqExact(event_id) AS u FROM inference_events "
                                     f"WHERE camera_id = '{stack.config.camera_id}'")[0])
            return seen[-1] if seen[-1]["u"] >= len(distinct) else None

        try:
            row = wait_for(store_caught_up, 60, what=f"the sink to store all {len(distinct)} results")
        except AssertionError:
            stored = {r["id"] for r in query(stack, "SELECT toString(event_id) AS id FROM inference_events "
                                             f"WHERE camera_id = '{stack.config.camera_id}'")}
            missing = [r for r in results if r.envelope.event_id not in stored]
            print("stored:", seen[-1], "missing:", len(missing), Counter(r.camera_id for r in missing))
            print(stack.supervisor.log_tail("metrics", 20))
            raise
        assert row["n"] == row["u"] == len(distinct), "each event id is stored exactly once"
    finally:
        stack.supervisor.up(progress=lambda *_: None)
