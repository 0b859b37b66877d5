"""The annotation queue's state machine and the in-memory index a replica leases from. Pure: no Kafka, no S3 (the
durable side, and the `AnnotationQueue` facade tying both together, are in task_store.py).

Rules (issue #11, coord/ANNOTATION.md "Rules decided"):
- Lifecycle: open -> leased -> submitted -> accepted | rejected. Every transition returns the next AnnotationTask
  with `revision` + 1 (a reader keeps the highest) and the AnnotationLabel events it makes.
- A lease holds a task for one annotator until `expires_at`. An expired lease returns the task to the queue without
  a write (the index serves it again once every lease on it has lapsed); it stays on the task until someone else
  leases it, so its holder may still submit late (below).
- An annotator holds at most one lease per task; a task wanting N labels takes at most N annotators at once
  (live leases plus submissions), each of them a different person. A task in the double-label share (N = 2) stays
  leasable by a second annotator while the first holds it or has submitted.
- Submitting twice under one lease stores one label: label_id = uuid5(task_id, lease_id); the second call returns
  the first label, whatever it carries.
- Late submission (the lease expired): accepted when the lease is still on the task, i.e. nobody leased the task
  after it lapsed (a new lease drops the lapsed ones) and no one else holds or has given the label it was for;
  otherwise LeaseLost (HTTP 409) and nothing is stored. Released leases are gone: a submission under one is lost.
- Acceptance: a task wanting one label is settled by its submission: accepted, or rejected when the verdict is
  "unusable". A task wanting two is settled when the second submission agrees with the first (same verdict and,
  for boxes, IoU-matched F1 >= 0.8 with classes agreeing): the second submission's label carries the status
  (accepted, or rejected when both say "unusable") and the agreement. Otherwise the task waits in "submitted" for a
  reviewer (`disagreements`), whose review label settles it: accept one submission's label, or boxes the reviewer
  gives, or reject (verdict "unusable"). Exactly one label of a task has status accepted or rejected: datasets take
  the accepted one.
- Serving: an annotator holds one task at a time (asking again returns the task they hold); otherwise the
  highest-priority task they may lease (open, every lease lapsed, or wanting a second label from someone else).
  TaskIndex answers from heaps in O(log n) per call, not a scan of the queue.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from libs.common.envelope import new_envelope
from protos import events_pb2
from libs.common.box_agreement import box_agreement

OPEN, LEASED, SUBMITTED, ACCEPTED, REJECTED = "open", "leased", "submitted", "accepted", "rejected"
STATES = (OPEN, LEASED, SUBMITTED, ACCEPTED, REJECTED)
SETTLED = frozenset({ACCEPTED, REJECTED})
VERDICTS = ("labelled", "nothing_to_label", "unusable")
DECISIONS = ("accept", "reject")
SUBMISSION, REVIEW = "submission", "review"
# Two labels of one frame agree when their IoU-matched F1 reaches this and their classes agree.
MIN_AGREEMENT_F1 = 0.8
# Namespace of label ids for task ids that are not UUIDs (imported tasks may carry any id).
_LABEL_NAMESPACE = uuid.UUID("9f6c3d52-0a4e-4d8e-b7a1-2c6f0e5d8b13")


class LeaseLost(Exception):
    """409: the lease named is gone (expired and taken by someone else, released, or not the caller's), or the
    task was settled meanwhile. Nothing was stored."""


class SubmissionRefused(Exception):
    """422: the submission breaks the label schema's rules; `violations` names every one."""

    def __init__(self, violations: Sequence[str]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(self.violations))


class NotLeasable(Exception):
    """The task cannot be leased by this annotator now (settled, full, or theirs already)."""


class TaskSettled(Exception):
    """409: the task is already accepted or rejected (a second, different review)."""


class UnknownTask(KeyError):
    """404: no task has this id."""


class LabelRules(Protocol):
    """What a submission is checked against (schemas.LabelSchema)."""

    def violations(self, verdict: str, boxes: list[events_pb2.Detection], width: int, height: int) -> list[str]: ...


@dataclass(frozen=True)
class Transition:
    """`task`: the task after the transition (the same object when nothing changed); `labels`: the label events it
    makes (to store and publish); `label`: the label the caller asked for (a submission or review, new or the one
    stored before)."""
    task: events_pb2.AnnotationTask
    labels: tuple[events_pb2.AnnotationLabel, ...] = ()
    label: events_pb2.AnnotationLabel | None = None
    changed: bool = True


# --- small helpers ------------------------------------------------------------------------------------------------


def seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def timestamp(at: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(at * 1e9))
    return ts


def _namespace(task_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(task_id)
    except ValueError:
        return uuid.uuid5(_LABEL_NAMESPACE, task_id)


def label_id_of(task_id: str, lease_id: str) -> str:
    """The id of the label submitted under a lease: a pure function, so a second submission finds the first."""
    return str(uuid.uuid5(_namespace(task_id), lease_id))


def review_label_id(task_id: str) -> str:
    return str(uuid.uuid5(_namespace(task_id), "review"))


def in_double_label_share(task_id: str, share: float) -> bool:
    """A stable coin: the same task id always lands on the same side."""
    return uuid.uuid5(_LABEL_NAMESPACE, f"double/{task_id}").int % 10_000 < share * 10_000


def _submitted(task: events_pb2.AnnotationTask, lease: events_pb2.AnnotationLease) -> bool:
    return label_id_of(task.task_id, lease.lease_id) in task.submission_ids


def live_leases(task: events_pb2.AnnotationTask, now: float) -> list[events_pb2.AnnotationLease]:
    """Leases not expired and not yet used for a submission."""
    if not task.leases:
        return []
    return [lease for lease in task.leases if seconds(lease.expires_at) > now and not _submitted(task, lease)]


def submitters(task: events_pb2.AnnotationTask) -> set[str]:
    return {lease.annotator for lease in task.leases if _submitted(task, lease)}


def lease_of(task: events_pb2.AnnotationTask, annotator: str, now: float) -> events_pb2.AnnotationLease | None:
    """The annotator's live lease on the task, if any."""
    return next((lease for lease in live_leases(task, now) if lease.annotator == annotator), None)


def wants_labels(task: events_pb2.AnnotationTask) -> bool:
    return task.state not in SETTLED and len(task.submission_ids) < max(task.labels_wanted, 1)


def has_room(task: events_pb2.AnnotationTask, now: float) -> bool:
    """Someone (not yet on it) could lease the task now."""
    return wants_labels(task) and len(task.submission_ids) + len(live_leases(task, now)) < max(task.labels_wanted, 1)


def awaiting_review(task: events_pb2.AnnotationTask) -> bool:
    """Every label wanted is in and they disagree: a reviewer settles it."""
    return task.state == SUBMITTED and len(task.submission_ids) >= max(task.labels_wanted, 1)


def can_lease(task: events_pb2.AnnotationTask, annotator: str, now: float) -> bool:
    if not has_room(task, now):
        return False
    return all(lease.annotator != annotator for lease in live_leases(task, now)) and \
        annotator not in submitters(task)


def effective_state(task: events_pb2.AnnotationTask, now: float) -> str:
    """The task's state as of `now`: a "leased" task whose leases have all lapsed is back in the queue ("open", or
    "submitted" when it has a first label and waits for a second)."""
    if task.state in SETTLED or awaiting_review(task):
        return task.state
    if live_leases(task, now):
        return LEASED
    return SUBMITTED if task.submission_ids else OPEN


def _next(task: events_pb2.AnnotationTask) -> events_pb2.AnnotationTask:
    nxt = events_pb2.AnnotationTask()
    nxt.CopyFrom(task)
    nxt.revision = task.revision + 1
    return nxt


# --- transitions --------------------------------------------------------------------------------------------------


def opened(task: events_pb2.AnnotationTask, double_label_share: float = 0.0) -> events_pb2.AnnotationTask:
    """A new task as the queue stores it: open, revision 1, no leases or submissions; `labels_wanted` as given, or
    2 for the double-label share of task ids when not given."""
    new = events_pb2.AnnotationTask()
    new.CopyFrom(task)
    if not new.task_id:
        raise ValueError("a task needs a task_id")
    new.state = OPEN
    new.revision = 1
    del new.leases[:]
    del new.submission_ids[:]
    if not new.labels_wanted:
        new.labels_wanted = 2 if in_double_label_share(new.task_id, double_label_share) else 1
    return new


def lease(task: events_pb2.AnnotationTask, annotator: str, now: float, lease_s: float,
          lease_id: str | None = None) -> Transition:
    """Leases the task to `annotator` until now + lease_s. Lapsed leases nobody used are dropped (their holders
    lose the late-submission right: someone else leased since). NotLeasable when the task is settled, full, or the
    annotator holds or has labelled it."""
    if not annotator:
        raise ValueError("an annotator is needed")
    if not can_lease(task, annotator, now):
        raise NotLeasable(f"task {task.task_id} cannot be leased by {annotator} now (state {task.state})")
    nxt = _next(task)
    keep = [lease for lease in task.leases if seconds(lease.expires_at) > now or _submitted(task, lease)]
    del nxt.leases[:]
    nxt.leases.extend(keep)
    nxt.leases.append(events_pb2.AnnotationLease(annotator=annotator, lease_id=lease_id or str(uuid.uuid4()),
                                                 expires_at=timestamp(now + lease_s)))
    nxt.state = LEASED
    return Transition(nxt)


def release(task: events_pb2.AnnotationTask, lease_id: str, annotator: str, now: float) -> Transition:
    """The annotator gives the task back before the lease ends. Releasing a lease that is no longer on the task
    changes nothing; LeaseLost when it is someone else's, or was used for a submission."""
    found = next((lease for lease in task.leases if lease.lease_id == lease_id), None)
    if found is None or task.state in SETTLED:
        return Transition(task, changed=False)
    if found.annotator != annotator:
        raise LeaseLost(f"lease {lease_id} is not {annotator}'s")
    if _submitted(task, found):
        raise LeaseLost(f"lease {lease_id} was used for a submission: it cannot be released")
    nxt = _next(task)
    del nxt.leases[:]
    nxt.leases.extend(lease for lease in task.leases if lease.lease_id != lease_id)
    if nxt.state not in SETTLED:
        nxt.state = effective_state(nxt, now)
    return Transition(nxt)


def expire(task: events_pb2.AnnotationTask, now: float) -> Transition:
    """Records that every lease lapsed (the state the index already assumes): leases stay, for late submissions."""
    state = effective_state(task, now)
    if state == task.state:
        return Transition(task, changed=False)
    nxt = _next(task)
    nxt.state = state
    return Transition(nxt)


def _label(task: events_pb2.AnnotationTask, label_id: str, annotator: str, kind: str, verdict: str,
           boxes: Sequence[events_pb2.Detection], status: str, now: float,
           reviewer: str = "", agreement: float | None = None) -> events_pb2.AnnotationLabel:
    envelope = new_envelope(f"camera/{task.camera_id}" if task.camera_id else "annotation", "annotation",
                            event_time_ns=int(now * 1e9), event_id=label_id,
                            trace_id=task.envelope.trace_id or None)
    label = events_pb2.AnnotationLabel(
        envelope=envelope, task_id=task.task_id, annotator=annotator, labels=list(boxes),
        rejected=verdict != "labelled", label_id=label_id, kind=kind, verdict=verdict, status=status,
        camera_id=task.camera_id, frame=task.frame, width=task.width, height=task.height,
        schema_version=task.schema_version, reviewer=reviewer, model=task.model,
        frame_event_id=task.frame_event_id, reason=task.reason)
    if task.HasField("captured_at"):
        label.captured_at.CopyFrom(task.captured_at)
    if agreement is not None:
        label.agreement = agreement
    return label


def agreement_of(a: events_pb2.AnnotationLabel, b: events_pb2.AnnotationLabel) -> tuple[bool, float]:
    """Whether two submissions agree, and their IoU-matched F1 (0 when the verdicts differ and neither has boxes)."""
    if a.verdict != b.verdict:
        boxed = a.verdict == "labelled" or b.verdict == "labelled"
        return False, box_agreement(list(a.labels), list(b.labels)).f1 if boxed else 0.0
    if a.verdict != "labelled":
        return True, 1.0
    measured = box_agreement(list(a.labels), list(b.labels))
    return measured.agrees(MIN_AGREEMENT_F1), measured.f1


def _verdict_violations(verdict: str, boxes: Sequence[events_pb2.Detection]) -> list[str]:
    if verdict not in VERDICTS:
        return [f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}"]
    if verdict != "labelled" and boxes:
        return [f"verdict {verdict!r} takes no boxes, got {len(boxes)}"]
    return []


def submit(task: events_pb2.AnnotationTask, labels: Sequence[events_pb2.AnnotationLabel], lease_id: str,
           annotator: str, verdict: str, boxes: Sequence[events_pb2.Detection], now: float,
           rules: LabelRules | None = None) -> Transition:
    """The annotator's answer under `lease_id`. `labels`: the task's labels stored so far. Idempotent per lease;
    LeaseLost or SubmissionRefused leave everything as it was (see the module docstring for the rules)."""
    label_id = label_id_of(task.task_id, lease_id)
    if label_id in task.submission_ids:
        stored = next((label for label in labels if label.label_id == label_id), None)
        if stored is None:
            raise RuntimeError(f"task {task.task_id} names label {label_id} but it is not stored")
        if stored.annotator != annotator:
            raise LeaseLost(f"lease {lease_id} is not {annotator}'s")
        return Transition(task, label=stored, changed=False)
    held = next((lease for lease in task.leases if lease.lease_id == lease_id), None)
    if held is None:
        raise LeaseLost(f"lease {lease_id} is no longer on task {task.task_id}: it was released, or it lapsed and "
                        "someone else leased the task since")
    if held.annotator != annotator:
        raise LeaseLost(f"lease {lease_id} is not {annotator}'s")
    if task.state in SETTLED:
        raise LeaseLost(f"task {task.task_id} was {task.state} meanwhile")
    if annotator in submitters(task):
        raise LeaseLost(f"{annotator} has already labelled task {task.task_id}")
    others = [lease for lease in live_leases(task, now) if lease.lease_id != lease_id]
    if len(task.submission_ids) + len(others) >= max(task.labels_wanted, 1):
        raise LeaseLost(f"lease {lease_id} lapsed and the task's label is held or given by someone else")
    violations = _verdict_violations(verdict, boxes)
    if rules is not None:
        violations += [v for v in rules.violations(verdict, list(boxes), task.width, task.height)
                       if v not in violations]
    if violations:
        raise SubmissionRefused(violations)
    nxt = _next(task)
    nxt.submission_ids.append(label_id)
    wanted = max(task.labels_wanted, 1)
    status, agreement = SUBMITTED, None
    if wanted == 1:
        status = REJECTED if verdict == "unusable" else ACCEPTED
    elif len(nxt.submission_ids) >= wanted:
        first = next((label for label in labels if label.label_id in task.submission_ids
                      and label.kind == SUBMISSION), None)
        if first is None:
            raise RuntimeError(f"task {task.task_id}: the first submission is not stored")
        mine = _label(task, label_id, annotator, SUBMISSION, verdict, boxes, SUBMITTED, now)
        agree, agreement = agreement_of(first, mine)
        if agree:
            status = REJECTED if verdict == "unusable" else ACCEPTED
    label = _label(task, label_id, annotator, SUBMISSION, verdict, boxes, status, now, agreement=agreement)
    nxt.state = status if status in SETTLED else effective_state(nxt, now)
    return Transition(nxt, (label,), label)


def review(task: events_pb2.AnnotationTask, labels: Sequence[events_pb2.AnnotationLabel], reviewer: str,
           decision: str, now: float, label_id: str | None = None,
           boxes: Sequence[events_pb2.Detection] | None = None, rules: LabelRules | None = None) -> Transition:
    """A reviewer settles a submitted task: "accept" one submission (`label_id`) or the `boxes` given (none: nothing
    to label), or "reject" it. The same review again returns the first; a different one on a settled task raises
    TaskSettled."""
    if decision not in DECISIONS:
        raise SubmissionRefused([f"decision {decision!r} is not one of {', '.join(DECISIONS)}"])
    review_id = review_label_id(task.task_id)
    if task.state in SETTLED:
        done = next((label for label in labels if label.label_id == review_id), None)
        if done is not None and done.reviewer == reviewer and (done.status == ACCEPTED) == (decision == "accept"):
            return Transition(task, label=done, changed=False)
        raise TaskSettled(f"task {task.task_id} is already {task.state}")
    if not task.submission_ids:
        raise NotLeasable(f"task {task.task_id} has no submission to review")
    submissions = [label for label in labels if label.label_id in task.submission_ids]
    agreement = next((label.agreement for label in submissions if label.HasField("agreement")), None)
    if decision == "reject":
        label = _label(task, review_id, reviewer, REVIEW, "unusable", (), REJECTED, now, reviewer, agreement)
    elif label_id:
        chosen = next((label for label in submissions if label.label_id == label_id), None)
        if chosen is None:
            raise SubmissionRefused([f"label {label_id} is not a submission of task {task.task_id}"])
        status = REJECTED if chosen.verdict == "unusable" else ACCEPTED
        label = _label(task, review_id, chosen.annotator, REVIEW, chosen.verdict, chosen.labels, status, now,
                       reviewer, agreement)
    elif boxes is not None:
        verdict = "labelled" if boxes else "nothing_to_label"
        violations = rules.violations(verdict, list(boxes), task.width, task.height) if rules else []
        if violations:
            raise SubmissionRefused(violations)
        label = _label(task, review_id, reviewer, REVIEW, verdict, boxes, ACCEPTED, now, reviewer, agreement)
    else:
        raise SubmissionRefused(["accept needs the label_id of a submission, or boxes"])
    nxt = _next(task)
    nxt.state = label.status
    return Transition(nxt, (label,), label)


# --- the index a replica leases from ------------------------------------------------------------------------------


@dataclass
class _Slot:
    task: events_pb2.AnnotationTask
    scheduled: bool = False  # an entry for this revision is on a heap


@dataclass
class TaskIndex:
    """Every task by id (the highest revision seen wins), and the ones to serve: a heap of tasks someone could lease
    now, by priority (highest first, then oldest), and a heap of leased tasks by when their leases lapse. Entries
    are invalidated by revision, not removed, so a put and a take each cost O(log n)."""
    _tasks: dict[str, events_pb2.AnnotationTask] = field(default_factory=dict)
    _ready: list[tuple[float, int, str, int]] = field(default_factory=list)   # (-priority, seq, id, revision)
    _waiting: list[tuple[float, int, str, int]] = field(default_factory=list)  # (lapses at, seq, id, revision)
    _holders: dict[str, set[str]] = field(default_factory=dict)   # annotator -> ids of tasks they have a lease on
    _review: set[str] = field(default_factory=set)
    _seq: itertools.count = field(default_factory=itertools.count)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __len__(self) -> int:
        return len(self._tasks)

    def put(self, task: events_pb2.AnnotationTask, now: float | None = None) -> bool:
        """Keeps the task if it is newer than the one held; True when it was."""
        with self._lock:
            held = self._tasks.get(task.task_id)
            if held is not None and held.revision >= task.revision:
                return False
            if held is not None:
                for lease in held.leases:
                    self._holders.get(lease.annotator, set()).discard(task.task_id)
            self._tasks[task.task_id] = task
            if task.state not in SETTLED:
                for lease in task.leases:
                    if not _submitted(task, lease):
                        self._holders.setdefault(lease.annotator, set()).add(task.task_id)
            if awaiting_review(task):
                self._review.add(task.task_id)
            else:
                self._review.discard(task.task_id)
            now = time.time() if now is None else now
            self._schedule(task, now)
            if len(self._ready) + len(self._waiting) > 2 * len(self._tasks) + 1024:
                self._rebuild(now)
            return True

    def _rebuild(self, now: float) -> None:
        """Drops the entries of revisions superseded (other replicas' transitions leave them behind)."""
        self._ready, self._waiting = [], []
        for task in self._tasks.values():
            self._schedule(task, now)

    def remove(self, task_id: str) -> None:
        with self._lock:
            held = self._tasks.pop(task_id, None)
            if held is not None:
                for lease in held.leases:
                    self._holders.get(lease.annotator, set()).discard(task_id)
            self._review.discard(task_id)

    def _schedule(self, task: events_pb2.AnnotationTask, now: float) -> None:
        if not wants_labels(task):
            return
        if has_room(task, now):
            heapq.heappush(self._ready, (-task.priority, next(self._seq), task.task_id, task.revision))
        else:
            lapse = min(seconds(lease.expires_at) for lease in live_leases(task, now))
            heapq.heappush(self._waiting, (lapse, next(self._seq), task.task_id, task.revision))

    def get(self, task_id: str) -> events_pb2.AnnotationTask | None:
        return self._tasks.get(task_id)

    def held_by(self, annotator: str, now: float) -> events_pb2.AnnotationTask | None:
        """The task the annotator holds a live lease on (the one leased last when several)."""
        with self._lock:
            best = None
            for task_id in self._holders.get(annotator, ()):
                task = self._tasks.get(task_id)
                found = task is not None and task.state not in SETTLED and lease_of(task, annotator, now)
                if found and (best is None or seconds(found.expires_at) > best[0]):
                    best = (seconds(found.expires_at), task)
            return None if best is None else best[1]

    def take(self, annotator: str, now: float) -> events_pb2.AnnotationTask | None:
        """Removes and returns the highest-priority task `annotator` may lease now (None when there is none). The
        caller leases it, or hands it back with `put_back`; a put of its next revision schedules it again."""
        with self._lock:
            while self._waiting and self._waiting[0][0] <= now:
                _, _, task_id, revision = heapq.heappop(self._waiting)
                task = self._tasks.get(task_id)
                if task is not None and task.revision == revision:
                    self._schedule(task, now)
            skipped = []
            try:
                while self._ready:
                    entry = heapq.heappop(self._ready)
                    task = self._tasks.get(entry[2])
                    if task is None or task.revision != entry[3]:
                        continue  # stale: a newer revision was scheduled on its own
                    if not has_room(task, now):
                        self._schedule(task, now)
                        continue
                    if not can_lease(task, annotator, now):
                        skipped.append(entry)  # someone else may lease it (a second label)
                        continue
                    return task
                return None
            finally:
                for entry in skipped:
                    heapq.heappush(self._ready, entry)

    def put_back(self, task: events_pb2.AnnotationTask, now: float | None = None) -> None:
        """A task taken but not leased (the lease failed for a passing reason): served again."""
        with self._lock:
            if self._tasks.get(task.task_id) is task:
                self._schedule(task, time.time() if now is None else now)

    def awaiting_review(self) -> list[events_pb2.AnnotationTask]:
        with self._lock:
            return sorted((self._tasks[t] for t in self._review if t in self._tasks),
                          key=lambda t: (-t.priority, t.task_id))

    def all(self) -> list[events_pb2.AnnotationTask]:
        with self._lock:
            return list(self._tasks.values())


def __getattr__(name: str):
    # The facade lives with the durable side (task_store.py, which imports this module); it is named here too.
    if name == "AnnotationQueue":
        from services.annotation.task_store import AnnotationQueue
        return AnnotationQueue
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
