"""The scripted annotator on the real stack: frames of the dusk camera's footage queued as tasks (one wanting two
labels, one a person labelled wrongly first), labelled only through the annotation service's HTTP API with its
users' tokens, and their labels on vigil.annotations accepted with the reference's boxes (a reviewer settling the
task the person got wrong)."""
from __future__ import annotations

import threading
import uuid

import cv2
import pytest

from cli.annotations import BUCKET, stack_s3_client
from cli.demo.annotator import AnnotationClient, Credentials, run_annotator, scripted_users
from cli.demo.reference import Box, Reference, agreement, dusk_frame_pairs
from libs.common.topics import ANNOTATION_LABELS, ANNOTATION_TASKS
from protos import events_pb2
from services.annotation.queue import in_double_label_share
from services.annotation.schemas import SchemaStore
from services.annotation.task_store import AnnotationQueue
from services.annotation.web.users import UserStore
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import decodable, end_offsets, read_range

pytestmark = pytest.mark.integration
SHARE = 0.5   # the test's queue puts a task in the double-label share by this coin (queue.in_double_label_share)
# Above every selection rule's priority (at most 6): the test's tasks come before the live camera's.
PRIORITY = 100.0


def task_id(double: bool) -> str:
    while True:
        candidate = str(uuid.uuid4())
        if in_double_label_share(candidate, SHARE) == double:
            return candidate


def new_task(jpeg: bytes, width: int, height: int, priority: float, double: bool, camera_id: str,
             schema_version: str) -> events_pb2.AnnotationTask:
    task = events_pb2.AnnotationTask(
        task_id=task_id(double), camera_id=camera_id, frame_event_id=str(uuid.uuid4()), reason="drift",
        reason_detail="drift alert raised on the camera", priority=priority, width=width, height=height,
        model=events_pb2.ModelRef(name="yolov3-tiny", version="1"), schema_version=schema_version)
    task.captured_at.GetCurrentTime()
    return task


@pytest.fixture(scope="module")
def queued(stack):
    """Seven tasks in the stack's queue, created by a replica of the queue of this test's own (the service follows
    the compacted topic), highest priority first: two dusk frames wanting two labels, four wanting one, and a crop of
    the empty street wanting one. Returns [(task, jpeg)] in that order."""
    s3 = stack_s3_client(stack)
    schemas = SchemaStore(s3, BUCKET)
    version = wait_for(lambda: schemas.current(), 60, what="the service's label schema").version
    camera_id = f"dusk-{uuid.uuid4().hex[:6]}"
    frames = [dark for _index, _filmed, dark in dusk_frame_pairs(stack.paths.cache, step=120)][:6]
    empty = frames[0][0:160, 256:512]  # the top of the street at frame 0: nobody there
    images = [(frames[0], True), (frames[1], True)] + [(frame, False) for frame in frames[2:]] + [(empty, False)]
    queue = AnnotationQueue(s3, BUCKET, {"bootstrap.servers": stack.config.kafka_bootstrap},
                            double_label_share=SHARE, schemas=schemas, client_id=f"test-{camera_id}",
                            tasks_topic=ANNOTATION_TASKS, labels_topic=ANNOTATION_LABELS, reconcile_s=0).start()
    made = []
    try:
        for position, (image, double) in enumerate(images):
            jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
            task = new_task(jpeg, image.shape[1], image.shape[0], PRIORITY - position, double, camera_id, version)
            assert queue.create(task, jpeg)
            made.append((task, jpeg))
    finally:
        queue.close()
    return made


def labels_of(stack, task_ids: set[str]) -> list[events_pb2.AnnotationLabel]:
    bootstrap = stack.config.kafka_bootstrap
    messages = read_range(bootstrap, ANNOTATION_LABELS, None, end_offsets(bootstrap, ANNOTATION_LABELS))
    return [label for label in decodable(events_pb2.AnnotationLabel, messages) if label.task_id in task_ids]


def test_the_scripted_annotator_labels_queued_frames_through_the_api_and_they_are_accepted(stack, queued):
    users = UserStore(stack_s3_client(stack), BUCKET)
    run = uuid.uuid4().hex[:6]
    credentials = scripted_users(users, names=(f"auto-{run}", f"auto-review-{run}"))
    person = Credentials(f"person-{run}", users.add(f"person-{run}", "annotator", by="test"))
    url = f"http://127.0.0.1:{stack.config.ports.annotation_ui}"
    reference = Reference.load()
    answers = {task.task_id: reference.boxes_of_jpeg(jpeg) for task, jpeg in queued}
    ids = [task.task_id for task, _jpeg in queued]
    contested, empty = ids[0], ids[-1]
    assert answers[empty] == [] and all(answers[tid] for tid in ids[:-1])

    # A person takes the first task (it wants two labels) and draws one wrong box: the annotator's label will
    # disagree with theirs, so the task waits for a reviewer.
    stop = threading.Event()
    hand = AnnotationClient(url, person)
    hand.sign_in(30, stop)
    wait_for(lambda: all(hand.call("GET", f"/api/tasks/{tid}")[0] == 200 for tid in ids), 30,
             what="the tasks in the service")
    leased = hand.next_task()
    assert leased["task_id"] == contested and leased["labels_wanted"] == 2
    status, label = hand.submit(leased, "labelled", [{"label": "car", "x1": 10, "y1": 10, "x2": 90, "y2": 70}])
    assert status == 200 and label["status"] == "submitted"

    seen: list[tuple[dict, dict]] = []
    timer = threading.Timer(240, stop.set)  # whatever happens, the run ends
    timer.start()
    try:
        # 1 + 2 + 4 + 1 submissions: the second label of the contested task, both of the other double one, the rest.
        stats = run_annotator(url, credentials, stop, reference, max_tasks=8,
                              on_label=lambda task, label: seen.append((task, label)))
    finally:
        timer.cancel()
    assert not stop.is_set(), "the run timed out"
    assert stats.failed == [], stats.failed
    assert (stats.submitted, stats.nothing_to_label, stats.reviewed) == (8, 1, 1), stats.as_dict()
    assert {task["task_id"] for task, _label in seen} == set(ids), "the test's tasks came first"

    def settled() -> dict[str, events_pb2.AnnotationLabel]:
        accepted = {label.task_id: label for label in labels_of(stack, set(ids)) if label.status == "accepted"}
        return accepted if len(accepted) == len(ids) else {}

    accepted = wait_for(settled, 30, what="an accepted label of every task on vigil.annotations")
    for tid in ids:
        label = accepted[tid]
        measured = agreement(answers[tid], [Box(d.label, d.box.x1, d.box.y1, d.box.x2, d.box.y2, 1.0)
                                            for d in label.labels])
        assert measured.f1 == 1.0, (tid, measured)
        assert label.verdict == ("nothing_to_label" if tid == empty else "labelled")
        assert label.annotator in {c.name for c in credentials}
        # What the datasets service needs of an accepted label to make it an item (labels_intake.label_problem).
        assert label.frame.bucket == BUCKET and label.frame.key and (label.width, label.height) != (0, 0)
    assert accepted[contested].kind == "review" and accepted[contested].reviewer == credentials[1].name
    assert accepted[ids[1]].kind == "submission" and accepted[ids[1]].agreement == pytest.approx(1.0)
    person_labels = [label for label in labels_of(stack, {contested}) if label.annotator == person.name]
    assert [label.status for label in person_labels] == ["submitted"], "the person's wrong box was not taken"
