"""Canary routing by a stable hash of the camera id, and shadow inference in the frame pipeline."""
import json
import math
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from libs.common.envelope import new_envelope
from protos import events_pb2
from services.inference.detectors.yolo import YoloDetector
from services.inference.core.frame_pipeline import FramePipeline, InvalidFrame
from services.inference.core.routing import camera_position, in_canary
from services.inference.core.model_server import ModelServer

CAMERA_IDS = [f"camera-{i:04d}" for i in range(2000)]


@pytest.mark.parametrize("share", [0.05, 0.3, 0.5, 0.9])
def test_the_canary_share_of_cameras_matches_the_setting_within_sampling_error(share):
    routed = sum(in_canary(camera_id, share) for camera_id in CAMERA_IDS)
    sigma = math.sqrt(len(CAMERA_IDS) * share * (1 - share))
    assert abs(routed - share * len(CAMERA_IDS)) <= 3 * sigma, (routed, share)


def test_share_zero_routes_no_camera_and_share_one_every_camera():
    assert not any(in_canary(camera_id, 0.0) for camera_id in CAMERA_IDS)
    assert all(in_canary(camera_id, 1.0) for camera_id in CAMERA_IDS)


def test_routing_is_stable_across_calls_and_processes():
    # Fixed values: sha256 does not change between runs, interpreters or machines (Python's hash() would).
    assert camera_position("cam-a") == pytest.approx(0.6029740435884697)
    assert camera_position("cam-c") == pytest.approx(0.10721313932464546)
    assert [in_canary(c, 0.3) for c in CAMERA_IDS[:50]] == [in_canary(c, 0.3) for c in CAMERA_IDS[:50]]
    script = ("from services.inference.core.routing import in_canary; "
              f"print(''.join('1' if in_canary(c, 0.3) else '0' for c in {CAMERA_IDS[:200]!r}))")
    outputs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip() for seed in ("1", "2")}
    assert outputs == {"".join("1" if in_canary(c, 0.3) else "0" for c in CAMERA_IDS[:200])}


def test_raising_the_share_only_adds_cameras():
    small = {c for c in CAMERA_IDS if in_canary(c, 0.2)}
    large = {c for c in CAMERA_IDS if in_canary(c, 0.4)}
    assert small < large


def fake_model(name: str, version: str = "1"):
    return SimpleNamespace(name=name, version=version, input_size=(32, 32))


def test_the_server_routes_canary_cameras_to_the_loaded_candidate_and_explicit_models_win():
    default, candidate, own = fake_model("default"), fake_model("candidate", "2"), fake_model("own")
    server = ModelServer(default, camera_models={"cam-own": "own"}, canary_model="candidate", canary_share=0.3)
    # Not loaded yet: every camera stays on the default.
    assert {server.model_for_camera(c).name for c in CAMERA_IDS[:100]} == {"default"}
    server.models.update(candidate=candidate, own=own)
    for camera_id in CAMERA_IDS[:300]:
        expected = candidate if in_canary(camera_id, 0.3) else default
        assert server.model_for_camera(camera_id) is expected
    cam_own_in_share = ModelServer(default, camera_models={"cam-own": "own"}, canary_model="candidate",
                                   canary_share=1.0)
    cam_own_in_share.models.update(candidate=candidate, own=own)
    assert cam_own_in_share.model_for_camera("cam-own") is own
    assert cam_own_in_share.model_for_camera("cam-x") is candidate


def test_a_canary_or_shadow_model_named_like_the_default_is_refused():
    with pytest.raises(ValueError, match="shadow"):
        ModelServer(fake_model("default"), shadow_model="default")
    with pytest.raises(ValueError, match="canary"):
        ModelServer(fake_model("default"), canary_model="default")


@pytest.fixture(scope="module")
def shadow_model_dir(yolov3_tiny_model_dir, tmp_path_factory):
    target = tmp_path_factory.mktemp("shadow") / "yolov3-tiny-shadow"
    shutil.copytree(yolov3_tiny_model_dir, target)
    metadata = json.loads((target / "model.json").read_text())
    metadata.update(name="yolov3-tiny-shadow", version="2")
    (target / "model.json").write_text(json.dumps(metadata))
    return target


def test_the_pipeline_marks_shadow_results_and_leaves_primary_results_unmarked(
        yolov3_tiny_model_dir, shadow_model_dir, opencv_samples_dir):
    primary, shadow = YoloDetector.load(yolov3_tiny_model_dir), YoloDetector.load(shadow_model_dir)
    capture = cv2.VideoCapture(str(opencv_samples_dir / "vtest.avi"))
    frames = []
    for sequence in range(4):
        ok, image = capture.read()
        assert ok
        frames.append(events_pb2.Frame(envelope=new_envelope(f"camera/cam{sequence % 2}", "ingest"),
                                       camera_id=f"cam{sequence % 2}", sequence=sequence, encoding="jpeg",
                                       data=cv2.imencode(".jpg", image)[1].tobytes()))
    broken = events_pb2.Frame(envelope=new_envelope("camera/cam0", "ingest"), camera_id="cam0", data=b"not a jpeg")
    pipeline = FramePipeline(lambda _camera_id: primary, shadow_for=lambda _camera_id: shadow)
    pairs = pipeline.run_with_shadows([*frames[:2], broken, *frames[2:]])

    assert isinstance(pairs[2][0], InvalidFrame) and pairs[2][1] is None
    pairs = pairs[:2] + pairs[3:]
    for frame, (result, shadow_result) in zip(frames, pairs):
        assert not result.shadow and (result.model.name, result.model.version) == ("yolov3-tiny", "1")
        assert shadow_result.shadow and (shadow_result.model.name, shadow_result.model.version) == (
            "yolov3-tiny-shadow", "2")
        assert result.frame_event_id == shadow_result.frame_event_id == frame.envelope.event_id
        assert result.envelope.event_id != shadow_result.envelope.event_id
        # The same network: the shadow sees the same frame and finds the same things.
        assert [d.label for d in result.detections] == [d.label for d in shadow_result.detections]
        # Each result carries its model's embedding of the frame (the shadow's dir is a copy: same projection).
        assert len(result.embedding) == len(shadow_result.embedding) == 64
        np.testing.assert_allclose(result.embedding, shadow_result.embedding, atol=1e-5)
        assert any(d.label == "person" for d in result.detections)
    # run() keeps returning the primary results only, and without a shadow model there is none.
    assert [r.envelope.event_id for r in pipeline.run(frames)] == [p[0].envelope.event_id for p in pairs]
    assert all(s is None for _, s in FramePipeline(primary).run_with_shadows(frames))
    # A shadow model that is the camera's own model adds nothing.
    assert all(s is None for _, s in FramePipeline(primary, shadow_for=lambda _c: primary).run_with_shadows(frames))
