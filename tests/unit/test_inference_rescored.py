"""A re-scored model dir (the default detector's files plus rescoring.json, named in model.json) loads through
the service's own loader and serves the re-scored, per-camera thresholded detections: in gRPC's path (the server's
detect, with and without a camera) and in the frame pipeline (the frame's camera)."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from libs.common.envelope import new_envelope
from protos import events_pb2
from services.inference.core.frame_pipeline import FramePipeline
from services.inference.core.model_server import ModelServer
from services.inference.detectors import detector_loader
from services.inference.detectors.rescored import FeatureSpec, RescoredDetector, Rescoring, Thresholds

STRICT_CAMERA = "cam-strict"


def person_only_rescoring() -> Rescoring:
    """p = the raw score for a person (weight 1 on its logit), ~0 for any other class; persons served from 0.25
    (the base's default), from 0.99 on the strict camera."""
    spec = FeatureSpec(("person",), camera_buckets=2)
    weights = np.zeros(len(spec.names))
    weights[spec.names.index("logit_score")] = 1.0
    weights[spec.names.index("class=<other>")] = -50.0
    return Rescoring(spec, np.zeros(len(spec.names)), np.ones(len(spec.names)), weights, 0.0,
                     Thresholds(0.5, {"person": 0.25}, {STRICT_CAMERA: {"person": 0.99}}), proposal_threshold=0.05)


@pytest.fixture(scope="module")
def rescored_dir(yolov3_tiny_model_dir, tmp_path_factory):
    target = tmp_path_factory.mktemp("models") / "yolov3-tiny-site"
    shutil.copytree(yolov3_tiny_model_dir, target)
    (target / "rescoring.json").write_text(json.dumps(person_only_rescoring().to_json()))
    metadata = json.loads((target / "model.json").read_text())
    (target / "model.json").write_text(json.dumps({**metadata, "name": "yolov3-tiny-site", "version": "1+site",
                                                   "rescoring": "rescoring.json"}))
    return target


@pytest.fixture(scope="module")
def frame(opencv_samples_dir) -> np.ndarray:
    capture = cv2.VideoCapture(str(opencv_samples_dir / "vtest.avi"))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 200)
    ok, image = capture.read()
    assert ok
    return image


@pytest.fixture(scope="module")
def loader():
    return detector_loader("CPU", "f32", 0.25)


def test_a_dir_naming_rescoring_loads_behind_the_stage_at_its_proposal_threshold(loader, rescored_dir):
    model = loader(rescored_dir)
    assert isinstance(model, RescoredDetector)
    assert (model.name, model.version) == ("yolov3-tiny-site", "1+site")
    assert model.base.score_threshold == 0.05


def test_only_people_are_served_as_the_base_at_its_default_threshold_serves_them(
        loader, rescored_dir, yolov3_tiny_model_dir, frame):
    rescored = loader(rescored_dir)
    proposals = rescored.base.detect(frame)
    assert {d.label for d in proposals} - {"person"}, "the frame should propose something else than people"
    served = rescored.detect(frame)
    base_people = [d for d in loader(yolov3_tiny_model_dir).detect(frame) if d.label == "person"]
    assert {d.label for d in served} == {"person"} and len(served) >= 2
    np.testing.assert_allclose([d.box for d in served], [d.box for d in base_people], atol=1e-3)
    assert [d.score for d in served] == pytest.approx([d.score for d in base_people], abs=1e-4)


def test_the_camera_picks_its_thresholds_over_grpc_and_in_the_frame_pipeline(loader, rescored_dir, frame):
    model = loader(rescored_dir)
    server = ModelServer(model)
    image = {"image": ("UINT8", frame)}
    assert len(server.detect(model.name, "", image)[1]["scores"]) >= 2
    assert len(server.detect(model.name, "", image, camera_id=STRICT_CAMERA)[1]["scores"]) == 0

    ok, jpeg = cv2.imencode(".jpg", frame)
    events = [events_pb2.Frame(envelope=new_envelope(f"camera/{camera}", "ingest"), camera_id=camera, sequence=0,
                               width=frame.shape[1], height=frame.shape[0], encoding="jpeg", data=jpeg.tobytes())
              for camera in ("cam-1", STRICT_CAMERA)]
    pipeline = FramePipeline(model)
    try:
        normal, strict = pipeline.run(events)
    finally:
        pipeline.close()
    assert {d.label for d in normal.detections} == {"person"} and len(normal.detections) >= 2
    assert len(strict.detections) == 0
    assert len(normal.embedding) == 64  # the base's embedding still rides along


def test_a_grpc_request_naming_its_camera_gets_that_cameras_thresholds(loader, rescored_dir, frame):
    from protos import inference_pb2 as pb, inference_pb2_grpc
    from services.inference.adapters.grpc_adapter import start_grpc_server
    import grpc

    model = loader(rescored_dir)
    grpc_server, port = start_grpc_server(ModelServer(model), "127.0.0.1", 0, 2, 4 << 20)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 8 << 20)])
    try:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)

        def served(camera: str | None) -> int:
            request = pb.ModelInferRequest(model_name=model.name, id="t")
            request.inputs.append(pb.ModelInferRequest.InferInputTensor(name="image", datatype="UINT8",
                                                                        shape=list(frame.shape)))
            request.raw_input_contents.append(frame.tobytes())
            if camera is not None:
                request.parameters["camera_id"].string_param = camera
            response = stub.ModelInfer(request, timeout=30)
            scores = dict(zip([o.name for o in response.outputs], response.raw_output_contents))["scores"]
            return len(scores) // 4

        assert served(None) >= 2 and served("cam-1") == served(None)
        assert served(STRICT_CAMERA) == 0
    finally:
        channel.close()
        grpc_server.stop(0).wait()
