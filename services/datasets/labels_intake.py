"""Accepted labels into a dataset: each accepted AnnotationLabel becomes an item (its task id, camera, capture time,
boxes, schema version; its image copied once into the store's content-addressed blobs), items wait until N of
them or T minutes (or a request), then one `DatasetStore.append` commits them as a version of the working branch.
No Kafka, no HTTP: the adapter (services/datasets/kafka_adapter.py) holds the topic's offsets until `checkpoint`
reports the version committed, so labels read but not committed are read again after a crash, and `append`
merges by item id (the task id), so a label read twice is one item.

A task's newest accepted label wins: among the waiting ones by event time; against the committed version by
order on the topic (vigil.annotations is keyed by task id, so a task's labels are read in the order they were
published). Submissions and rejections are not the dataset's (they are skipped, counted); a label that cannot be
an item is refused with a reason (the adapter dead-letters it)."""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Callable

from minio.error import S3Error

from libs.common.logs import get_logger
from libs.common.objectstore import ObjectIntegrityError
from protos import events_pb2
from services.datasets.manifest import VERDICTS, Item, Label, Manifest
from services.datasets.splits import DEFAULT_BUCKET_S, DEFAULT_RATIOS, item_split
from services.datasets.store import DatasetStore
from services.datasets.validation import item_problems

log = get_logger(__name__)

AUTHOR = "datasets"
ACCEPTED = "accepted"
# Statuses on vigil.annotations that are not for a dataset: not errors, just not ours.
NOT_FOR_DATASETS = frozenset({"submitted", "rejected"})
_MISSING = frozenset({"NoSuchKey", "NotFound", "ResourceNotFound", "NoSuchBucket"})


class UnusableLabel(ValueError):
    """A label that can never be an item; `reason` is the dead letter's reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def label_problem(label: events_pb2.AnnotationLabel) -> UnusableLabel | None:
    """Why an accepted label cannot be an item, None when it can (pure: the image is not looked at)."""
    if not label.task_id:
        return UnusableLabel("no_task_id", f"label {label.label_id or '(no id)'} names no task")
    if label.verdict not in VERDICTS:
        return UnusableLabel("verdict_not_for_datasets", f"task {label.task_id}: an accepted label with verdict "
                             f"{label.verdict!r} (a dataset item is {' or '.join(VERDICTS)})")
    if not (label.frame.bucket and label.frame.key):
        return UnusableLabel("no_image", f"task {label.task_id}: the label carries no image reference")
    if not (label.width and label.height):
        return UnusableLabel("no_image_size", f"task {label.task_id}: width and height are missing")
    return None


def item_from_label(label: events_pb2.AnnotationLabel, blob: str, size: int,
                    ratios=DEFAULT_RATIOS, bucket_s: float = DEFAULT_BUCKET_S) -> Item:
    """The dataset item an accepted label makes, its image stored as `blob` (sha256) of `size` bytes; split by
    the stable group key (camera and capture-time bucket)."""
    captured_at = label.captured_at.seconds + label.captured_at.nanos / 1e9 if label.HasField("captured_at") \
        else 0.0
    item = Item(item_id=label.task_id, blob=blob, size=size, width=int(label.width), height=int(label.height),
                camera_id=label.camera_id, captured_at=captured_at, source_task_ids=(label.task_id,),
                labels=tuple(Label(d.label, (float(d.box.x1), float(d.box.y1), float(d.box.x2), float(d.box.y2)))
                             for d in label.labels),
                verdict=label.verdict, schema_version=label.schema_version)
    return item.with_split(item_split(item, ratios, bucket_s))


def event_seconds(label: events_pb2.AnnotationLabel) -> float:
    return label.envelope.event_time.seconds + label.envelope.event_time.nanos / 1e9


@dataclass(frozen=True)
class CommitPolicy:
    every_labels: int = 100
    every_s: float = 600.0


@dataclass
class _Waiting:
    item: Item
    labelled_at: float  # the label's event time: the newest of a task's labels wins
    since: float  # when it started waiting (monotonic)


class LabelIntake:
    """Takes accepted labels, commits them as versions of `dataset`/`branch`. Thread-safe: the consumer calls
    `take` and `checkpoint`, the commit endpoint `request_commit`."""

    def __init__(self, store: DatasetStore, read_image: Callable[[events_pb2.ObjectRef], bytes], dataset: str,
                 branch: str = "main", policy: CommitPolicy = CommitPolicy(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.read_image = store, read_image
        self.dataset, self.branch, self.policy, self.clock = dataset, branch, policy, clock
        self.lock = threading.Lock()
        self._waiting: dict[str, _Waiting] = {}
        self._schema_version: str | None = None  # the branch's, read once, then the versions committed
        self._requested = threading.Condition(self.lock)
        self._request_pending = False
        self._last_result: tuple[int, Manifest | None] = (0, None)  # (commit number, manifest)
        self._commits = 0

    # --- taking labels ------------------------------------------------------------------------------------------

    def take(self, label: events_pb2.AnnotationLabel) -> Item | None:
        """Stores the label's image and queues its item; None when the label is not for datasets (a submission,
        a rejection). Raises UnusableLabel for one that can never be an item; S3 errors other than a missing
        image propagate (the batch is retried)."""
        if label.status in NOT_FOR_DATASETS:
            return None
        if label.status != ACCEPTED:
            raise UnusableLabel("unknown_status", f"task {label.task_id}: status {label.status!r}")
        problem = label_problem(label)
        if problem is not None:
            raise problem
        self._check_schema(label)
        with self.lock:
            held = self._waiting.get(label.task_id)
            if held is not None and held.labelled_at > event_seconds(label):
                return held.item  # an older label of a task whose newer one is waiting
        image = self._image(label)
        sha256 = self.store.put_blob(image, content_type="image/jpeg")
        item = item_from_label(label, sha256, len(image), self.store.ratios, self.store.bucket_s)
        problems = item_problems(item, None, label.schema_version)
        if problems:
            raise UnusableLabel("invalid_item", "; ".join(problems))
        with self.lock:
            held = self._waiting.get(label.task_id)
            since = held.since if held is not None else self.clock()
            self._waiting[label.task_id] = _Waiting(item, event_seconds(label), since)
        return item

    def _image(self, label: events_pb2.AnnotationLabel) -> bytes:
        try:
            image = self.read_image(label.frame)
        except S3Error as exc:
            if exc.code in _MISSING:
                raise UnusableLabel("missing_image", f"task {label.task_id}: {label.frame.bucket}/"
                                    f"{label.frame.key} is not in the object store") from None
            raise
        except ObjectIntegrityError as exc:
            raise UnusableLabel("image_mismatch", f"task {label.task_id}: {exc}") from None
        if label.frame.sha256 and hashlib.sha256(image).hexdigest() != label.frame.sha256:
            raise UnusableLabel("image_mismatch", f"task {label.task_id}: {label.frame.key} does not hash to the "
                                "label's sha256")
        return image

    def _check_schema(self, label: events_pb2.AnnotationLabel) -> None:
        """One schema version per version (the validation gate): a label drawn under another schema than the
        branch's cannot join it."""
        if self._schema_version is None:
            head, _ = self.store.head(self.dataset, self.branch)
            self._schema_version = self.store.read_manifest(self.dataset, head).schema_version if head else ""
        with self.lock:
            current = self._schema_version or next(
                (w.item.schema_version for w in self._waiting.values() if w.item.schema_version), "")
        if current and label.schema_version and label.schema_version != current:
            raise UnusableLabel("schema_version_mismatch", f"task {label.task_id} is labelled under schema "
                                f"{label.schema_version}, {self.dataset}/{self.branch} holds schema {current}: "
                                "point the service at another dataset (VIGIL_DATASETS_DATASET) for the new schema")

    # --- committing ---------------------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        with self.lock:
            return len(self._waiting)

    @property
    def commit_requested(self) -> bool:
        with self.lock:
            return self._request_pending

    def due(self) -> bool:
        with self.lock:
            return self._due_locked()

    def _due_locked(self) -> bool:
        oldest = min((w.since for w in self._waiting.values()), default=self.clock())
        return commit_due(len(self._waiting), self.clock() - oldest, self._request_pending, self.policy)

    def checkpoint(self, final: bool = False) -> list[Manifest] | None:
        """Commits the waiting items when due (or `final`, or requested): [the version holding them] (the head,
        when it held them all already), [] when nothing waited (what was read is durable as it is), None when
        nothing is due yet. Raises when
        the store refuses or fails: nothing is then durable."""
        with self.lock:
            if not self._waiting:
                self._answer(None)
                return []
            if not (final or self._due_locked()):
                return None
            items = [w.item for w in self._waiting.values()]
        manifest = self.store.append(self.dataset, items, commit_message(items), AUTHOR, branch=self.branch,
                                     schema_version=self._schema_version or "")
        with self.lock:
            for item in items:
                if self._waiting.get(item.item_id) is not None and self._waiting[item.item_id].item == item:
                    del self._waiting[item.item_id]
            self._schema_version = manifest.schema_version
            self._answer(manifest)
        # When the head held them all already (labels read again) append made no new version and returns the head:
        # it is announced again, since the first announcement may be what a crash prevented (its event id is the
        # version's, so a repeat dedupes).
        log.info("version committed", dataset=self.dataset, branch=self.branch, version=manifest.version,
                 items=len(manifest.items), appended=len(items))
        return [manifest]

    def _answer(self, manifest: Manifest | None) -> None:
        if self._request_pending:
            self._commits += 1
            self._last_result = (self._commits, manifest)
            self._request_pending = False
            self._requested.notify_all()

    def request_commit(self, timeout_s: float) -> tuple[bool, Manifest | None]:
        """Asks the consumer to commit the waiting items at its next checkpoint and waits for it: (done, the
        version committed, None when nothing waited); done is False when it did not happen within timeout_s."""
        with self.lock:
            number = self._commits + 1
            self._request_pending = True
            done = self._requested.wait_for(lambda: self._commits >= number, timeout_s)
            return done, (self._last_result[1] if done else None)


def commit_due(waiting: int, oldest_waited_s: float, requested: bool, policy: CommitPolicy) -> bool:
    """Whether the waiting items make a version now: N of them, or the oldest has waited T, or one was asked for
    (never an empty version)."""
    return waiting > 0 and (waiting >= policy.every_labels or oldest_waited_s >= policy.every_s or requested)


def commit_message(items: list[Item]) -> str:
    tasks = sorted(item.item_id for item in items)
    shown = ", ".join(tasks[:3]) + (f" and {len(tasks) - 3} more" if len(tasks) > 3 else "")
    return f"{len(items)} accepted label(s) from vigil.annotations (tasks {shown})"
