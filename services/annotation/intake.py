"""From the live streams to the queue: results in, tasks out.

Each inference result (primary or shadow) is a Candidate for the Selector. A selected one becomes a task only once
its frame is found on vigil.frames, is not a near-duplicate of the camera's recent tasks, fits the budgets, has had
its faces blurred (unless the camera opted out) and its image is stored: the task then goes to the queue, whose id
(a function of the frame and the model) makes a replayed result the same task. A frame that is gone from
vigil.frames (older than its 2 h) makes no task and is counted.

Drift alerts (DriftAlert on vigil.monitoring) are followed apart from the group's partitions (drift_alerts.py),
since every replica samples its own cameras under an alert."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from confluent_kafka import Message
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from libs.common.envelope import new_envelope
from libs.common.kafka import Outcome, Rejected, Retryable
from libs.common.logs import get_logger
from libs.common.topics import INFERENCE, INFERENCE_SHADOW
from protos import events_pb2
from libs.common.faces import FacesUnavailable
from services.annotation.frames import FrameFetcher
from services.annotation.near_duplicates import hash_bits, perceptual_hash
from services.annotation.selection import Candidate, Selection, Selector

log = get_logger(__name__)

TASK_NAMESPACE = uuid.UUID("5b0c2a9e-7f61-4c3d-8e2a-1d9f4b6c8a07")
OUTCOMES = Counter("vigil_annotation_results_total", "Results read by the annotation intake, by outcome",
                   ["outcome"])


class TaskSink(Protocol):
    def create(self, task: events_pb2.AnnotationTask, image: bytes | None = None) -> bool: ...


class Blurrer(Protocol):
    def blur(self, jpeg: bytes) -> tuple[bytes, int]: ...


def task_id_of(frame_event_id: str, model_name: str) -> str:
    """A pure function of the frame and the model: a replayed result makes the same task."""
    return str(uuid.uuid5(TASK_NAMESPACE, f"{frame_event_id}/{model_name}"))


def proposals_of(candidate: Candidate) -> list[events_pb2.Detection]:
    return [events_pb2.Detection(label=p.label, score=p.score,
                                 box=events_pb2.Box(x1=p.box[0], y1=p.box[1], x2=p.box[2], y2=p.box[3]))
            for p in candidate.proposals]


@dataclass
class IntakePolicy:
    double_label_share: float = 0.1
    blur_faces: bool = True


class AnnotationIntake:
    """The batch handler of the intake's KafkaRunner (vigil.inference and vigil.inference.shadow)."""

    def __init__(self, selector: Selector, frames: FrameFetcher, tasks: TaskSink, blurrer: Blurrer | None,
                 policy: IntakePolicy, schema_version: Callable[[], str],
                 blur_opted_out: Callable[[str], bool] = lambda camera_id: False,
                 clock: Callable[[], float] = time.time) -> None:
        self.selector = selector
        self.frames = frames
        self.tasks = tasks
        self.blurrer = blurrer
        self.policy = policy
        self.schema_version = schema_version
        self.blur_opted_out = blur_opted_out
        self.clock = clock
        # The selector is shared with the drift alert follower's thread.
        self.lock = threading.Lock()

    def handle_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for message in messages:
            try:
                outcome = self._handle(message)
            except Rejected as rejected:
                outcomes.append(rejected)
                OUTCOMES.labels(rejected.reason).inc()
                continue
            OUTCOMES.labels(outcome).inc()
            outcomes.append([])
        return outcomes

    def _handle(self, message: Message) -> str:
        try:
            result = events_pb2.InferenceResult.FromString(message.value() or b"")
        except DecodeError as exc:
            raise Rejected("malformed_event", f"not an InferenceResult: {exc}") from exc
        if result.sensor_id or not result.camera_id:
            return "not_a_camera"
        if not result.frame_event_id:
            raise Rejected("invalid_event", "an InferenceResult without frame_event_id")
        candidate = Candidate.from_result(result)
        now = self.clock()
        with self.lock:
            if message.topic() == INFERENCE_SHADOW or result.shadow:
                selection = self.selector.offer_shadow(candidate, now)
            else:
                selection = self.selector.consider(candidate, now)
        if selection is None:
            return "not_selected"
        # A shadow's disagreement selects the primary's result (the task is about what the primary model said).
        return self._make_task(selection.candidate or candidate, selection, result, message.partition())

    def _make_task(self, candidate: Candidate, selection: Selection, result: events_pb2.InferenceResult,
                   partition: int) -> str:
        frame = self.frames.fetch(candidate.camera_id, candidate.frame_event_id, candidate.event_time, partition)
        if frame is None:
            log.warning("selected frame no longer on vigil.frames", camera_id=candidate.camera_id,
                        frame_event_id=candidate.frame_event_id, rule=selection.rule)
            return "frame_gone"
        jpeg = self.frames.image(frame)
        image_hash = perceptual_hash(jpeg)
        now = self.clock()
        with self.lock:
            if not self.selector.admit(candidate, selection, image_hash, now):
                return "suppressed"
        faces = 0
        blurred = False
        if self.policy.blur_faces and self.blurrer is not None and not self.blur_opted_out(candidate.camera_id):
            try:
                jpeg, faces = self.blurrer.blur(jpeg)
            except FacesUnavailable as exc:
                # Never an unblurred image for people to see: the batch waits for the face model.
                raise Retryable(f"faces cannot be blurred: {exc}") from exc
            blurred = True
        task = self._task(candidate, selection, result, frame, blurred, hash_bits(image_hash))
        created = self.tasks.create(task, jpeg)
        if created:
            log.info("task queued", task_id=task.task_id, camera_id=task.camera_id, rule=selection.rule,
                     detail=selection.detail, faces_blurred=faces, trace_id=result.envelope.trace_id or None)
        return "task_created" if created else "task_exists"

    def _task(self, candidate: Candidate, selection: Selection, result: events_pb2.InferenceResult,
              frame: events_pb2.Frame, blurred: bool, image_hash: int) -> events_pb2.AnnotationTask:
        task_id = task_id_of(candidate.frame_event_id, candidate.model_name)
        envelope = new_envelope(f"camera/{candidate.camera_id}", "annotation", event_id=task_id,
                                trace_id=result.envelope.trace_id or None)
        task = events_pb2.AnnotationTask(
            envelope=envelope, task_id=task_id, camera_id=candidate.camera_id,
            frame_event_id=candidate.frame_event_id, reason=selection.rule, reason_detail=selection.detail,
            proposals=proposals_of(candidate), priority=selection.priority,
            model=events_pb2.ModelRef(name=candidate.model_name, version=candidate.model_version), state="open",
            width=frame.width or result.width, height=frame.height or result.height,
            labels_wanted=2 if _in_share(task_id, self.policy.double_label_share) else 1,
            schema_version=self.schema_version(), faces_blurred=blurred, revision=1, perceptual_hash=image_hash)
        task.captured_at.CopyFrom(frame.envelope.event_time)
        return task


def _in_share(key: str, share: float) -> bool:
    """A stable coin: the same key always lands on the same side."""
    return uuid.uuid5(TASK_NAMESPACE, key).int % 10_000 < share * 10_000
