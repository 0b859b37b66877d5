"""Annotation in the metrics store on the session's real stack: AnnotationTask revisions produced to the compacted
vigil.annotation.tasks and AnnotationLabel events to vigil.annotations land in annotation_tasks and annotations once
each (delivered twice in one batch and replayed later), the named queries answer from them through the query API,
and the dashboard's Annotation panel shows the queue, labels per hour and agreement in headless Chromium."""
from __future__ import annotations

import os
import uuid
import pytest

from libs.common.envelope import new_envelope
from libs.common.topics import ANNOTATION_LABELS, ANNOTATION_TASKS
from protos import events_pb2
from tests.integration.conftest import QUERY_API_TOKEN, query, wait_for
from tests.integration.kafka_tools import produce
from tests.integration.chromium import ARTIFACTS, headless_chromium
from tests.integration.test_metrics_sink import named

pytestmark = pytest.mark.integration

MODEL = events_pb2.ModelRef(name="yolov3-tiny", version="1")
TASKS = 16   # revisions of the five tasks below
LABELS = 6   # five submissions and a review


class Annotations:
    """A camera's annotation work as the annotation service publishes it: every revision of a task carries the
    task's creation envelope, a label's envelope id is its label id."""

    def __init__(self, camera: str) -> None:
        self.camera = camera
        self.created = {}

    def task(self, name: str, state: str, revision: int, wanted: int = 1, holders: tuple[str, ...] = (),
             submissions: int = 0) -> tuple[bytes, bytes]:
        task_id = f"{self.camera}-{name}"
        envelope = self.created.setdefault(task_id, new_envelope(f"camera/{self.camera}", "annotation",
                                                                 event_id=str(uuid.uuid4())))
        task = events_pb2.AnnotationTask(
            envelope=envelope, task_id=task_id, camera_id=self.camera, frame_event_id=str(uuid.uuid4()),
            reason="uncertain", priority=0.5, model=MODEL, state=state, width=768, height=576, labels_wanted=wanted,
            leases=[events_pb2.AnnotationLease(annotator=a, lease_id=str(uuid.uuid4())) for a in holders],
            submission_ids=[str(uuid.uuid4()) for _ in range(submissions)], schema_version="1", revision=revision)
        return task_id.encode(), task.SerializeToString()

    def label(self, name: str, annotator: str, status: str = "submitted", kind: str = "submission",
              reviewer: str = "", agreement: float | None = None) -> tuple[bytes, bytes]:
        task_id, label_id = f"{self.camera}-{name}", str(uuid.uuid4())
        label = events_pb2.AnnotationLabel(
            envelope=new_envelope(f"camera/{self.camera}", "annotation", event_id=label_id), task_id=task_id,
            annotator=annotator, labels=[events_pb2.Detection(label="person", score=1.0,
                                                              box=events_pb2.Box(x1=10, y1=10, x2=60, y2=120))],
            label_id=label_id, kind=kind, verdict="labelled", status=status, camera_id=self.camera, width=768,
            height=576, schema_version="1", reviewer=reviewer, model=MODEL, reason="uncertain")
        if agreement is not None:
            label.agreement = agreement
        return task_id.encode(), label.SerializeToString()


def stored_counts(stack, camera: str) -> tuple[int, int]:
    [row] = query(stack, f"SELECT (SELECT count() FROM annotation_tasks WHERE camera_id = '{camera}') AS tasks, "
                         f"(SELECT count() FROM annotations WHERE camera_id = '{camera}') AS labels")
    return row["tasks"], row["labels"]


@pytest.fixture(scope="module")
def annotated(stack):
    """Five tasks of a camera of their own. a: labelled once and accepted; b: labelled twice, agreeing (0.92),
    accepted; c: labelled twice, disagreeing (0.4), rejected by a reviewer; d: leased; e: leased then released
    (open). The first part is produced twice in one go, and again (a replay) before the second part, which holds
    a message of every task on both topics: once the second part is stored, the replay was read before it."""
    camera = f"annotation-{uuid.uuid4().hex[:8]}"
    work = Annotations(camera)
    first_tasks = [work.task("a", "open", 1), work.task("a", "leased", 2, holders=("ann",)),
                   work.task("b", "open", 1, wanted=2), work.task("b", "leased", 2, wanted=2, holders=("ann",)),
                   work.task("b", "leased", 3, wanted=2, holders=("ann", "bob")),
                   work.task("b", "submitted", 4, wanted=2, holders=("bob",), submissions=1),
                   work.task("c", "open", 1, wanted=2), work.task("c", "submitted", 4, wanted=2, submissions=2),
                   work.task("d", "open", 1), work.task("e", "open", 1), work.task("e", "leased", 2, holders=("ann",))]
    first_labels = [work.label("b", "ann"), work.label("c", "ann"), work.label("c", "bob", agreement=0.4)]
    second_tasks = [work.task("a", "accepted", 3, submissions=1),
                    work.task("b", "accepted", 5, wanted=2, submissions=2),
                    work.task("c", "rejected", 5, wanted=2, submissions=2),
                    work.task("d", "leased", 2, holders=("carol",)), work.task("e", "open", 3)]
    second_labels = [work.label("a", "ann", status="accepted"),
                     work.label("b", "bob", status="accepted", agreement=0.92),
                     work.label("c", "bob", status="rejected", kind="review", reviewer="rita", agreement=0.4)]
    bootstrap = stack.config.kafka_bootstrap
    produce(bootstrap, ANNOTATION_TASKS, first_tasks * 2)
    produce(bootstrap, ANNOTATION_LABELS, first_labels * 2)
    wait_for(lambda: stored_counts(stack, camera) == (len(first_tasks), len(first_labels)), 90,
             what="the first part stored")
    # A task forgotten by the compacted topic (a tombstone): no event, not a dead letter.
    tombstone = f"{camera}-gone".encode()
    produce(bootstrap, ANNOTATION_TASKS, [(tombstone, None)])
    produce(bootstrap, ANNOTATION_TASKS, first_tasks + second_tasks)
    produce(bootstrap, ANNOTATION_LABELS, first_labels + second_labels)
    wait_for(lambda: stored_counts(stack, camera) >= (TASKS, LABELS), 90, what="the second part stored")
    return camera


def test_annotation_tasks_and_labels_from_kafka_are_stored_once_each(stack, annotated):
    assert stored_counts(stack, annotated) == (TASKS, LABELS)
    [row] = query(stack, f"SELECT uniqExact(task_id, revision) AS revisions, "
                         f"(SELECT uniqExact(event_id) FROM annotations WHERE camera_id = '{annotated}') AS labels "
                         f"FROM annotation_tasks WHERE camera_id = '{annotated}'")
    assert (row["revisions"], row["labels"]) == (TASKS, LABELS)
    # Other consumers of these topics (the datasets service takes accepted labels) may refuse these test events;
    # the sink must not.
    assert query(stack, f"SELECT count() AS n FROM dead_letters WHERE message_key LIKE '{annotated}%' "
                        "AND service = 'metrics'") == [{"n": 0}]


def test_the_annotation_queries_answer_through_the_api(stack, annotated):
    queue = {r["state"]: r["tasks"] for r in named(stack, "annotation_queue", camera_id=annotated)}
    assert queue == {"accepted": 2, "rejected": 1, "leased": 1, "open": 1}
    hours = named(stack, "annotation_labels_per_hour", camera_id=annotated)
    # The run may straddle an hour: summed over the hours.
    totals = {k: sum(r[k] for r in hours) for k in ("submissions", "reviews", "accepted", "rejected")}
    assert totals == {"submissions": 5, "reviews": 1, "accepted": 2, "rejected": 1}
    agreement = named(stack, "annotation_agreement", camera_id=annotated)
    assert sum(r["tasks"] for r in agreement) == 2
    assert min(r["min_agreement"] for r in agreement) == 0.4
    if len(agreement) == 1:
        assert agreement[0]["mean_agreement"] == 0.66


def test_the_dashboard_shows_the_annotation_queue_labels_and_agreement(stack, annotated):
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(f"{stack.config.query_api_url}/?token={os.environ[QUERY_API_TOKEN]}")
        page.wait_for_selector(f"#annotation-queue tr[data-camera='{annotated}']", timeout=30_000)
        page.wait_for_function("Number(document.getElementById('annotation-labels').dataset.points) > 0 "
                               "&& Number(document.getElementById('annotation-agreement').dataset.points) > 0",
                               timeout=30_000)
        page.locator("#annotation-panel").screenshot(path=str(ARTIFACTS / "dashboard-annotation.png"))
        row = page.locator(f"#annotation-queue tr[data-camera='{annotated}'] td").all_inner_texts()
        caption = page.inner_text("#annotation-queue-caption")
        error = page.inner_text("#error")
        drawn = page.evaluate("document.querySelectorAll('#annotation-panel .uplot canvas').length")
    assert error == ""
    # camera, open, leased, submitted, accepted, rejected
    assert row == [annotated, "1", "1", "0", "2", "1"], row
    assert "tasks waiting" in caption, caption
    assert drawn == 2, "labels per hour and agreement drawn by uPlot"


def test_the_stacks_annotation_service_tasks_reach_the_queue(stack):
    # The stack's own annotation service opens tasks from the demo camera's results: their revisions on the
    # compacted topic are the queue the panel shows.
    queue = wait_for(lambda: named(stack, "annotation_queue", camera_id=stack.config.camera_id), 180,
                     what="the annotation service's tasks of the stack's camera in annotation_queue")
    assert sum(r["tasks"] for r in queue) >= 1
    assert {r["state"] for r in queue} <= {"open", "leased", "submitted", "accepted", "rejected"}
    [row] = query(stack, f"SELECT count() AS n, uniqExact(task_id, revision) AS revisions FROM annotation_tasks "
                         f"WHERE camera_id = '{stack.config.camera_id}'")
    assert row["n"] == row["revisions"], "a revision stored once"
