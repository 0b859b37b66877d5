"""The datasets service's label intake (services/datasets/labels_intake.py) on a real SeaweedFS S3 (started for this
module alone), without Kafka: a task's newest accepted label wins among those waiting whatever order they come in;
submissions and rejections are skipped; a label drawn under another schema than the branch's is refused (one schema
version per version); the image is copied once; a requested commit answers with the version, an empty one with
none; a commit that fails keeps the labels waiting."""
from __future__ import annotations

import threading
import time
import uuid

import pytest

from libs.common.envelope import new_envelope
from libs.common.objectstore import ensure_bucket, get_verified
from protos import events_pb2
from services.annotation.task_store import TaskStore
from services.datasets.labels_intake import CommitPolicy, LabelIntake, UnusableLabel
from services.datasets.store import DatasetStore
from tests.integration.annotation_web import frame_jpeg
from tests.integration.infrastructure import object_store

pytestmark = pytest.mark.integration
IMAGES = "vigil-annotation"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with object_store(tmp_path_factory.mktemp("datasets-intake")) as client:
        ensure_bucket(client, IMAGES)
        yield client


def intake_over(s3, policy=CommitPolicy(every_labels=100, every_s=600), bucket=None) -> LabelIntake:
    bucket = bucket or f"datasets-{uuid.uuid4().hex[:8]}"
    ensure_bucket(s3, bucket)
    return LabelIntake(DatasetStore(s3, bucket), lambda ref: get_verified(s3, ref), "site", "main", policy)


def label(s3, task_id: str, at: float, boxes=(("person", 10, 10, 50, 90),), status="accepted", schema="1",
          seed: int = 1) -> events_pb2.AnnotationLabel:
    frame = TaskStore(s3, IMAGES).put_image(frame_jpeg(seed))
    made = events_pb2.AnnotationLabel(
        envelope=new_envelope("camera/cam", "annotation", event_time_ns=int(at * 1e9)), task_id=task_id,
        label_id=str(uuid.uuid4()), status=status, verdict="labelled", camera_id="cam", frame=frame, width=640,
        height=360, schema_version=schema)
    for name, x1, y1, x2, y2 in boxes:
        made.labels.add(label=name, box=events_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))
    made.captured_at.FromSeconds(int(at))
    return made


def test_the_newest_accepted_label_of_a_task_wins_whatever_order_they_are_read_in(s3):
    intake = intake_over(s3)
    now = time.time()
    newer = label(s3, "t1", now, boxes=(("car", 1, 1, 30, 30),))
    older = label(s3, "t1", now - 60)
    intake.take(newer)
    intake.take(older)
    assert intake.take(label(s3, "t2", now, status="submitted")) is None
    assert intake.take(label(s3, "t3", now, status="rejected")) is None
    (version,) = intake.checkpoint(final=True)
    assert [i.item_id for i in version.items] == ["t1"]
    assert version.item("t1").labels[0].label == "car"


def test_a_label_under_another_schema_than_the_branch_is_refused(s3):
    intake = intake_over(s3)
    intake.take(label(s3, "a", time.time(), schema="1"))
    with pytest.raises(UnusableLabel) as refused:
        intake.take(label(s3, "b", time.time(), schema="2"))
    assert refused.value.reason == "schema_version_mismatch"
    intake.checkpoint(final=True)
    again = LabelIntake(intake.store, intake.read_image, "site", "main")  # a restart reads the branch's schema
    with pytest.raises(UnusableLabel):
        again.take(label(s3, "c", time.time(), schema="2"))


def test_one_image_labelled_twice_is_one_blob(s3):
    intake = intake_over(s3)
    intake.take(label(s3, "x", time.time(), seed=5))
    intake.take(label(s3, "y", time.time(), seed=5))
    (version,) = intake.checkpoint(final=True)
    assert version.item("x").blob == version.item("y").blob
    assert len(list(intake.store.stored_blobs())) == 1


def test_a_requested_commit_answers_with_the_version_and_an_empty_one_with_none(s3):
    intake = intake_over(s3)
    intake.take(label(s3, "r1", time.time()))
    assert intake.checkpoint() is None, "1 label of 100, none older than 10 minutes: not due"
    answers = []
    asking = threading.Thread(target=lambda: answers.append(intake.request_commit(10)))
    asking.start()
    while not intake.commit_requested:  # the request is in before the consumer's next checkpoint
        time.sleep(0.01)
    (committed,) = intake.checkpoint()
    asking.join()
    assert answers == [(True, committed)] and committed.item("r1") is not None

    asking = threading.Thread(target=lambda: answers.append(intake.request_commit(10)))
    asking.start()
    while not intake.commit_requested:
        time.sleep(0.01)
    assert intake.checkpoint() == []
    asking.join()
    assert answers[-1] == (True, None)
    assert intake.request_commit(0.1) == (False, None), "no consumer checkpoint: not done"


def test_a_commit_that_fails_keeps_the_labels_waiting(s3):
    intake = intake_over(s3, CommitPolicy(every_labels=1, every_s=600))
    intake.take(label(s3, "f1", time.time()))
    bucket, intake.store.bucket = intake.store.bucket, f"gone-{uuid.uuid4().hex[:8]}"  # the store unreachable
    with pytest.raises(Exception):
        intake.checkpoint()
    assert intake.waiting == 1
    intake.store.bucket = bucket
    (version,) = intake.checkpoint()
    assert version.item("f1") is not None and intake.waiting == 0


def test_labels_read_again_after_their_version_was_committed_give_that_version_to_announce_again(s3):
    """A crash between the commit in S3 and its announcement: after the restart the labels are read again, append
    finds them in the head, and the head is what the service announces (the same event as the lost one)."""
    intake = intake_over(s3)
    taken = label(s3, "k1", time.time())
    intake.take(taken)
    (committed,) = intake.checkpoint(final=True)
    restarted = LabelIntake(intake.store, intake.read_image, "site", "main")
    restarted.take(taken)
    assert restarted.checkpoint(final=True) == [committed]
    assert intake.store.log("site") == [committed]
