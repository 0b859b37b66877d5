"""The annotation queue's durable side, and `AnnotationQueue`, the facade the intake and the web API use.

Where things are (annotation bucket, topics in libs/common/topics.py):
- `tasks/<task_id>.json` holds the task and every label made for it (submissions with their boxes, the review):
  {"task": AnnotationTask, "labels": [{"revision": n, "label": AnnotationLabel}], "updated_at": seconds} in
  protobuf's JSON mapping. It is the arbiter: every transition reads it and writes the next state with
  compare-and-swap on its ETag (a replica that loses re-reads and tries again), so two replicas never both lease
  one task, and a submission's boxes are stored in the same atomic write that moves the task. A restart loses
  nothing: the boxes are in S3 (and on vigil.annotations), the task's state in S3 and on the compacted topic.
- `images/<sha256>.jpg`: a task's image, content-addressed (written once, whoever writes it first).
- vigil.annotation.tasks (compacted, keyed by task id): each task's latest state, published after its write to S3.
  Every replica follows it to keep its in-memory index (queue.TaskIndex, highest revision wins), and rebuilds the
  index from it at start.
- vigil.annotations (keyed by task id): the label events, published before the task's new state; the event id is
  the label id, so a consumer dedupes a repeat.

A replica that dies between its write to S3 and its publication leaves S3 ahead of the topics. It is repaired by
whoever next reads the task from S3 and finds it ahead of their index for longer than REPAIR_GRACE_S (the writer
is alive and publishing otherwise): they publish the labels made after the revision they knew, then the task. A
starting replica also re-reads the tasks written in the last RECONCILE_S (listing the bucket) and repairs those.
A repair may repeat a label event already delivered (at least once, same label id).

Two writers of one task may publish out of order (rev 2's writer slower than rev 3's): the compacted topic's last
record of the task is then an older state, which compaction would keep. Every replica's index keeps the highest
revision anyway; a replica that sees such an older record land after a newer one, and no newer one follow within
STALE_TAIL_S, publishes the task again from S3, so the topic ends with its latest state for the next start."""
from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from confluent_kafka import Producer
from google.protobuf.json_format import MessageToDict, ParseDict
from minio import Minio
from prometheus_client import Counter, Histogram

from libs.common.compacted import Change, CompactedTable
from libs.common.logs import get_logger
from libs.common.objectstore import RefConflict, compare_and_swap_ref, get_verified, put_verified, read_ref
from libs.common.topics import ANNOTATION_LABELS, ANNOTATION_TASKS
from protos import events_pb2
from services.annotation import queue
from services.annotation.queue import LabelRules, NotLeasable, Transition, UnknownTask

log = get_logger(__name__)

TASK_PREFIX = "tasks/"
IMAGE_PREFIX = "images/"
# A task's S3 object ahead of a reader's index for longer than this was not published by its writer (who
# publishes within milliseconds of its write): the reader publishes it.
REPAIR_GRACE_S = 10.0
# At start, tasks written this recently are re-read and repaired if their writer died before publishing them.
RECONCILE_S = 900.0
# Compare-and-swap attempts of one transition before giving up (each loser re-reads: one attempt per rival).
MAX_ATTEMPTS = 32
# Candidates one lease_next tries (each lost to another replica) before answering "nothing to lease".
MAX_CANDIDATES = 16
# How often the upkeep runs (unpublished transitions, stale topic tails), and how long a task's last record on the
# compacted topic may stay older than the replica's state before it is published again.
UPKEEP_S = 1.0
STALE_TAIL_S = 3.0
# Settled tasks whose labels are kept in memory (a few hundred bytes to a few KiB each).
SETTLED_LABELS_KEPT = 50_000

TRANSITIONS = Counter("vigil_annotation_transitions_total", "Task transitions written, by kind", ["kind"])
CONFLICTS = Counter("vigil_annotation_cas_conflicts_total", "Task writes lost to another writer (re-read, retried)")
REPAIRS = Counter("vigil_annotation_repairs_total", "Tasks published for a writer that did not (S3 ahead of Kafka)")
LEASE_SECONDS = Histogram("vigil_annotation_lease_seconds", "Time to lease the next task (S3 and Kafka included)",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5))


class PublishFailed(RuntimeError):
    """Kafka did not take a transition already stored in S3: retried later (the caller may retry too)."""


def task_key(task_id: str) -> str:
    return f"{TASK_PREFIX}{task_id}.json"


def image_key(sha256: str) -> str:
    return f"{IMAGE_PREFIX}{sha256}.jpg"


@dataclass
class TaskRecord:
    """A task's S3 object as read: the task, its labels (each with the revision that made it), its ETag."""
    task: events_pb2.AnnotationTask
    labels: list[tuple[int, events_pb2.AnnotationLabel]] = field(default_factory=list)
    etag: str | None = None
    updated_at: float = 0.0

    def label_events(self) -> list[events_pb2.AnnotationLabel]:
        return [label for _, label in self.labels]

    def encode(self) -> bytes:
        return json.dumps({
            "task": MessageToDict(self.task, preserving_proto_field_name=True),
            "labels": [{"revision": revision, "label": MessageToDict(label, preserving_proto_field_name=True)}
                       for revision, label in self.labels],
            "updated_at": self.updated_at,
            # Unique per write: a write the SDK retried after a 5xx is recognised as our own (objectstore docs).
            "write_id": uuid.uuid4().hex,
        }, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, content: bytes, etag: str | None) -> "TaskRecord":
        stored = json.loads(content)
        return cls(task=ParseDict(stored["task"], events_pb2.AnnotationTask(), ignore_unknown_fields=True),
                   labels=[(int(item["revision"]),
                            ParseDict(item["label"], events_pb2.AnnotationLabel(), ignore_unknown_fields=True))
                           for item in stored.get("labels", [])],
                   etag=etag, updated_at=float(stored.get("updated_at", 0.0)))


class TaskStore:
    """Tasks and images in the annotation bucket."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def read(self, task_id: str) -> TaskRecord | None:
        found = read_ref(self.client, self.bucket, task_key(task_id))
        return None if found is None else TaskRecord.decode(*found)

    def create(self, task: events_pb2.AnnotationTask, at: float) -> TaskRecord:
        """Writes a new task; RefConflict when its id exists."""
        record = TaskRecord(task, [], None, at)
        record.etag = compare_and_swap_ref(self.client, self.bucket, task_key(task.task_id), record.encode(), None)
        return record

    def swap(self, record: TaskRecord, transition: Transition, at: float) -> TaskRecord:
        """Writes the transition's task and labels over `record`, if it is still what S3 holds (else RefConflict)."""
        revision = transition.task.revision
        nxt = TaskRecord(transition.task, record.labels + [(revision, label) for label in transition.labels],
                         None, at)
        nxt.etag = compare_and_swap_ref(self.client, self.bucket, task_key(transition.task.task_id), nxt.encode(),
                                        record.etag)
        return nxt

    def put_image(self, jpeg: bytes) -> events_pb2.ObjectRef:
        digest = hashlib.sha256(jpeg).hexdigest()
        return put_verified(self.client, self.bucket, image_key(digest), jpeg, content_type="image/jpeg",
                            if_absent=True)

    def image(self, ref: events_pb2.ObjectRef) -> bytes:
        return get_verified(self.client, ref)

    def recently_written(self, since: float) -> list[str]:
        """Ids of the tasks whose object was written at or after `since` (seconds since the epoch)."""
        cutoff = datetime.fromtimestamp(since, timezone.utc)
        found = []
        for item in self.client.list_objects(self.bucket, prefix=TASK_PREFIX, recursive=True):
            name = item.object_name
            if name.endswith(".json") and item.last_modified is not None and item.last_modified >= cutoff:
                found.append(name[len(TASK_PREFIX):-len(".json")])
        return found


class TaskPublisher:
    """Publishes label events and task states, each call waiting until Kafka has every message it produced."""

    def __init__(self, client_config: dict[str, str], client_id: str, tasks_topic: str, labels_topic: str) -> None:
        self.tasks_topic = tasks_topic
        self.labels_topic = labels_topic
        self._producer = Producer({**client_config, "client.id": client_id, "enable.idempotence": True,
                                   "acks": "all", "linger.ms": 0})

    def publish(self, task: events_pb2.AnnotationTask, labels: Sequence[events_pb2.AnnotationLabel],
                timeout_s: float = 30.0) -> None:
        key = task.task_id.encode()
        if labels:  # labels first: once a task's state is on the topic, the labels that made it are too
            self._deliver([(self.labels_topic, key, label.SerializeToString()) for label in labels], timeout_s)
        self._deliver([(self.tasks_topic, key, task.SerializeToString())], timeout_s)

    def _deliver(self, messages: list[tuple[str, bytes, bytes]], timeout_s: float) -> None:
        errors: list[str] = []
        remaining = [len(messages)]
        lock = threading.Lock()

        def delivered(err, msg) -> None:
            with lock:
                remaining[0] -= 1
                if err is not None:
                    errors.append(f"{msg.topic()}: {err.str()}")

        for topic, key, value in messages:
            while True:
                try:
                    self._producer.produce(topic, key=key, value=value, on_delivery=delivered)
                    break
                except BufferError:
                    self._producer.poll(0.05)
        deadline = time.monotonic() + timeout_s
        while remaining[0] > 0:
            if time.monotonic() > deadline:
                raise PublishFailed(f"{remaining[0]} messages not delivered within {timeout_s:.0f}s")
            self._producer.poll(0.01)
        if errors:
            raise PublishFailed("; ".join(errors[:3]))

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)


def _rules_provider(schemas: Any) -> Callable[[str], LabelRules | None]:
    """The rules a task's submissions are checked against: its own schema version's; the current schema when that
    version is unknown (or the task names none); no schema at all checks verdicts only."""
    if schemas is None:
        return lambda version: None
    if hasattr(schemas, "violations"):
        return lambda version: schemas  # one schema for every task
    by_version = schemas.get if hasattr(schemas, "get") else schemas  # schemas.SchemaStore, or a callable
    current = getattr(schemas, "current", None)

    def rules(version: str) -> LabelRules | None:
        if version:
            try:
                return by_version(version)
            except KeyError:
                if current is None:
                    raise
        return current() if current is not None else None

    return rules


class AnnotationQueue:
    """The queue every replica serves: leases from its in-memory index (fed by the compacted topic and by its own
    writes), transitions through S3 compare-and-swap, publications to Kafka. Thread-safe.

    `kafka`: a client config dict (or KafkaSettings); `schemas`: a LabelSchema for every task, or something
    mapping a task's schema_version to one (`SchemaStore.get`, a callable), or None (verdicts checked only).
    Call `start()` (loads the index from the compacted topic, follows it on a thread) before serving, `close()`
    at the end; or run `follow(stop)` on a supervisor's thread and `wait_loaded()`."""

    def __init__(self, client: Minio, bucket: str, kafka: Any, *, lease_s: float = 300.0,
                 double_label_share: float = 0.1, schemas: Any = None, client_id: str = "vigil-annotation",
                 tasks_topic: str = ANNOTATION_TASKS, labels_topic: str = ANNOTATION_LABELS,
                 clock: Callable[[], float] = time.time, reconcile_s: float = RECONCILE_S) -> None:
        client_config = kafka.client_config() if hasattr(kafka, "client_config") else dict(kafka)
        self.store = TaskStore(client, bucket)
        self.publisher = TaskPublisher(client_config, f"{client_id}-queue", tasks_topic, labels_topic)
        self.table: CompactedTable[events_pb2.AnnotationTask] = CompactedTable(
            client_config, tasks_topic, f"{client_id}-tasks", message=events_pb2.AnnotationTask,
            validate=lambda key, task: None if task.task_id == key else "task_id is not the key")
        self.follower = self.table.follower(self._on_changes, poll_s=0.1)
        self.index = queue.TaskIndex()
        self.lease_s = lease_s
        self.double_label_share = double_label_share
        self.rules_for = _rules_provider(schemas)
        self.clock = clock
        self.reconcile_s = reconcile_s
        self.loaded = self.follower.loaded
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._unpublished: dict[str, tuple[events_pb2.AnnotationTask, list[events_pb2.AnnotationLabel]]] = {}
        self._unpublished_lock = threading.Lock()
        self._tails_lock = threading.Lock()
        self._locks_lock = threading.Lock()
        self._annotator_locks: dict[str, threading.Lock] = {}
        self._log_revision: dict[str, int] = {}  # task id -> revision of its last record on the compacted topic
        self._stale_tails: dict[str, float] = {}  # task id -> when to check its last record again (monotonic)
        self._settled_labels: OrderedDict[str, tuple[events_pb2.AnnotationLabel, ...]] = OrderedDict()

    # --- running ------------------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> "AnnotationQueue":
        """Follows the compacted topic on a thread of its own (see `follow`); returns once the index holds the
        whole topic. `close()` stops it."""
        failure: list[BaseException] = []

        def follow() -> None:
            try:
                self.follow(self._stop)
            except BaseException as exc:
                failure.append(exc)
                raise

        thread = threading.Thread(target=follow, name="annotation-tasks", daemon=True)
        thread.start()
        self._threads.append(thread)
        deadline = time.monotonic() + timeout_s
        while not self.wait_loaded(0.2):
            if failure:
                raise RuntimeError(f"following {self.table.topic} failed: {failure[0]}") from failure[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.table.topic} not loaded within {timeout_s:.0f}s")
        return self

    def follow(self, stop: threading.Event) -> None:
        """Loads the index from the compacted topic and follows it until `stop` (a supervisor's task); once
        loaded, repairs the tasks written recently that their writer may not have published (on a thread)."""
        upkeep = threading.Thread(target=self._upkeep, args=(stop,), name="annotation-upkeep", daemon=True)
        upkeep.start()
        try:
            self.follower.run(stop)
        finally:
            upkeep.join(timeout=5)

    def wait_loaded(self, timeout_s: float | None = None) -> bool:
        """True once the index holds the whole compacted topic (as of the start)."""
        return self.loaded.wait(timeout_s)

    def _upkeep(self, stop: threading.Event) -> None:
        """Once loaded: repairs what writers that died left unpublished (`reconcile`), then every second publishes
        again what Kafka refused earlier and puts right a topic whose last record of a task is not its latest."""
        while not self.loaded.wait(0.5):
            if stop.is_set():
                return
        if self.reconcile_s > 0:
            self.reconcile(stop=stop)
        while not stop.wait(UPKEEP_S):
            try:
                self._retry_unpublished()
                self._fix_stale_tails()
            except Exception as exc:  # S3 or Kafka away for a moment: the next round tries again
                log.warning("annotation queue upkeep failed", error=str(exc))

    def ready(self) -> tuple[bool, str]:
        return self.follower.ready()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._retry_unpublished()
        self.publisher.close()

    def _on_changes(self, changes: list[Change]) -> None:
        now = self.clock()
        for change in changes:
            if change.problem:
                continue  # the key keeps its last good value, already in the index
            if change.value is None:
                self.index.remove(change.key)
                continue
            task = change.value
            with self._tails_lock:
                self._log_revision[change.key] = task.revision
            if not self.index.put(task, now):
                known = self.index.get(change.key)
                if known is not None and known.revision > task.revision:
                    # An older state landed after a newer one (two writers published out of order): unless the
                    # newer one follows, compaction would keep the older one for the next start.
                    with self._tails_lock:
                        self._stale_tails.setdefault(change.key, time.monotonic() + STALE_TAIL_S)

    def _fix_stale_tails(self) -> int:
        """Publishes again, from S3, each task whose last record on the compacted topic stayed older than the state
        this replica knows for STALE_TAIL_S; returns how many."""
        now = time.monotonic()
        with self._tails_lock:
            due = [key for key, at in self._stale_tails.items() if at <= now]
            for key in due:
                del self._stale_tails[key]
        fixed = 0
        for task_id in due:
            known = self.index.get(task_id)
            with self._tails_lock:
                in_log = self._log_revision.get(task_id, 0)
            if known is None or in_log >= known.revision:
                continue  # the newer state followed meanwhile
            record = self.store.read(task_id)
            if record is None or record.task.revision <= in_log:
                continue
            # The task only: its labels were published by their writer before it published the newer state.
            self.publisher.publish(record.task, [])
            REPAIRS.inc()
            log.info("annotation task published again: an older state was last on the topic", task_id=task_id,
                     revision=record.task.revision, last_on_topic=in_log)
            fixed += 1
        return fixed

    def reconcile(self, since_s: float | None = None, stop: threading.Event | None = None) -> int:
        """Re-reads the tasks written in the last `since_s` seconds and publishes those S3 holds ahead of the
        index once they are older than REPAIR_GRACE_S; returns how many it published."""
        started = self.clock()
        try:
            ids = self.store.recently_written(started - (since_s if since_s is not None else self.reconcile_s))
        except Exception as exc:  # the repair is best effort: a later touch repairs too
            log.warning("annotation reconcile could not list tasks", error=str(exc))
            return 0
        repaired = 0
        young: list[str] = []
        try:
            for task_id in ids:
                record = self.store.read(task_id)
                if record is None:
                    continue
                if started - record.updated_at < REPAIR_GRACE_S:
                    young.append(task_id)
                elif self._observe(record):
                    repaired += 1
            if young and not (stop or self._stop).wait(REPAIR_GRACE_S):
                for task_id in young:
                    record = self.store.read(task_id)
                    if record is not None and self._observe(record):
                        repaired += 1
        except Exception as exc:
            log.warning("annotation reconcile stopped early", error=str(exc), repaired=repaired)
        if repaired:
            log.info("annotation tasks republished", count=repaired)
        return repaired

    # --- the facade ---------------------------------------------------------------------------------------------
    def create(self, task: events_pb2.AnnotationTask, image: bytes | None = None) -> bool:
        """Stores a new task (with its image, content-addressed) open for leasing; False when its id exists (a
        replayed result), which changes nothing."""
        self._retry_unpublished()
        new = queue.opened(task, self.double_label_share)
        if image is not None:
            new.frame.CopyFrom(self.store.put_image(image))
        now = self.clock()
        try:
            self.store.create(new, now)
        except RefConflict:
            record = self.store.read(new.task_id)
            if record is not None:
                known = self.index.get(new.task_id)
                if known is None and record.task.revision == 1:
                    self._publish(record.task, [])  # its creator may have died before publishing it
                else:
                    self._observe(record)
            return False
        self._publish(new, [])
        self.index.put(new, now)
        TRANSITIONS.labels("create").inc()
        return True

    def lease_next(self, annotator: str, now: float | None = None) -> events_pb2.AnnotationTask | None:
        """The task the annotator holds a live lease on, else the highest-priority task they may lease, leased
        to them for lease_s; None when there is none. Their lease is `queue.lease_of(task, annotator, now)`."""
        started = time.perf_counter()
        now = self.clock() if now is None else now
        self._retry_unpublished()
        # One call at a time per annotator here (a double click must not lease two tasks).
        with self._locks_lock:
            mine = self._annotator_locks.setdefault(annotator, threading.Lock())
        try:
            with mine:
                return self._lease_next(annotator, now)
        finally:
            LEASE_SECONDS.observe(time.perf_counter() - started)

    def _lease_next(self, annotator: str, now: float) -> events_pb2.AnnotationTask | None:
        held = self.index.held_by(annotator, now)
        if held is not None:
            return held
        for _ in range(MAX_CANDIDATES):
            candidate = self.index.take(annotator, now)
            if candidate is None:
                return None
            try:
                transition = self._transact(
                    candidate.task_id, "lease",
                    lambda record: queue.lease(record.task, annotator, now, self.lease_s), now)
            except NotLeasable:
                # Another replica took it (the index now holds what S3 says), or our own write went through
                # although the client saw it fail (a PUT retried after a 5xx): then the lease is ours.
                held = self.index.held_by(annotator, now)
                if held is not None:
                    return held
                continue
            except Exception:
                self.index.put_back(candidate, now)
                raise
            return transition.task
        return None

    def get(self, task_id: str) -> events_pb2.AnnotationTask | None:
        task = self.index.get(task_id)
        if task is None:
            return None
        copy = events_pb2.AnnotationTask()
        copy.CopyFrom(task)
        return copy

    def image(self, task_id: str) -> bytes:
        task = self.index.get(task_id)
        if task is None:
            raise UnknownTask(task_id)
        if not task.frame.key:
            raise UnknownTask(f"task {task_id} has no image")
        return self.store.image(task.frame)

    def submit(self, task_id: str, lease_id: str, annotator: str, verdict: str,
               boxes: list[events_pb2.Detection]) -> events_pb2.AnnotationLabel:
        """Stores the annotator's answer (idempotent per lease_id). LeaseLost (409), SubmissionRefused (422)."""
        self._retry_unpublished()
        now = self.clock()

        def step(record: TaskRecord) -> Transition:
            return queue.submit(record.task, record.label_events(), lease_id, annotator, verdict, boxes, now,
                                self.rules_for(record.task.schema_version))

        return self._transact(task_id, "submit", step, now).label

    def release(self, task_id: str, lease_id: str, annotator: str) -> None:
        """Gives the task back before the lease ends (nothing happens for a lease no longer on it)."""
        self._retry_unpublished()
        now = self.clock()
        self._transact(task_id, "release", lambda record: queue.release(record.task, lease_id, annotator, now), now)

    def disagreements(self) -> list[tuple[events_pb2.AnnotationTask, list[events_pb2.AnnotationLabel]]]:
        """Tasks labelled twice whose labels disagree, with their submissions, highest priority first."""
        found = []
        for task in self.index.awaiting_review():
            record = self.store.read(task.task_id)
            if record is None:
                continue
            self._observe(record)
            if queue.awaiting_review(record.task):
                found.append((record.task, [label for label in record.label_events()
                                            if label.label_id in record.task.submission_ids]))
        return found

    def labels(self, task_id: str) -> list[events_pb2.AnnotationLabel]:
        """Every label made for the task, in order (submissions, then the review if any). A settled task's labels
        never change: they are kept (up to SETTLED_LABELS_KEPT tasks), so an export reads each from S3 once."""
        with self._unpublished_lock:
            kept = self._settled_labels.get(task_id)
            if kept is not None:
                self._settled_labels.move_to_end(task_id)
                return list(kept)
        record = self.store.read(task_id)
        if record is None:
            raise UnknownTask(task_id)
        self._observe(record)
        labels = record.label_events()
        if record.task.state in queue.SETTLED:
            with self._unpublished_lock:
                self._settled_labels[task_id] = tuple(labels)
                while len(self._settled_labels) > SETTLED_LABELS_KEPT:
                    self._settled_labels.popitem(last=False)
        return labels

    def review(self, task_id: str, reviewer: str, decision: str, label_id: str | None = None,
               boxes: list[events_pb2.Detection] | None = None) -> events_pb2.AnnotationLabel:
        """Settles a submitted task: "accept" a submission (`label_id`) or `boxes`, or "reject" it."""
        self._retry_unpublished()
        now = self.clock()

        def step(record: TaskRecord) -> Transition:
            return queue.review(record.task, record.label_events(), reviewer, decision, now, label_id, boxes,
                                self.rules_for(record.task.schema_version))

        return self._transact(task_id, "review", step, now).label

    def stats(self) -> dict:
        """Tasks per state (as of now: lapsed leases count as back in the queue), per selection rule; live leases,
        tasks someone could lease now, tasks awaiting review, tasks labelled twice."""
        now = self.clock()
        by_state = {state: 0 for state in queue.STATES}
        by_reason: dict[str, int] = {}
        leased = leasable = review = double = 0
        tasks = self.index.all()
        for task in tasks:
            live = len(queue.live_leases(task, now))
            state = queue.effective_state(task, now)
            by_state[state] = by_state.get(state, 0) + 1
            reason = task.reason or "unknown"
            by_reason[reason] = by_reason.get(reason, 0) + 1
            leased += live
            wanted = max(task.labels_wanted, 1)
            leasable += queue.wants_labels(task) and len(task.submission_ids) + live < wanted
            review += queue.awaiting_review(task)
            double += wanted >= 2
        return {"tasks": len(tasks), "by_state": by_state, "by_reason": by_reason, "live_leases": leased,
                "leasable": leasable, "awaiting_review": review, "labelled_twice": double}

    def tasks(self, state: str | None = None, limit: int | None = 100) -> list[events_pb2.AnnotationTask]:
        """Tasks (in their state as of now), highest priority first; every one with limit None."""
        now = self.clock()
        chosen = [task for task in self.index.all() if state is None or queue.effective_state(task, now) == state]
        chosen.sort(key=lambda task: (-task.priority, task.task_id))
        return chosen if limit is None else chosen[:max(limit, 0)]

    # --- the machinery --------------------------------------------------------------------------------------------
    def _transact(self, task_id: str, kind: str, step: Callable[[TaskRecord], Transition], now: float) -> Transition:
        """Read, transition, compare-and-swap; on a conflict read again. Publishes what it wrote."""
        for _ in range(MAX_ATTEMPTS):
            record = self.store.read(task_id)
            if record is None:
                raise UnknownTask(task_id)
            self._observe(record)
            transition = step(record)
            if not transition.changed:
                return transition
            try:
                self.store.swap(record, transition, self.clock())
            except RefConflict:
                CONFLICTS.inc()
                continue
            TRANSITIONS.labels(kind).inc()
            self.index.put(transition.task, now)
            self._publish(transition.task, list(transition.labels))
            return transition
        raise RuntimeError(f"task {task_id} kept changing: {kind} not written after {MAX_ATTEMPTS} attempts")

    def _observe(self, record: TaskRecord) -> bool:
        """Brings the index up to what S3 holds; publishes it when its writer has not (see the module docstring).
        True when it published."""
        known = self.index.get(record.task.task_id)
        known_revision = known.revision if known is not None else 0
        if record.task.revision <= known_revision:
            return False
        self.index.put(record.task, self.clock())
        if self.clock() - record.updated_at < REPAIR_GRACE_S:
            return False
        REPAIRS.inc()
        log.warning("annotation task republished: S3 ahead of Kafka", task_id=record.task.task_id,
                    revision=record.task.revision, known_revision=known_revision)
        self._publish(record.task, [label for revision, label in record.labels if revision > known_revision])
        return True

    def _publish(self, task: events_pb2.AnnotationTask, labels: list[events_pb2.AnnotationLabel]) -> None:
        try:
            self.publisher.publish(task, labels)
        except Exception as exc:
            # Stored in S3 already: kept here and published again before this replica's next transition.
            with self._unpublished_lock:
                held = self._unpublished.get(task.task_id)
                earlier = held[1] if held else []
                self._unpublished[task.task_id] = (task, earlier + labels)
            raise PublishFailed(f"task {task.task_id} stored but not published: {exc}") from exc

    def _retry_unpublished(self) -> None:
        if not self._unpublished:
            return
        with self._unpublished_lock:
            pending, self._unpublished = self._unpublished, {}
        left = list(pending.values())
        while left:
            task, labels = left.pop(0)
            try:
                self._publish(task, labels)
            except PublishFailed:  # Kafka still away: this one was kept again by _publish, keep the rest too
                with self._unpublished_lock:
                    for task, labels in left:
                        self._unpublished.setdefault(task.task_id, (task, labels))
                return
