"""The annotation queue's pure transitions (services/annotation/queue.py): leases, expiry, release, submissions
(idempotent, late, refused), double labelling with agreement, reviews, and the index leases are served from."""
from __future__ import annotations

import time

import pytest

from protos import events_pb2
from services.annotation import queue
from services.annotation.queue import LeaseLost, NotLeasable, SubmissionRefused, TaskIndex, TaskSettled
from services.annotation.schemas import LabelSchema

T0 = 1_800_000_000.0
LEASE_S = 60.0
SCHEMA = LabelSchema(version="1", classes=("person", "car"))


def task(task_id: str = "5b0e4f7e-3f8a-4c55-9d8e-7f1f2b6a9c01", wanted: int = 1, priority: float = 1.0):
    return queue.opened(events_pb2.AnnotationTask(task_id=task_id, camera_id="cam-1", width=640, height=480,
                                                  labels_wanted=wanted, priority=priority, reason="uncertain"))


def box(label: str, x1: float, y1: float, x2: float, y2: float) -> events_pb2.Detection:
    return events_pb2.Detection(label=label, box=events_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))


CAR = [box("car", 10, 10, 110, 90)]
PERSON = [box("person", 10, 10, 110, 90)]


class Labelled:
    """A task and its labels as the store would hold them, moved on by transitions."""

    def __init__(self, t):
        self.task = t
        self.labels: list[events_pb2.AnnotationLabel] = []

    def apply(self, transition: queue.Transition) -> queue.Transition:
        if transition.changed:
            assert transition.task.revision == self.task.revision + 1
        self.task = transition.task
        self.labels += transition.labels
        return transition

    def lease(self, annotator: str, now: float = T0) -> str:
        self.apply(queue.lease(self.task, annotator, now, LEASE_S))
        return self.task.leases[-1].lease_id

    def submit(self, lease_id: str, annotator: str, verdict: str = "labelled", boxes=CAR, now: float = T0 + 1):
        return self.apply(queue.submit(self.task, self.labels, lease_id, annotator, verdict, boxes, now, SCHEMA))


def test_a_new_task_is_open_at_revision_one_and_the_double_label_share_is_a_stable_coin():
    t = task(wanted=0)
    assert (t.state, t.revision, t.labels_wanted) == ("open", 1, 1)
    ids = [f"task-{i}" for i in range(2000)]
    doubled = [i for i in ids if queue.in_double_label_share(i, 0.1)]
    assert 120 < len(doubled) < 280
    assert doubled == [i for i in ids if queue.in_double_label_share(i, 0.1)]
    assert queue.opened(events_pb2.AnnotationTask(task_id=doubled[0]), 0.1).labels_wanted == 2


def test_a_lease_holds_the_task_until_it_lapses_then_it_is_back_in_the_queue():
    s = Labelled(task())
    s.lease("ann")
    assert s.task.state == "leased" and s.task.revision == 2
    assert not queue.can_lease(s.task, "bob", T0 + LEASE_S - 1)
    assert queue.effective_state(s.task, T0 + LEASE_S - 1) == "leased"
    assert queue.effective_state(s.task, T0 + LEASE_S + 1) == "open"
    assert queue.can_lease(s.task, "bob", T0 + LEASE_S + 1)
    with pytest.raises(NotLeasable):
        queue.lease(s.task, "bob", T0 + 1, LEASE_S)
    expired = queue.expire(s.task, T0 + LEASE_S + 1)
    assert expired.task.state == "open" and len(expired.task.leases) == 1  # kept for a late submission


def test_submitting_twice_under_one_lease_stores_one_label_and_returns_the_first():
    s = Labelled(task())
    lease_id = s.lease("ann")
    first = s.submit(lease_id, "ann", boxes=CAR)
    assert first.label.label_id == queue.label_id_of(s.task.task_id, lease_id)
    assert (first.label.status, s.task.state) == ("accepted", "accepted")
    again = s.submit(lease_id, "ann", boxes=PERSON)
    assert not again.changed and again.label == first.label and len(s.labels) == 1
    assert list(s.task.submission_ids) == [first.label.label_id]


def test_an_unusable_verdict_rejects_a_task_wanting_one_label():
    s = Labelled(task())
    label = s.submit(s.lease("ann"), "ann", verdict="unusable", boxes=[]).label
    assert (label.status, label.rejected, s.task.state) == ("rejected", True, "rejected")


def test_a_late_submission_is_taken_when_nobody_leased_the_task_since():
    s = Labelled(task())
    lease_id = s.lease("ann")
    label = s.submit(lease_id, "ann", now=T0 + LEASE_S + 30).label
    assert label.status == "accepted"


def test_a_late_submission_is_refused_when_someone_else_leased_the_task_since():
    s = Labelled(task())
    lease_id = s.lease("ann")
    s.lease("bob", now=T0 + LEASE_S + 1)
    before = s.task
    with pytest.raises(LeaseLost):
        s.submit(lease_id, "ann", now=T0 + LEASE_S + 2)
    assert s.task is before and not s.labels
    # ... and still refused once bob's lease lapsed too: someone else leased it after ann's lapsed
    with pytest.raises(LeaseLost):
        s.submit(lease_id, "ann", now=T0 + 3 * LEASE_S)


def test_a_released_lease_is_gone_and_the_task_open_again():
    s = Labelled(task())
    lease_id = s.lease("ann")
    with pytest.raises(LeaseLost):
        queue.release(s.task, lease_id, "bob", T0 + 1)
    s.apply(queue.release(s.task, lease_id, "ann", T0 + 1))
    assert s.task.state == "open" and not s.task.leases
    assert not queue.release(s.task, lease_id, "ann", T0 + 2).changed
    with pytest.raises(LeaseLost):
        s.submit(lease_id, "ann")


def test_a_submission_breaking_the_schema_is_refused_with_every_violation():
    s = Labelled(task())
    lease_id = s.lease("ann")
    with pytest.raises(SubmissionRefused) as refused:
        s.submit(lease_id, "ann", boxes=[box("dragon", 10, 10, 110, 90), box("car", 600, 10, 700, 90)])
    assert len(refused.value.violations) == 2 and not s.labels and s.task.state == "leased"
    with pytest.raises(SubmissionRefused):
        s.submit(lease_id, "ann", verdict="maybe", boxes=[])


def test_someone_elses_lease_cannot_be_used():
    s = Labelled(task())
    lease_id = s.lease("ann")
    with pytest.raises(LeaseLost):
        s.submit(lease_id, "mallory")


def test_a_double_label_task_takes_two_different_annotators_and_accepts_when_they_agree():
    s = Labelled(task(wanted=2))
    a = s.lease("ann")
    assert queue.can_lease(s.task, "bob", T0) and not queue.can_lease(s.task, "ann", T0)
    b = s.lease("bob")
    assert not queue.can_lease(s.task, "cid", T0)  # two people on it already
    first = s.submit(a, "ann", boxes=CAR).label
    assert first.status == "submitted" and s.task.state == "leased"  # bob still holds it
    assert not queue.can_lease(s.task, "ann", T0 + 2 * LEASE_S)  # ann labelled it: never her second label
    second = s.submit(b, "bob", boxes=[box("car", 12, 11, 111, 92)]).label
    assert second.status == "accepted" and second.agreement == pytest.approx(1.0)
    assert s.task.state == "accepted"
    assert [label.status for label in s.labels].count("accepted") == 1


def test_a_double_label_disagreement_waits_for_a_reviewer_who_settles_it():
    s = Labelled(task(wanted=2))
    a, b = s.lease("ann"), s.lease("bob")
    s.submit(a, "ann", boxes=CAR)
    second = s.submit(b, "bob", boxes=PERSON).label
    assert second.status == "submitted" and second.agreement == 0.0
    assert s.task.state == "submitted" and queue.awaiting_review(s.task)
    with pytest.raises(SubmissionRefused):
        queue.review(s.task, s.labels, "rita", "accept", T0 + 5, label_id="not-a-label")
    decided = s.apply(queue.review(s.task, s.labels, "rita", "accept", T0 + 5, label_id=second.label_id)).label
    assert (decided.kind, decided.status, decided.reviewer, decided.annotator) == ("review", "accepted", "rita", "bob")
    assert list(decided.labels) == PERSON and s.task.state == "accepted"
    assert not queue.review(s.task, s.labels, "rita", "accept", T0 + 6, label_id=second.label_id).changed
    with pytest.raises(TaskSettled):
        queue.review(s.task, s.labels, "rita", "reject", T0 + 6)


def test_a_reviewer_may_give_boxes_of_their_own_or_reject():
    s = Labelled(task(wanted=2))
    a, b = s.lease("ann"), s.lease("bob")
    s.submit(a, "ann", verdict="nothing_to_label", boxes=[])
    s.submit(b, "bob", boxes=PERSON)
    with pytest.raises(SubmissionRefused):
        queue.review(s.task, s.labels, "rita", "accept", T0, boxes=[box("dragon", 1, 1, 50, 50)], rules=SCHEMA)
    own = queue.review(s.task, s.labels, "rita", "accept", T0, boxes=CAR, rules=SCHEMA)
    assert own.label.status == "accepted" and list(own.label.labels) == CAR
    rejected = queue.review(s.task, s.labels, "rita", "reject", T0)
    assert rejected.task.state == "rejected" and rejected.label.rejected


def test_a_lapsed_first_lease_of_a_double_label_task_may_still_submit_while_the_other_holds():
    s = Labelled(task(wanted=2))
    a, b = s.lease("ann"), s.lease("bob", now=T0 + 30)
    # ann's lease lapsed but bob's is the task's other slot, not ann's: ann's late answer is taken
    assert s.submit(a, "ann", now=T0 + LEASE_S + 5).label.status == "submitted"
    # ...whereas once cid took ann's place, a lapsed lease is lost
    s2 = Labelled(task(wanted=2))
    a2 = s2.lease("ann")
    s2.lease("bob", now=T0 + 30)
    s2.lease("cid", now=T0 + LEASE_S + 1)
    with pytest.raises(LeaseLost):
        s2.submit(a2, "ann", now=T0 + LEASE_S + 2)


def test_the_index_serves_the_highest_priority_leasable_task_and_skips_lapsing_leases_until_they_lapse():
    index = TaskIndex()
    low, high = task("low", priority=0.1), task("high", priority=0.9)
    index.put(low, T0)
    index.put(high, T0)
    assert index.take("ann", T0).task_id == "high"
    leased = queue.lease(high, "ann", T0, LEASE_S).task
    assert index.put(leased, T0) and not index.put(high, T0)  # the highest revision wins
    assert index.held_by("ann", T0 + 1).task_id == "high"
    assert index.take("bob", T0 + 1).task_id == "low"
    assert index.take("cid", T0 + 1) is None
    assert index.take("cid", T0 + LEASE_S + 1).task_id == "high"  # ann's lease lapsed


def test_the_index_offers_a_second_label_to_someone_else_only():
    index = TaskIndex()
    double = task("double", wanted=2, priority=0.9)
    leased = queue.lease(double, "ann", T0, LEASE_S).task
    index.put(leased, T0)
    index.put(task("other", priority=0.1), T0)
    assert index.take("ann", T0 + 1).task_id == "other"
    assert index.take("bob", T0 + 1).task_id == "double"


def test_taking_from_ten_thousand_queued_tasks_costs_little():
    index = TaskIndex()
    for i in range(10_000):
        index.put(task(f"t{i}", priority=(i * 7919 % 10_000) / 10_000), T0)
    started = time.perf_counter()
    taken = [index.take(f"ann{i}", T0) for i in range(200)]
    elapsed = time.perf_counter() - started
    assert [t.priority for t in taken] == sorted((t.priority for t in taken), reverse=True)
    assert elapsed / 200 < 0.002


def test_the_index_drops_superseded_entries_instead_of_growing_with_every_transition():
    index = TaskIndex()
    t = task("one")
    index.put(t, T0)
    for n in range(5000):  # leases taken and lapsed elsewhere: each revision scheduled once
        t = queue.lease(t, f"ann{n}", T0 + n * (LEASE_S + 1), LEASE_S).task
        index.put(t, T0 + n * (LEASE_S + 1))
    assert len(index._ready) + len(index._waiting) <= 2 * len(index) + 1025
    assert index.held_by("ann4999", T0 + 4999 * (LEASE_S + 1)).task_id == "one"
    assert len(t.leases) == 1


def test_a_task_is_checked_against_its_schema_version_or_the_current_one_when_unknown():
    from services.annotation.task_store import _rules_provider

    class Store:
        def get(self, version):
            if version != "1":
                raise KeyError(version)
            return SCHEMA

        def current(self):
            return "current"

    rules = _rules_provider(Store())
    assert rules("1") is SCHEMA and rules("9") == "current" and rules("") == "current"
    assert _rules_provider(SCHEMA)("anything") is SCHEMA and _rules_provider(None)("1") is None


def test_releasing_a_lease_on_a_settled_task_changes_nothing():
    s = Labelled(task(wanted=2))
    a, b = s.lease("ann"), s.lease("bob")
    s.submit(a, "ann", verdict="nothing_to_label", boxes=[])
    s.apply(queue.review(s.task, s.labels, "rita", "reject", T0 + 2))
    assert not queue.release(s.task, b, "bob", T0 + 3).changed
