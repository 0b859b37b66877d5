"""The inference core on the real default model: frame events in, results (or reasons) out, in order."""
import cv2
import numpy as np
import pytest

from libs.common.envelope import new_envelope
from protos import events_pb2
from services.inference.detectors.yolo import YoloDetector
from services.inference.core.frame_pipeline import FramePipeline, InvalidFrame


@pytest.fixture(scope="module")
def pipeline(yolov3_tiny_model_dir):
    return FramePipeline(YoloDetector.load(yolov3_tiny_model_dir))


@pytest.fixture(scope="module")
def footage_frames(opencv_samples_dir):
    capture = cv2.VideoCapture(str(opencv_samples_dir / "vtest.avi"))
    frames = []
    for index in range(0, 240):
        ok, image = capture.read()
        if index % 40 == 0:
            frames.append(image)
    return frames


def frame_event(image, camera_id="cam", sequence=0) -> events_pb2.Frame:
    ok, jpeg = cv2.imencode(".jpg", image)
    return events_pb2.Frame(envelope=new_envelope(f"camera/{camera_id}", "ingest"), camera_id=camera_id,
                            sequence=sequence, width=image.shape[1], height=image.shape[0], encoding="jpeg",
                            data=jpeg.tobytes())


def test_each_frame_gets_a_result_in_order_with_persons(pipeline, footage_frames):
    frames = [frame_event(img, camera_id=f"cam{i % 2}", sequence=i) for i, img in enumerate(footage_frames)]
    results = pipeline.run(frames)
    assert [r.frame_event_id for r in results] == [f.envelope.event_id for f in frames]
    assert [r.frame_sequence for r in results] == list(range(len(frames)))
    assert all(r.envelope.trace_id == f.envelope.trace_id for r, f in zip(results, frames))
    assert sum(1 for r in results for d in r.detections if d.label == "person") >= 2 * len(frames)
    assert all((r.width, r.height) == (768, 576) for r in results)
    assert results[0].model.name == "yolov3-tiny" and results[0].model.precision


def test_batched_results_equal_one_at_a_time_detection(pipeline, footage_frames):
    frame = frame_event(footage_frames[3])
    batched = pipeline.run([frame_event(footage_frames[1]), frame, frame_event(footage_frames[2])])[1]
    alone = pipeline.model_for("").detect(cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_COLOR))
    assert [d.label for d in batched.detections] == [d.label for d in alone]
    assert [round(d.score, 4) for d in batched.detections] == [round(d.score, 4) for d in alone]


def test_a_replayed_frame_yields_the_same_result_id(pipeline, footage_frames):
    frame = frame_event(footage_frames[0])
    assert pipeline.run([frame])[0].envelope.event_id == pipeline.run([frame])[0].envelope.event_id


def test_bad_frames_get_reasons_and_do_not_disturb_good_ones(pipeline, footage_frames):
    not_jpeg = frame_event(footage_frames[0])
    not_jpeg.data = b"definitely not a jpeg"
    empty = frame_event(footage_frames[0])
    empty.ClearField("data")
    no_id = frame_event(footage_frames[0])
    no_id.envelope.event_id = ""
    good = frame_event(footage_frames[1])
    outcomes = pipeline.run([not_jpeg, good, empty, no_id])
    assert [o.reason if isinstance(o, InvalidFrame) else "ok" for o in outcomes] == [
        "undecodable_image", "ok", "empty_payload", "invalid_event"]
    assert outcomes[1].frame_event_id == good.envelope.event_id


def test_oversized_frames_are_refused_before_decoding(yolov3_tiny_model_dir, footage_frames):
    small_limit = FramePipeline(YoloDetector.load(yolov3_tiny_model_dir), max_frame_bytes=1000)
    outcome = small_limit.run([frame_event(footage_frames[0])])[0]
    assert isinstance(outcome, InvalidFrame) and outcome.reason == "oversized_payload"


def test_each_result_carries_the_models_embedding_of_its_frame(pipeline, footage_frames):
    frames = [frame_event(image, sequence=i) for i, image in enumerate(footage_frames[:3])]
    results = pipeline.run(frames)
    detector = pipeline.model_for("")
    for frame, result in zip(frames, results):
        alone = detector.embed(cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_COLOR))
        assert len(result.embedding) == 64
        np.testing.assert_allclose(result.embedding, alone, atol=1e-5)
        assert abs(np.linalg.norm(result.embedding) - 1.0) < 1e-5


def test_a_model_without_embedding_gives_results_without_one(yolov3_tiny_model_dir, footage_frames):
    plain = FramePipeline(YoloDetector.load(yolov3_tiny_model_dir, embeddings=False))
    result = plain.run([frame_event(footage_frames[0])])[0]
    assert result.detections and len(result.embedding) == 0
