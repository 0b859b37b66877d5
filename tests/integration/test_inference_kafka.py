"""The Kafka path of the inference service on a real stack: frames of several cameras interleaved on
vigil.frames are batched together, each camera goes through its own model (or the default), results keep
each camera's order and carry per-stage latency, and a corrupt JPEG goes to vigil.dlq."""
from __future__ import annotations

import json
import shutil
import urllib.request

import cv2
import pytest

from libs.common.envelope import new_envelope
from libs.common.kafka import DLQ_REASON
from libs.common.topics import DLQ, FRAMES, INFERENCE
from protos import events_pb2
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import end_offsets, produce, read_range
from tests.integration.test_inference_grpc import inference_stack

pytestmark = pytest.mark.integration
CAMERAS = ("cam-a", "cam-b", "cam-c")
FRAMES_PER_CAMERA = 24


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list[bytes]:
    from cli.stack.camera import fetch_footage
    from cli.stack.component import default_cache_dir

    capture = cv2.VideoCapture(str(fetch_footage(default_cache_dir())))
    frames = []
    for index in range(FRAMES_PER_CAMERA * 4):
        ok, image = capture.read()
        assert ok
        if index % 4 == 0:
            frames.append(cv2.imencode(".jpg", image)[1].tobytes())
    return frames


@pytest.fixture(scope="module")
def routed_stack(tmp_path_factory):
    from services.inference.detector import ensure_default_model

    repository = tmp_path_factory.mktemp("model-repository")
    target = repository / "people-counter"
    shutil.copytree(ensure_default_model(), target)
    metadata = json.loads((target / "model.json").read_text())
    metadata["name"] = "people-counter"
    (target / "model.json").write_text(json.dumps(metadata))
    env = {"VIGIL_INFERENCE_MODEL_REPOSITORY": str(repository),
           "VIGIL_INFERENCE_CAMERA_MODELS": json.dumps({"cam-b": "people-counter"}),
           "VIGIL_INFERENCE_BATCH_MAX_FRAMES": "8", "VIGIL_INFERENCE_BATCH_MAX_WAIT_S": "0.05"}
    with inference_stack(tmp_path_factory.mktemp("inference-kafka"), env) as stack:
        yield stack


def frame_event(camera_id: str, sequence: int, data: bytes) -> events_pb2.Frame:
    return events_pb2.Frame(envelope=new_envelope(f"camera/{camera_id}", "test"), camera_id=camera_id,
                            sequence=sequence, width=768, height=576, encoding="jpeg", data=data)


def scrape(stack, metric: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.config.ports.inference_ops}/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(metric))


def test_interleaved_cameras_are_batched_routed_to_their_model_and_keep_their_order(routed_stack, jpegs):
    bootstrap = routed_stack.config.kafka_bootstrap
    results_start, dlq_start = end_offsets(bootstrap, INFERENCE), end_offsets(bootstrap, DLQ)
    batches_before = scrape(routed_stack, "vigil_kafka_batch_seconds_count")
    messages = []
    for sequence in range(FRAMES_PER_CAMERA):
        for camera_id in CAMERAS:
            messages.append((camera_id.encode(), frame_event(camera_id, sequence, jpegs[sequence]).SerializeToString()))
    corrupt = frame_event("cam-a", 999, jpegs[0][:len(jpegs[0]) // 3])  # a JPEG cut short: header fine, data not
    messages.append((b"cam-a", corrupt.SerializeToString()))
    produce(bootstrap, FRAMES, messages)

    expected = FRAMES_PER_CAMERA * len(CAMERAS)

    def all_results():
        found = read_range(bootstrap, INFERENCE, results_start, end_offsets(bootstrap, INFERENCE))
        return found if len(found) >= expected else None

    results = [events_pb2.InferenceResult.FromString(m.value()) for m in wait_for(all_results, 120, what="results")]
    assert len(results) == expected
    for camera_id in CAMERAS:
        mine = [r for r in results if r.camera_id == camera_id]  # one partition per camera: topic order
        assert [r.frame_sequence for r in mine] == list(range(FRAMES_PER_CAMERA)), camera_id
        assert {r.model.name for r in mine} == {"people-counter" if camera_id == "cam-b" else "yolov3-tiny"}
    for result in results:
        latency = result.stage_latency_ms
        assert set(latency) == {"queue", "decode", "preprocess", "infer", "postprocess"}
        assert all(v >= 0 for v in latency.values()) and latency["infer"] > 0
    assert sum(1 for r in results for d in r.detections if d.label == "person") >= expected

    # Frames of several cameras went through together: far fewer batches than frames.
    batches = scrape(routed_stack, "vigil_kafka_batch_seconds_count") - batches_before
    assert 0 < batches <= expected / 2, f"{batches} batches for {expected + 1} frames"

    def dead_letters():
        letters = read_range(bootstrap, DLQ, dlq_start, end_offsets(bootstrap, DLQ))
        return letters or None

    letters = wait_for(dead_letters, 30, what="the corrupt frame's dead letter")
    assert [dict(m.headers())[DLQ_REASON].decode() for m in letters] == ["undecodable_image"]
    assert letters[0].value() == corrupt.SerializeToString()
