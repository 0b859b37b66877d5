"""Canary and shadow on the Kafka path of a real stack: half the cameras (by the stable hash of their id) go
to a candidate model, and every frame also goes through a shadow model whose results (shadow=true) appear on
vigil.inference.shadow only, never on vigil.inference."""
from __future__ import annotations

import json
import shutil

import cv2
import pytest

from libs.common.topics import FRAMES, INFERENCE, INFERENCE_SHADOW
from protos import events_pb2
from services.inference.core.routing import in_canary
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import end_offsets, produce, read_range
from tests.integration.test_inference_grpc import inference_stack
from tests.integration.test_inference_kafka import frame_event

pytestmark = pytest.mark.integration
CAMERAS = tuple(f"cam-{i}" for i in range(8))
FRAMES_PER_CAMERA = 3
CANARY_SHARE = 0.5


@pytest.fixture(scope="module")
def canary_shadow_stack(tmp_path_factory):
    from tools.darknet_converter import ensure_default_model

    repository = tmp_path_factory.mktemp("model-repository")
    # Copies of the default model (the same network, so results are comparable) as the canary candidate
    # and the shadow model.
    for name, version in (("yolov3-tiny-canary", "2"), ("yolov3-tiny-shadow", "3")):
        target = repository / name
        shutil.copytree(ensure_default_model(), target)
        metadata = json.loads((target / "model.json").read_text())
        metadata.update(name=name, version=version)
        (target / "model.json").write_text(json.dumps(metadata))
    env = {"VIGIL_INFERENCE_MODEL_REPOSITORY": str(repository),
           "VIGIL_INFERENCE_CANARY_MODEL": "yolov3-tiny-canary", "VIGIL_INFERENCE_CANARY_SHARE": str(CANARY_SHARE),
           "VIGIL_INFERENCE_SHADOW_MODEL": "yolov3-tiny-shadow"}
    with inference_stack(tmp_path_factory.mktemp("inference-canary-shadow"), env) as stack:
        yield stack


def test_canary_cameras_go_to_the_candidate_and_shadow_results_stay_on_their_own_topic(canary_shadow_stack):
    from cli.stack.camera import fetch_footage
    from libs.common.cache_dir import default_cache_dir

    canary = {c for c in CAMERAS if in_canary(c, CANARY_SHARE)}
    assert canary and canary != set(CAMERAS), "the chosen camera ids should fall on both sides"
    capture = cv2.VideoCapture(str(fetch_footage(default_cache_dir())))
    jpegs = []
    for _ in range(FRAMES_PER_CAMERA):
        ok, image = capture.read()
        assert ok
        jpegs.append(cv2.imencode(".jpg", image)[1].tobytes())

    bootstrap = canary_shadow_stack.config.kafka_bootstrap
    primary_start, shadow_start = end_offsets(bootstrap, INFERENCE), end_offsets(bootstrap, INFERENCE_SHADOW)
    frames = [frame_event(camera_id, sequence, jpegs[sequence])
              for sequence in range(FRAMES_PER_CAMERA) for camera_id in CAMERAS]
    produce(bootstrap, FRAMES, [(f.camera_id.encode(), f.SerializeToString()) for f in frames])
    frame_ids = {f.envelope.event_id for f in frames}

    def results_of(topic, start):
        def complete():
            found = [events_pb2.InferenceResult.FromString(m.value())
                     for m in read_range(bootstrap, topic, start, end_offsets(bootstrap, topic))]
            return found if frame_ids <= {r.frame_event_id for r in found} else None
        return wait_for(complete, 120, what=f"a result per frame on {topic}")

    primary, shadow = results_of(INFERENCE, primary_start), results_of(INFERENCE_SHADOW, shadow_start)
    # One of each per frame, each on its own topic only.
    assert sorted(r.frame_event_id for r in primary) == sorted(frame_ids)
    assert sorted(r.frame_event_id for r in shadow) == sorted(frame_ids)
    assert not any(r.shadow for r in primary) and all(r.shadow for r in shadow)
    assert {r.model.name for r in shadow} == {"yolov3-tiny-shadow"} and {r.model.version for r in shadow} == {"3"}
    assert not {r.envelope.event_id for r in primary} & {r.envelope.event_id for r in shadow}
    # Canary cameras' primary results come from the candidate, the others' from the default model.
    for result in primary:
        expected = ("yolov3-tiny-canary", "2") if result.camera_id in canary else ("yolov3-tiny", "1")
        assert (result.model.name, result.model.version) == expected, result.camera_id
    # Same network: the shadow saw the same frame as the primary and found the same things.
    shadow_by_frame = {r.frame_event_id: r for r in shadow}
    for result in primary:
        assert ([d.label for d in result.detections]
                == [d.label for d in shadow_by_frame[result.frame_event_id].detections])
