"""AnnotationTask and AnnotationLabel events as the queue publishes them, for tests of what reads them (exports, the
CLI), offline or on the real stack."""
from __future__ import annotations

from protos import events_pb2

BUCKET = "vigil-annotation"
CAPTURED_AT = 1_800_000_000


def det(label: str, x1, y1, x2, y2, score: float = 0.0) -> events_pb2.Detection:
    return events_pb2.Detection(label=label, score=score, box=events_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))


def task(task_id: str, proposals=(), width=640, height=480, state: str = "open", camera_id: str = "lobby",
         reason: str = "uncertain", priority: float = 0.5, captured_at: int = CAPTURED_AT,
         labels_wanted: int = 1, submission_ids=()) -> events_pb2.AnnotationTask:
    t = events_pb2.AnnotationTask(
        task_id=task_id, camera_id=camera_id, frame_event_id=f"frame-{task_id}", reason=reason,
        reason_detail="top score 0.41 in the band [0.25, 0.60]", proposals=list(proposals), priority=priority,
        model=events_pb2.ModelRef(name="yolov3-tiny", version="1"), state=state, width=width, height=height,
        labels_wanted=labels_wanted, submission_ids=list(submission_ids), schema_version="2",
        frame=events_pb2.ObjectRef(bucket=BUCKET, key=f"images/{task_id}.jpg", sha256="ab" * 32))
    t.captured_at.FromSeconds(captured_at)
    return t


def label(task_id: str, status: str, boxes=(), verdict="labelled", kind="submission", label_id: str | None = None,
          at: float | None = None, agreement: float | None = None) -> events_pb2.AnnotationLabel:
    source = task(task_id)
    event = events_pb2.AnnotationLabel(
        task_id=task_id, annotator="ana", labels=list(boxes), label_id=label_id or f"{task_id}-{status}-{len(boxes)}",
        kind=kind, verdict=verdict, status=status, rejected=verdict != "labelled", camera_id="lobby",
        frame=source.frame, width=640, height=480, captured_at=source.captured_at, schema_version="2",
        model=source.model, frame_event_id=source.frame_event_id, reason="uncertain")
    if at is not None:
        event.envelope.event_time.FromNanoseconds(int(at * 1e9))
    if agreement is not None:
        event.agreement = agreement
    return event


# Labels of four tasks: t1 accepted, then settled again by a reviewer with two boxes (one of a site class);
# t2 accepted as nothing to label; t3 rejected as unusable; t4 only submitted.
LABELS = [
    label("t1", "submitted", [det("person", 10, 20, 50, 120)]),
    label("t1", "accepted", [det("person", 10, 20, 50, 120)]),
    label("t1", "accepted", [det("person", 12, 20, 52, 121.5), det("forklift", 300, 200, 620, 470)], kind="review"),
    label("t2", "accepted", [], verdict="nothing_to_label"),
    label("t3", "rejected", [], verdict="unusable"),
    label("t4", "submitted", [det("car", 0, 0, 100, 100)]),
]
