"""Annotation in the metrics store: every AnnotationLabel (vigil.annotations) as an annotations row, every revision
of an AnnotationTask (the compacted vigil.annotation.tasks) as an annotation_tasks row, each stored once however
often it is delivered; the named queries of the dashboard's Annotation panel, on the real engine (chdb)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from libs.common.envelope import timestamp_from_ns
from libs.common.kafka import Rejected
from libs.common.topics import ANNOTATION_LABELS, ANNOTATION_TASKS
from protos import events_pb2
from services.metrics.kafka_adapter import SINK_TOPICS, MetricsBatchHandler
from services.metrics.queries import NAMED_QUERIES, bind
from services.metrics.rows import InvalidEvent, annotation_label_row, annotation_task_row
from services.metrics.sink import EventSink
# A migrated store on chdb of this module's own (a module-scoped fixture).
from tests.unit.test_metrics_drift import store  # noqa: F401
from tests.unit.test_metrics_protobuf_ingest import KafkaMessage

# Inside the tables' TTL.
T0 = (datetime.now(timezone.utc) - timedelta(hours=5)).replace(minute=0, second=0, microsecond=0)
WINDOW = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=3)).isoformat()}
MODEL = events_pb2.ModelRef(name="yolov3-tiny", version="3")


def ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1e9)


def envelope(minute: float, event_id: str | None = None) -> events_pb2.Envelope:
    return events_pb2.Envelope(event_id=event_id or str(uuid.uuid4()), source="annotation", producer="annotation",
                               event_time=timestamp_from_ns(ns(T0 + timedelta(minutes=minute))))


def box(label: str, x1: float = 10) -> events_pb2.Detection:
    return events_pb2.Detection(label=label, score=1.0, box=events_pb2.Box(x1=x1, y1=10, x2=x1 + 40, y2=90))


def ms(minute: float) -> int:
    return int((T0 + timedelta(minutes=minute)).timestamp() * 1000)


def task(task_id: str, state: str, revision: int, camera: str = "lobby", wanted: int = 1,
         holders: tuple[str, ...] = (), submissions: int = 0, priority: float = 0.5,
         event_id: str | None = None) -> events_pb2.AnnotationTask:
    """A revision of a task as the annotation service publishes it: every revision carries the envelope the task
    was created with (its id derived from the task id, at minute 0)."""
    return events_pb2.AnnotationTask(
        envelope=envelope(0, event_id or str(uuid.uuid5(uuid.NAMESPACE_URL, task_id))), task_id=task_id, camera_id=camera, frame_event_id=str(uuid.uuid4()),
        reason="uncertain", priority=priority, model=MODEL, state=state, width=768, height=576,
        captured_at=timestamp_from_ns(ns(T0)), labels_wanted=wanted,
        leases=[events_pb2.AnnotationLease(annotator=a, lease_id=str(uuid.uuid4())) for a in holders],
        submission_ids=[str(uuid.uuid4()) for _ in range(submissions)], schema_version="1", revision=revision)


def label(task_id: str, minute: float, kind: str = "submission", status: str = "submitted",
          annotator: str = "ann", reviewer: str = "", classes: tuple[str, ...] = ("person",),
          agreement: float | None = None, camera: str = "lobby", verdict: str = "labelled",
          event_id: str | None = None) -> events_pb2.AnnotationLabel:
    event = events_pb2.AnnotationLabel(
        envelope=envelope(minute, event_id), task_id=task_id, annotator=annotator,
        labels=[box(c, 10 + 50 * i) for i, c in enumerate(classes)], rejected=verdict != "labelled",
        label_id=str(uuid.uuid4()), kind=kind, verdict=verdict, status=status, camera_id=camera, width=768,
        height=576, schema_version="1", reviewer=reviewer, model=MODEL, frame_event_id=str(uuid.uuid4()),
        reason="uncertain")
    if agreement is not None:
        event.agreement = agreement
    return event


def test_a_label_is_one_row_with_the_class_of_each_box_and_its_agreement():
    event = label("t-1", 3, kind="review", status="accepted", reviewer="rita", classes=("person", "car", "person"),
                  agreement=0.67)
    row = dict(zip(("event_id", "task_id", "kind", "camera_id", "frame_event_id", "model_name", "reason",
                    "annotator", "rejected", "labels", "event_time", "label_id", "status", "verdict", "reviewer",
                    "model_version", "box_count", "agreement", "schema_version"), annotation_label_row(event)))
    assert str(row["event_id"]) == event.envelope.event_id
    assert (row["task_id"], row["kind"], row["status"], row["verdict"], row["reviewer"], row["camera_id"]) == (
        "t-1", "review", "accepted", "labelled", "rita", "lobby")
    assert (row["labels"], row["box_count"], row["agreement"]) == (["person", "car", "person"], 3, 0.67)
    assert (row["model_name"], row["model_version"], row["rejected"]) == ("yolov3-tiny", "3", False)
    assert row["event_time"] == int((T0 + timedelta(minutes=3)).timestamp() * 1000)


def test_a_label_of_a_task_labelled_once_has_no_agreement_and_nothing_to_label_has_no_boxes():
    row = annotation_label_row(label("t-1", 0, classes=(), verdict="nothing_to_label"))
    assert (row[8], row[9], row[16], row[17]) == (True, [], 0, None)


def test_a_task_revision_is_identified_by_task_and_revision_not_by_its_envelope():
    first = annotation_task_row(task("t-1", "leased", 2, holders=("ann",)), ms(1))
    # The same revision published again (a replica that lost the compare-and-swap), even under another envelope.
    again = annotation_task_row(task("t-1", "leased", 2, holders=("ann",), event_id=str(uuid.uuid4())), ms(1.5))
    # The next revision keeps the task's envelope: it is another row all the same.
    following = annotation_task_row(task("t-1", "submitted", 3), ms(2))
    assert first[0] == again[0] != following[0]
    assert first[1] == following[1] == str(uuid.uuid5(uuid.NAMESPACE_URL, "t-1"))
    assert first[2:6] == ("t-1", 2, "leased", "lobby") and first[13] == ["ann"]
    # Created at minute 0 (its event time), this revision published at minute 1.
    assert first[-2:] == (ms(0), ms(1))


def test_events_without_a_task_id_or_a_state_are_invalid():
    with pytest.raises(InvalidEvent, match="task_id is empty"):
        annotation_label_row(label("", 0))
    with pytest.raises(InvalidEvent, match="task_id is empty"):
        annotation_task_row(task("", "open", 1), ms(0))
    with pytest.raises(InvalidEvent, match="state is empty"):
        annotation_task_row(task("t-1", "", 1), ms(0))


def handle(store, *messages: KafkaMessage) -> list:
    return MetricsBatchHandler(EventSink(store), "vigil.dlq")(list(messages))


def tasks_message(event: events_pb2.AnnotationTask, minute: float) -> KafkaMessage:
    """The revision as published at `minute` (its Kafka timestamp)."""
    message = KafkaMessage(ANNOTATION_TASKS, event.SerializeToString(), key=event.task_id.encode())
    message._timestamp = ms(minute)
    return message


def labels_message(event: events_pb2.AnnotationLabel) -> KafkaMessage:
    return KafkaMessage(ANNOTATION_LABELS, event.SerializeToString(), key=event.task_id.encode())


@pytest.fixture(scope="module")
def stored(store):
    """lobby: a (labelled once) open → leased → submitted → accepted in the first hour; b (labelled twice) agreed
    at 0.9 in the second hour; c (twice) disagreed at 0.5, then a reviewer accepted it; d open, e leased by ann;
    dock: f open. Every message is delivered twice, the second time in a later batch."""
    a, b, c = "task-a", "task-b", "task-c"
    tasks = [(task(a, "open", 1), 0), (task(a, "leased", 2, holders=("ann",)), 1),
             (task(a, "submitted", 3, submissions=1), 5), (task(a, "accepted", 4, submissions=1), 5.1),
             (task(b, "open", 1, wanted=2), 0), (task(b, "accepted", 5, wanted=2, submissions=2), 70),
             (task(c, "open", 1, wanted=2), 0), (task(c, "submitted", 5, wanted=2, submissions=2), 75),
             (task(c, "accepted", 6, wanted=2, submissions=2), 130),
             (task("task-d", "open", 1, priority=0.9), 2), (task("task-e", "leased", 2, holders=("ann",)), 3),
             (task("task-f", "open", 1, camera="dock"), 4)]
    labels = [label(a, 5, status="accepted", annotator="ann"),
              label(b, 65, annotator="ann"), label(b, 70, annotator="bob", status="accepted", agreement=0.9),
              label(c, 70, annotator="ann"), label(c, 75, annotator="bob", agreement=0.5, classes=("car",)),
              label(c, 130, kind="review", status="accepted", reviewer="rita", annotator="bob", agreement=0.5)]
    messages = [tasks_message(t, minute) for t, minute in tasks] + [labels_message(l) for l in labels]
    assert handle(store, *messages, *messages) == [[]] * (2 * len(messages))
    assert handle(store, *messages) == [[]] * len(messages)
    return tasks, labels


def named(store, name: str, **parameters) -> list[dict]:
    query = NAMED_QUERIES[name]
    answer = store.query_readonly(query.sql, bind(query, {**WINDOW, **parameters}))
    return [dict(zip(answer["columns"], row)) for row in answer["rows"]]


def test_the_sink_reads_both_annotation_topics():
    assert {ANNOTATION_TASKS, ANNOTATION_LABELS} <= set(SINK_TOPICS)


def test_each_label_and_each_task_revision_is_stored_once_however_often_delivered(store, stored):
    tasks, labels = stored
    counts = store.query_readonly(
        "SELECT (SELECT count() FROM annotations), (SELECT uniqExact(event_id) FROM annotations), "
        "(SELECT count() FROM annotation_tasks), (SELECT uniqExact(task_id, revision) FROM annotation_tasks)")
    assert counts["rows"] == [[len(labels), len(labels), len(tasks), len(tasks)]]
    # A revision published again later (by a replica that lost the compare-and-swap), even under another envelope
    # id, is the same row.
    republished = task("task-a", "accepted", 4, submissions=1, event_id=str(uuid.uuid4()))
    assert handle(store, tasks_message(republished, 50)) == [[]]
    assert store.query_readonly("SELECT count() FROM annotation_tasks WHERE task_id = 'task-a'")["rows"] == [[4]]


def test_the_queue_is_each_tasks_latest_state_per_camera(store, stored):
    queue = {(r["camera_id"], r["state"]): r for r in named(store, "annotation_queue", since="", until="")}
    assert {key: r["tasks"] for key, r in queue.items()} == {
        ("dock", "open"): 1, ("lobby", "accepted"): 3, ("lobby", "leased"): 1, ("lobby", "open"): 1}
    assert queue[("lobby", "accepted")]["double_labelled"] == 2
    assert queue[("lobby", "open")]["mean_priority"] == 0.9
    # Created at minute 0 (the envelope every revision keeps); c, the last accepted, at minute 130.
    assert queue[("lobby", "accepted")]["oldest_created"].replace(tzinfo=timezone.utc) == T0
    assert queue[("lobby", "accepted")]["last_change"].replace(tzinfo=timezone.utc) == T0 + timedelta(minutes=130)
    assert [r["state"] for r in named(store, "annotation_queue", since="", until="", camera_id="dock")] == ["open"]
    # In the window: the tasks whose latest state was reached in it (accepted in the third hour: c).
    third_hour = named(store, "annotation_queue", since=(T0 + timedelta(hours=2)).isoformat())
    assert [(r["state"], r["tasks"]) for r in third_hour] == [("accepted", 1)]


def test_the_queue_keeps_the_highest_revision_whatever_order_it_arrives_in(store, stored):
    late = task("task-g", "accepted", 3, camera="gate")
    early = task("task-g", "leased", 2, camera="gate", holders=("ann",))
    assert handle(store, tasks_message(late, 20), tasks_message(early, 10)) == [[], []]
    assert [(r["state"], r["tasks"]) for r in named(store, "annotation_queue", since="", until="",
                                                      camera_id="gate")] == [("accepted", 1)]


def test_labels_per_hour_count_submissions_reviews_and_the_tasks_accepted(store, stored):
    hours = named(store, "annotation_labels_per_hour")
    assert [(r["hour"].replace(tzinfo=timezone.utc), r["submissions"], r["reviews"], r["accepted"], r["rejected"],
             r["annotators"]) for r in hours] == [
        (T0, 1, 0, 1, 0, 1), (T0 + timedelta(hours=1), 4, 0, 1, 0, 2), (T0 + timedelta(hours=2), 0, 1, 1, 0, 0)]
    assert named(store, "annotation_labels_per_hour", camera_id="dock") == []


def test_agreement_is_per_double_labelled_task_counted_once_when_first_known(store, stored):
    hours = named(store, "annotation_agreement")
    # b (0.9) and c (0.5, on its second submission and again on its review) are known in the second hour.
    assert [(r["hour"].replace(tzinfo=timezone.utc), r["tasks"], r["mean_agreement"], r["min_agreement"])
            for r in hours] == [(T0 + timedelta(hours=1), 2, 0.7, 0.5)]


def test_bad_annotation_events_are_rejected_and_tombstones_skipped(store):
    outcomes = handle(store, labels_message(label("", 0)), tasks_message(task("task-z", "", 1), 0),
                      KafkaMessage(ANNOTATION_TASKS, None, key=b"task-a"),
                      KafkaMessage(ANNOTATION_LABELS, b"\xff\xfe not a protobuf"))
    assert [o.reason if isinstance(o, Rejected) else o for o in outcomes] == [
        "invalid_event", "invalid_event", [], "malformed_event"]
    assert "task_id is empty" in outcomes[0].detail and "state is empty" in outcomes[1].detail
