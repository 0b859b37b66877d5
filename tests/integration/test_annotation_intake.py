"""The annotation service on the real stack: results from vigil.inference become tasks with their frame's image
(faces blurred by the CenterFace model inference serves), and a flood of uncertain results from one camera makes
no more tasks than the camera's budget."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from libs.common.compacted import CompactedTable
from libs.common.envelope import new_envelope
from libs.common.objectstore import get_verified, object_store_client
from libs.common.settings import ObjectStoreSettings
from libs.common.topics import ANNOTATION_TASKS, FRAMES, INFERENCE
from protos import events_pb2
from libs.common.faces import FaceBlurrer
from services.annotation.selection import RULES
from services.annotation.settings import AnnotationSettings
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import end_offsets, produce

pytestmark = pytest.mark.integration
BUDGET = AnnotationSettings().camera_budget_per_hour


def tasks_of(stack, camera_id: str) -> list[events_pb2.AnnotationTask]:
    table = CompactedTable({"bootstrap.servers": stack.config.kafka_bootstrap}, ANNOTATION_TASKS, "test")
    return [t for t in table.snapshot().values() if t.camera_id == camera_id]


def s3(stack):
    return object_store_client(ObjectStoreSettings(endpoint=f"127.0.0.1:{stack.config.ports.s3}",
                                                   access_key=stack.config.s3_access_key,
                                                   secret_key=stack.config.s3_secret_key))


def frame_and_result(camera_id: str, sequence: int, jpeg: bytes, width: int, height: int,
                     detections: list[events_pb2.Detection]) -> tuple[events_pb2.Frame, events_pb2.InferenceResult]:
    frame = events_pb2.Frame(envelope=new_envelope(f"camera/{camera_id}", "test"), camera_id=camera_id,
                             sequence=sequence, width=width, height=height, encoding="jpeg", data=jpeg)
    result = events_pb2.InferenceResult(
        envelope=new_envelope(f"camera/{camera_id}", "test", event_time_ns=frame.envelope.event_time.ToNanoseconds()),
        camera_id=camera_id, frame_event_id=frame.envelope.event_id, frame_sequence=sequence,
        model=events_pb2.ModelRef(name="yolov3-tiny", version="1"), detections=detections, width=width, height=height)
    return frame, result


def test_a_selected_result_of_the_live_camera_becomes_an_open_task_with_its_frame_stored(stack):
    camera_id = stack.config.camera_id
    (task, *_) = wait_for(lambda: tasks_of(stack, camera_id), 240, what="a task from the demo camera")
    assert task.state in ("open", "leased") and task.reason in RULES and task.reason_detail
    assert task.task_id == task.envelope.event_id and task.revision >= 1
    assert task.labels_wanted in (1, 2) and task.schema_version
    assert task.faces_blurred, "the demo camera did not opt out of blurring"
    image = cv2.imdecode(np.frombuffer(get_verified(s3(stack), task.frame), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (task.height, task.width) == (576, 768)
    assert task.captured_at.seconds > 0 and task.model.name


def test_faces_are_blurred_before_the_image_is_stored(stack):
    from libs.common.cache_dir import default_cache_dir
    from tools.fetch_assets import fetch_opencv_samples

    photo = cv2.imread(str(fetch_opencv_samples(default_cache_dir()) / "messi5.jpg"))
    jpeg = cv2.imencode(".jpg", photo)[1].tobytes()
    faces = FaceBlurrer(f"127.0.0.1:{stack.config.ports.grpc}")
    try:
        assert len(faces.faces(jpeg)) >= 1, "CenterFace finds the face in the photo as sent"
        uncertain = events_pb2.Detection(label="person", score=0.4,
                                         box=events_pb2.Box(x1=180, y1=20, x2=330, y2=340))
        frame, result = frame_and_result("faces-cam", 1, jpeg, photo.shape[1], photo.shape[0], [uncertain])
        produce(stack.config.kafka_bootstrap, FRAMES, [(b"faces-cam", frame.SerializeToString())])
        produce(stack.config.kafka_bootstrap, INFERENCE, [(b"faces-cam", result.SerializeToString())])
        (task,) = wait_for(lambda: tasks_of(stack, "faces-cam"), 120, what="the photo's task")
        assert task.reason == "uncertain" and task.faces_blurred
        stored = get_verified(s3(stack), task.frame)
        assert stored != jpeg
        assert len(faces.faces(stored)) == 0, "no face is found in the stored image"
    finally:
        faces.close()


def test_a_flood_of_uncertain_results_from_one_camera_makes_at_most_its_budget_of_tasks(stack):
    camera_id, count = "flood-cam", 10_000
    rng = np.random.default_rng(7)
    frames, results = [], []
    uncertain = events_pb2.Detection(label="car", score=0.4, box=events_pb2.Box(x1=4, y1=4, x2=40, y2=30))
    for sequence in range(count):
        # Distinct pictures (noise), so that no frame is a near-duplicate of another: only the budget limits.
        jpeg = cv2.imencode(".jpg", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))[1].tobytes()
        frame, result = frame_and_result(camera_id, sequence, jpeg, 64, 48, [uncertain])
        frames.append((camera_id.encode(), frame.SerializeToString()))
        results.append((camera_id.encode(), result.SerializeToString()))
    produce(stack.config.kafka_bootstrap, FRAMES, frames)
    started = time.monotonic()
    produce(stack.config.kafka_bootstrap, INFERENCE, results)
    # The live camera keeps adding results after the flood: the flood is read once the group is past where
    # the topic ended when it was produced.
    flood_end = end_offsets(stack.config.kafka_bootstrap, INFERENCE)

    def consumed_all() -> bool:
        from confluent_kafka import Consumer, TopicPartition
        consumer = Consumer({"bootstrap.servers": stack.config.kafka_bootstrap, "group.id": "vigil-annotation"})
        try:
            committed = consumer.committed([TopicPartition(INFERENCE, p) for p in flood_end], timeout=10)
            # A partition nothing was ever written to has no committed offset (negative): nothing to read there.
            return all(tp.offset >= flood_end[tp.partition] or flood_end[tp.partition] == 0 for tp in committed)
        finally:
            consumer.close()

    try:
        wait_for(consumed_all, 300, interval_s=2, what="the annotation service through the flood")
    except AssertionError:
        print(stack.supervisor.log_tail("annotation", 40))
        raise
    print(f"{count} results read in {time.monotonic() - started:.1f} s")
    made = tasks_of(stack, camera_id)
    assert 1 <= len(made) <= BUDGET
    assert {t.reason for t in made} <= {"uncertain", "audit"}


def test_a_malformed_result_goes_to_the_dead_letter_topic_with_the_reason_and_the_service_carries_on(stack):
    from libs.common.kafka import DLQ_REASON, DLQ_SERVICE
    from libs.common.topics import DLQ
    from tests.integration.kafka_tools import read_range

    bootstrap = stack.config.kafka_bootstrap
    start = end_offsets(bootstrap, DLQ)
    produce(bootstrap, INFERENCE, [(b"poison-cam", b"\xff\x00 not a protobuf \x01")])

    def annotations_letter():
        letters = read_range(bootstrap, DLQ, start, end_offsets(bootstrap, DLQ))
        return [m for m in letters if dict(m.headers() or []).get(DLQ_SERVICE) == b"annotation"]

    (letter,) = wait_for(annotations_letter, 60, what="annotation's dead letter")
    assert dict(letter.headers())[DLQ_REASON] == b"malformed_event"
    assert letter.value() == b"\xff\x00 not a protobuf \x01"
    assert stack.supervisor.running_pid("annotation")
