"""A candidate version of a served model in the server's rollout slot: in shadow it also sees every camera's
frames; as a canary it serves its share of the cameras, the champion running as their shadow; it replaces the
configured shadow model while it runs."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import cv2
import pytest

from libs.common.envelope import new_envelope
from protos import events_pb2
from services.inference.core.frame_pipeline import FramePipeline
from services.inference.core.model_repository import ModelNotFound
from services.inference.core.model_server import ModelLoadFailed, ModelServer
from services.inference.core.routing import in_canary
from services.inference.detectors.yolo import YoloDetector

CAMERAS = [f"camera-{i:03d}" for i in range(200)]


def fake_model(name: str, version: str = "1"):
    return SimpleNamespace(name=name, version=version, input_size=(32, 32))


@pytest.fixture
def models():
    return SimpleNamespace(champion=fake_model("det", "1"), candidate=fake_model("det", "1+site.ab.s0"),
                           shadow=fake_model("det-shadow", "3"), own=fake_model("faces", "1"))


def server_of(models, **kwargs) -> ModelServer:
    server = ModelServer(models.champion, shadow_model="det-shadow", camera_models={"cam-faces": "faces"}, **kwargs)
    server.models.update({"det-shadow": models.shadow, "faces": models.own})
    return server


def test_in_shadow_the_candidate_sees_every_camera_of_its_model_and_replaces_the_configured_shadow(models):
    server = server_of(models)
    assert all(server.shadow_for_camera(c) is models.shadow for c in CAMERAS)
    server.set_rollout("shadow", models.candidate)
    for camera_id in CAMERAS:
        assert server.model_for_camera(camera_id) is models.champion
        assert server.shadow_for_camera(camera_id) is models.candidate
    # A camera served by a model of another name is no part of this rollout.
    assert server.model_for_camera("cam-faces") is models.own and server.shadow_for_camera("cam-faces") is None
    server.set_rollout("shadow", None)
    assert server.rollout is None and server.shadow_for_camera(CAMERAS[0]) is models.shadow


@pytest.mark.parametrize("share", [0.25, 1.0])
def test_as_a_canary_the_candidate_serves_its_share_with_the_champion_as_their_shadow(models, share):
    server = server_of(models)
    server.set_rollout("canary", models.candidate, share)
    canary = [c for c in CAMERAS if in_canary(c, share)]
    assert 0 < len(canary) and (share == 1.0) == (len(canary) == len(CAMERAS))
    for camera_id in CAMERAS:
        if camera_id in canary:
            assert server.model_for_camera(camera_id) is models.candidate
            assert server.shadow_for_camera(camera_id) is models.champion
        else:  # unchanged, and the rollout's run replaces the configured shadow
            assert server.model_for_camera(camera_id) is models.champion
            assert server.shadow_for_camera(camera_id) is None
    assert server.model_for_camera("cam-faces") is models.own


def test_the_champion_swapped_meanwhile_is_the_canary_cameras_shadow(models):
    server = server_of(models)
    server.set_rollout("canary", models.candidate, 1.0)
    newer = fake_model("det", "2")
    server.default_model = server.models["det"] = newer
    assert server.shadow_for_camera(CAMERAS[0]) is newer and server.model_for_camera(CAMERAS[0]) is models.candidate


def test_the_candidate_answers_requests_naming_its_version_and_only_those(models):
    server = server_of(models)
    with pytest.raises(ModelNotFound):
        server.model("det", models.candidate.version)
    server.set_rollout("shadow", models.candidate)
    assert server.model("det", models.candidate.version) is models.candidate
    assert server.model("det") is models.champion and server.model("det", "1") is models.champion


def test_a_rollout_stage_or_share_out_of_range_is_refused(models):
    server = server_of(models)
    with pytest.raises(ValueError, match="not one of"):
        server.set_rollout("primary", models.candidate)
    with pytest.raises(ValueError, match="share"):
        server.set_rollout("canary", models.candidate, 1.5)
    assert server.rollout is None


def test_a_candidate_that_fails_to_load_is_reported_and_nothing_serving_changes(models):
    statuses = []
    server = ModelServer(models.champion, on_status=lambda *status: statuses.append(status))

    def broken():
        raise RuntimeError("model.bin is truncated")

    with pytest.raises(ModelLoadFailed, match="truncated"):
        server.load_candidate("det", "1+site", broken, "rollout shadow of registry version 2")
    assert [(name, version, state) for name, version, state, _ in statuses] == [
        ("det", "1+site", "loading"), ("det", "1+site", "failed")]
    assert "rollout shadow of registry version 2" in statuses[1][3] and "version 1 keeps serving" in statuses[1][3]
    assert server.rollout is None and server.model("det") is models.champion and not server.failures


@pytest.fixture(scope="module")
def candidate_dir(yolov3_tiny_model_dir, tmp_path_factory):
    """A second version of the default model: the same network under the same name, another model.json version."""
    target = tmp_path_factory.mktemp("candidate") / "yolov3-tiny"
    shutil.copytree(yolov3_tiny_model_dir, target)
    metadata = json.loads((target / "model.json").read_text())
    (target / "model.json").write_text(json.dumps({**metadata, "version": "1+site.test.s0"}))
    return target


def test_through_the_pipeline_two_versions_of_one_model_are_told_apart_by_version_and_role(
        yolov3_tiny_model_dir, candidate_dir, opencv_samples_dir):
    champion = YoloDetector.load(yolov3_tiny_model_dir)
    server = ModelServer(champion)
    candidate = server.load_candidate(champion.name, "1+site.test.s0", lambda: YoloDetector.load(candidate_dir),
                                      "rollout canary")
    assert (candidate.name, candidate.version) == (champion.name, "1+site.test.s0")
    ok, image = cv2.VideoCapture(str(opencv_samples_dir / "vtest.avi")).read()
    assert ok
    cameras = ["cam-a", "cam-c"]  # positions 0.60 and 0.11: a canary of 0.5 takes cam-c only
    frames = [events_pb2.Frame(envelope=new_envelope(f"camera/{c}", "ingest"), camera_id=c, sequence=0,
                               encoding="jpeg", data=cv2.imencode(".jpg", image)[1].tobytes()) for c in cameras]
    pipeline = FramePipeline(server.model_for_camera, shadow_for=server.shadow_for_camera)

    def refs(pairs):
        return [((r.model.version, r.shadow), s and (s.model.version, s.shadow)) for r, s in pairs]

    server.set_rollout("shadow", candidate)
    assert refs(pipeline.run_with_shadows(frames)) == [((champion.version, False), ("1+site.test.s0", True))] * 2
    server.set_rollout("canary", candidate, 0.5)
    pairs = pipeline.run_with_shadows(frames)
    assert refs(pairs) == [((champion.version, False), None),
                           (("1+site.test.s0", False), (champion.version, True))]
    assert pairs[1][0].envelope.event_id != pairs[1][1].envelope.event_id
    assert [d.label for d in pairs[1][0].detections] == [d.label for d in pairs[1][1].detections]
    server.set_rollout("", None)
    assert refs(pipeline.run_with_shadows(frames)) == [((champion.version, False), None)] * 2
