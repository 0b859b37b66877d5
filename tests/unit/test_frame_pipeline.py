"""The inference core on the real default model: frame events in, results (or reasons) out, in order."""
import cv2
import numpy as np
import pytest

from libs.common.envelope import new_envelope
from protos import events_pb2
from services.inference.detectors.yolo import YoloDetector
from services.inference.core.frame_pipeline import FramePipeline, InvalidFrame, detection_messages


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


def test_a_frame_twice_the_networks_input_is_decoded_at_half_scale_with_the_same_detections(
        pipeline, footage_frames):
    from libs.common.box_agreement import box_agreement
    from services.inference.core.images import jpeg_reduction

    # 1690x1267 frames: at least twice yolov3-tiny's 416x416, so they are decoded at 845x633.
    large = [cv2.resize(img, (1690, 1267), interpolation=cv2.INTER_CUBIC) for img in footage_frames]
    assert jpeg_reduction((1690, 1267), pipeline.model_for("cam").input_size) == 2
    frames = [frame_event(img, sequence=i) for i, img in enumerate(large)]
    reduced = pipeline.run(frames)
    # The reference: the same JPEGs decoded at full size.
    full_size = [pipeline.model_for("cam").detect(cv2.imdecode(np.frombuffer(f.data, np.uint8), cv2.IMREAD_COLOR))
                 for f in frames]
    assert all((r.width, r.height) == (1690, 1267) for r in reduced)
    kept = matched = 0
    for result, detections in zip(reduced, full_size):
        reference = detection_messages(detections)
        agreement = box_agreement(reference, list(result.detections))
        kept += agreement.same_class_matches  # same label, IoU >= 0.5
        matched += len(reference)
    assert matched > 20 and kept / matched >= 0.95  # the INT8 gate's bar: 95% of the detections kept


def test_only_frames_several_times_the_networks_input_are_decoded_at_a_reduced_scale():
    from services.inference.core.images import jpeg_reduction

    assert jpeg_reduction((1280, 720), (416, 416)) == 1  # 720 < 2 x 416
    assert jpeg_reduction((1920, 1080), (416, 416)) == 2
    assert jpeg_reduction((3840, 2160), (416, 416)) == 4
    assert jpeg_reduction((3840, 2160), None) == 1
