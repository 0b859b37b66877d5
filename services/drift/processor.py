"""DriftProcessor: the drift service's Kafka messages in, its events out, with no Kafka client of its own (the faust
app in faust_app.py is a thin loop around it, and unit tests feed it directly).

Subjects (DriftMonitor keys):
- a camera's input, `camera/<id>`: the image statistics ingest puts on each frame (vigil.frames);
- a camera under a model version, `camera/<id>` + model + version: the detections, confidences, boxes and embedding
  of each result (vigil.inference; shadow models' results on vigil.inference.shadow as their own subjects, and the
  primary-vs-shadow disagreement in the primary's window);
- a sensor, `sensor/<id>`: its values and the anomaly model's scores (vigil.inference.sensors).

Messages are taken a batch at a time: decoded, grouped by subject, and each subject's run of events in one window
recorded as columns (features.record_inferences), so the cost per event is the decode and little else.

Exactly once per subject: each subject's state carries the last offset applied from each source partition, and a
message at or below it is skipped. A worker killed after its state reached the changelog but before its offsets
were committed reads those messages again; they leave the windows as they were."""
from __future__ import annotations

import json
import math
import time
import uuid
import zlib
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from google.protobuf.message import DecodeError
from prometheus_client import Counter

from libs.common.envelope import new_envelope
from libs.common.kafka import Outbound, Rejected
from libs.common.topics import DRIFT_REFERENCES, DRIFT_WINDOWS, FRAMES, INFERENCE, INFERENCE_SENSORS, \
    INFERENCE_SHADOW, MONITORING
from protos import events_pb2
from services.drift.features import (
    InferenceColumns, InferenceOutput, ShadowPairing, record_frames, record_inferences, record_sensor_reading,
    record_sensor_score, record_shadow_disagreement)
from services.drift.monitor import DriftMonitor, WindowOutcome
from services.drift.profiles import FIRST_WINDOWS, TIME_RANGE, ReferenceProfile
from services.drift.windows import DriftKey

PRODUCER = "drift"
SOURCE_TOPICS = (FRAMES, INFERENCE, INFERENCE_SHADOW, INFERENCE_SENSORS)
IMAGE_STATS = tuple(events_pb2.ImageStats.DESCRIPTOR.fields_by_name)
# Event ids of what drift derives are pure functions of what they describe, so a window closed again after a
# restart yields the same ids, and consumers dedupe them.
_ID_NAMESPACE = uuid.UUID("0c6b7d8e-2f4a-4e8b-9b1d-5a3c7e9f1d20")

EVENTS = Counter("vigil_drift_events_total", "Messages drift read, by topic and outcome", ["topic", "outcome"])
WINDOWS = Counter("vigil_drift_windows_total", "Windows closed, by status", ["status"])
ALERTS = Counter("vigil_drift_alerts_total", "Drift alerts raised and cleared", ["action"])


@dataclass(frozen=True)
class SourceMessage:
    topic: str
    partition: int
    offset: int
    value: bytes


@dataclass
class ProcessorOutput:
    """What a batch or a clock tick produced: messages to send, references to store and announce."""

    messages: list[Outbound] = field(default_factory=list)
    references: list[ReferenceProfile] = field(default_factory=list)


def derived_id(*parts: object) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, "/".join(str(p) for p in parts)))


def subject_of(key: DriftKey) -> str:
    """The table and topic key of a subject: "camera/lobby", "camera/lobby|yolov3-tiny|3", "sensor/t-17"."""
    return str(key).rstrip("|")


def _output_of(result: events_pb2.InferenceResult) -> InferenceOutput:
    return InferenceOutput(
        labels=[d.label for d in result.detections], scores=[d.score for d in result.detections],
        boxes=[(d.box.x1, d.box.y1, d.box.x2, d.box.y2) for d in result.detections],
        width=result.width, height=result.height, embedding=list(result.embedding) or None)


def _columns_of(results: Sequence[events_pb2.InferenceResult]) -> InferenceColumns:
    """Results as columns, read straight from the protobuf: no object per detection."""
    counts, sizes, labels, numbers, embeddings, dims = [], [], [], [], [], set()
    for result in results:
        detections = result.detections
        counts.append(len(detections))
        sizes += (result.width, result.height)
        for d in detections:
            box = d.box
            labels.append(d.label)
            numbers += (d.score, box.x1, box.y1, box.x2, box.y2)
        embedding = result.embedding
        if len(embedding):
            embeddings += embedding
            dims.add(len(embedding))
    if len(dims) > 1:
        raise ValueError(f"embeddings of unequal lengths in one window: {sorted(dims)}")
    sizes_ = np.array(sizes, np.float64).reshape(-1, 2)
    numbers_ = np.array(numbers, np.float64).reshape(-1, 5)
    return InferenceColumns(
        counts=np.array(counts, np.int64), widths=sizes_[:, 0], heights=sizes_[:, 1], labels=labels,
        scores=numbers_[:, 0], boxes=numbers_[:, 1:],
        embeddings=np.array(embeddings, np.float32).reshape(-1, dims.pop()) if dims else None)


def _seconds(ts) -> float:
    return ts.seconds + ts.nanos / 1e9


@dataclass(slots=True)
class _Event:
    """A decoded message waiting to be recorded into its subject's window."""

    message: SourceMessage
    index: int  # in its batch
    time: float  # event time, seconds
    kind: str  # "frame", "result" or "sensor"
    value: object  # the decoded event


class DriftProcessor:
    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor
        self.pairing = ShadowPairing()
        # subject -> {"topic:partition": last offset applied}
        self.applied: dict[DriftKey, dict[str, int]] = {}
        self.touched: set[DriftKey] = set()
        # The newest event time read (seconds), replays included: how far the input has been read.
        self.newest_event_time: float | None = None
        # Cameras a shadow model has answered for: only their primary results wait to be paired (a primary with
        # no shadow would otherwise hold a place among the results waiting for their counterpart).
        self.shadowed: set[str] = set()

    # --- input --------------------------------------------------------------------------------------------
    def handle(self, message: SourceMessage) -> Rejected | None:
        """One message (see handle_batch)."""
        rejected = self.handle_batch([message])
        return rejected[0][1] if rejected else None

    def handle_batch(self, messages: Sequence[SourceMessage]) -> list[tuple[int, Rejected]]:
        """Records a batch of messages into their subjects' windows, each subject's in the batch's order. Messages
        that can never be read are returned as (index in the batch, Rejected) for the caller to dead-letter; those
        that are late, replays or not drift's business are counted. (faust's Messages do as well as
        SourceMessages: topic, partition, offset and value are all that is read.)"""
        tally: Tally[tuple[str, str]] = Tally()
        rejected: list[tuple[int, Rejected]] = []
        subjects: dict[DriftKey, list[_Event]] = {}
        newest = self.newest_event_time
        for index, message in enumerate(messages):
            try:
                decoded = self._decode(message, index)
            except DecodeError as exc:
                rejected.append((index, Rejected("malformed_event", f"not a {message.topic} event: {exc}")))
                continue
            except (ValueError, TypeError) as exc:  # a field drift cannot take
                rejected.append((index, Rejected("invalid_event", str(exc))))
                continue
            if isinstance(decoded, str):
                tally[message.topic, decoded] += 1
                continue
            key, event = decoded
            newest = event.time if newest is None or event.time > newest else newest
            events = subjects.get(key)
            if events is None:
                subjects[key] = [event]
            else:
                events.append(event)
        self.newest_event_time = newest
        for key, events in subjects.items():
            self._record(key, events, tally, rejected)
        for (topic, outcome), count in tally.items():
            EVENTS.labels(topic, outcome).inc(count)
        for index, rejection in rejected:
            EVENTS.labels(messages[index].topic, rejection.reason).inc()
        rejected.sort(key=lambda item: item[0])
        return rejected

    def _decode(self, message: SourceMessage, index: int) -> tuple[DriftKey, _Event] | str:
        topic, value = message.topic, message.value or b""  # a tombstone reads as an empty event
        if topic == INFERENCE or topic == INFERENCE_SHADOW:
            result = events_pb2.InferenceResult.FromString(value)
            if result.sensor_id or not result.camera_id:
                return "not_a_camera"
            if result.shadow:
                self.shadowed.add(result.camera_id)
            model = result.model
            time_ = result.envelope.event_time
            return (DriftKey(f"camera/{result.camera_id}", model.name, model.version),
                    _Event(message, index, time_.seconds + time_.nanos / 1e9, "result", result))
        if topic == FRAMES:
            frame = events_pb2.Frame.FromString(value)
            if not frame.HasField("image_stats"):
                return "no_image_stats"  # from an ingest that predates them: nothing to watch
            return (DriftKey(f"camera/{frame.camera_id}"),
                    _Event(message, index, _seconds(frame.envelope.event_time), "frame", frame.image_stats))
        if topic == INFERENCE_SENSORS:
            result = events_pb2.SensorAnomalyResult.FromString(value)
            if not result.sensor_id:
                raise ValueError("sensor result without a sensor id")
            return (DriftKey(f"sensor/{result.sensor_id}"),
                    _Event(message, index, _seconds(result.envelope.event_time), "sensor", result))
        return "not_a_source"

    def _record(self, key: DriftKey, events: list[_Event], tally: Tally, rejected: list) -> None:
        """One subject's events of a batch: replays skipped by the offsets applied, then each run of events that
        fall in one window (and are of one kind) recorded at once. Windows an event's time closes are closed
        before its run is recorded, as event by event (they are other, earlier windows)."""
        applied = self.applied.setdefault(key, {})
        fresh = []
        for event in events:
            message = event.message
            position = f"{message.topic}:{message.partition}"
            if message.offset <= applied.get(position, -1):
                tally[message.topic, "replayed"] += 1
                continue
            applied[position] = message.offset
            fresh.append(event)
        if not fresh:
            return
        self.touched.add(key)
        size = self.monitor.windows.size_s
        run_start, run = None, []
        for event in fresh:
            start = (math.floor(event.time / size) * size, event.kind)
            if start != run_start and run:
                self._record_run(key, run, tally, rejected)
                run = []
            run_start = start
            run.append(event)
        self._record_run(key, run, tally, rejected)

    def _record_run(self, key: DriftKey, run: list[_Event], tally: Tally, rejected: list) -> None:
        window = self.monitor.window_for(key, max(event.time for event in run))
        if window is None:
            for event in run:
                tally[event.message.topic, "late"] += 1
            return
        kind = run[0].kind
        try:
            if kind == "result":
                record_inferences(window, _columns_of([event.value for event in run]))
                self._pair_with_shadows(key, run)
            elif kind == "frame":
                record_frames(window, {name: [getattr(event.value, name) for event in run] for name in IMAGE_STATS})
            else:
                for event in run:
                    record_sensor_reading(window, event.value.value)
                    record_sensor_score(window, event.value.score, event.value.anomaly)
        except (ValueError, TypeError) as exc:
            # The recording functions check before they change the window, so nothing of the run was recorded.
            if len(run) > 1:  # one bad event spoils a run's columns: record its events one by one
                for event in run:
                    self._record_run(key, [event], tally, rejected)
                return
            rejected.append((run[0].index, Rejected("invalid_event", str(exc))))
            return
        for event in run:
            tally[event.message.topic, "recorded"] += 1

    def _pair_with_shadows(self, key: DriftKey, run: list[_Event]) -> None:
        """Primary and shadow results of a frame meet (in either order, across batches); the disagreement goes
        into the primary's window."""
        for event in run:
            result = event.value
            if not result.shadow and result.camera_id not in self.shadowed:
                continue
            paired = self.pairing.offer(result.frame_event_id, _output_of(result), result.shadow,
                                        None if result.shadow else (key, event.time))
            if paired is not None and paired[0] is not None:
                (primary_key, primary_time), disagreement = paired
                primary_window = self.monitor.window_for(primary_key, primary_time)
                if primary_window is not None:
                    record_shadow_disagreement(primary_window, disagreement)

    # --- output -------------------------------------------------------------------------------------------
    def take_output(self, now: float | None = None, close_idle: bool = False) -> ProcessorOutput:
        """The events of every window closed since the last call (by newer events, or by the clock when
        close_idle): a DriftWindow each, a DriftAlert on vigil.monitoring for each raise and clear, and the
        references completed (for the caller to store, then announce with reference_announcement)."""
        now = time.time() if now is None else now
        outcomes = self.monitor.close_idle(now) if close_idle else self.monitor.take_outcomes(now)
        output = ProcessorOutput()
        for outcome in outcomes:
            self.touched.add(outcome.window.key)
            output.messages.append(self._window_message(outcome))
            if outcome.decision is not None:
                output.messages.append(self._alert_message(outcome))
            if outcome.new_reference is not None:
                output.references.append(outcome.new_reference)
        return output

    def _window_message(self, outcome: WindowOutcome) -> Outbound:
        window, verdict = outcome.window, outcome.verdict
        key = window.key
        status = {"compared": "scored", "no_reference": "reference"}.get(verdict.status, verdict.status)
        WINDOWS.labels(status).inc()
        alert = self.monitor.hysteresis.states.get(key)
        alert_state = "alert" if alert is not None and alert.open else \
            "drifting" if alert is not None and alert.drifting_run else "ok"
        event = events_pb2.DriftWindow(
            envelope=self._envelope(key, window.end, derived_id("window", subject_of(key), window.start)),
            subject=subject_of(key), camera_id=_camera(key), sensor_id=_sensor(key),
            model=events_pb2.ModelRef(name=key.model_name, version=key.model_version),
            count=verdict.frames, status=status, alert_state=alert_state,
            summary=json.dumps(window.to_json(), separators=(",", ":")).encode(),
            scores=[events_pb2.DriftScore(feature=r.feature, metric=r.metric, score=r.score, threshold=r.threshold,
                                          drifted=r.drifted, p_value=r.p_value, window_count=r.current_size,
                                          reference_count=r.reference_size) for r in verdict.results])
        event.window_start.FromNanoseconds(int(window.start * 1e9))
        event.window_end.FromNanoseconds(int(window.end * 1e9))
        return Outbound(DRIFT_WINDOWS, event.SerializeToString(), subject_of(key).encode())

    def _alert_message(self, outcome: WindowOutcome) -> Outbound:
        decision, key = outcome.decision, outcome.window.key
        ALERTS.labels(decision.action).inc()
        top = decision.features
        first = top[0] if top else None
        alert = events_pb2.DriftAlert(
            model_name=key.model_name, model_version=key.model_version, camera_id=_camera(key),
            sensor_id=_sensor(key), state="raised" if decision.action == "raise" else "cleared",
            feature=first.feature if first else "", metric=first.metric if first else "",
            score=first.score if first else 0.0, threshold=first.threshold if first else 0.0,
            windows=decision.windows,
            top_features=[events_pb2.DriftScore(feature=r.feature, metric=r.metric, score=r.score,
                                                threshold=r.threshold, drifted=True, p_value=r.p_value)
                          for r in top])
        alert.window_start.FromNanoseconds(int(decision.window_start * 1e9))
        alert.window_end.FromNanoseconds(int(decision.window_end * 1e9))
        envelope = self._envelope(key, decision.window_end,
                                  derived_id("alert", subject_of(key), decision.window_end, decision.action))
        event = events_pb2.MonitoringEvent(envelope=envelope, drift_alert=alert)
        return Outbound(MONITORING, event.SerializeToString(), subject_of(key).encode())

    def _envelope(self, key: DriftKey, event_time_s: float, event_id: str) -> events_pb2.Envelope:
        return new_envelope(subject_of(key).split("|")[0], PRODUCER, event_time_ns=int(event_time_s * 1e9),
                            event_id=event_id, trace_id=event_id.replace("-", ""))

    # --- state --------------------------------------------------------------------------------------------
    def take_touched_states(self) -> dict[str, bytes]:
        """subject -> its state (JSON), for every subject changed since the last call."""
        states = {subject_of(key): self.state_of(key) for key in sorted(self.touched)}
        self.touched.clear()
        return states

    def state_of(self, key: DriftKey) -> bytes:
        state = {"key": [key.subject, key.model_name, key.model_version], "applied": self.applied.get(key, {}),
                 "monitor": self.monitor.key_state(key)}
        # Not compressed: its bulk is float32 samples, which zlib shrinks by a quarter (base64's overhead) at
        # several milliseconds a subject per batch, the most of a snapshot's cost.
        return json.dumps(state, separators=(",", ":")).encode()

    def restore(self, data: bytes) -> DriftKey:
        state = json.loads(data if data[:1] == b"{" else zlib.decompress(data))  # compressed by earlier versions
        key = DriftKey(*state["key"])
        self.applied[key] = dict(state["applied"])
        self.monitor.restore_key(key, state["monitor"])
        return key


# DriftReference.source of a profile's source; any other (a re-learning's reason, "promotion of yolov3-tiny version
# 4") is announced as it is, so `vigil drift reference show` tells why the reference is what it is.
ANNOUNCED_SOURCES = {FIRST_WINDOWS: "auto", TIME_RANGE: "manual"}


def reference_announcement(profile: ReferenceProfile, ref: events_pb2.ObjectRef) -> Outbound:
    """The DriftReference for a profile stored at `ref`, keyed by subject on the compacted topic."""
    key = profile.key
    subject = subject_of(key)
    announcement = events_pb2.DriftReference(
        envelope=new_envelope(subject.split("|")[0], PRODUCER, event_id=derived_id("reference", subject, ref.sha256)),
        subject=subject, camera_id=_camera(key), sensor_id=_sensor(key),
        model=events_pb2.ModelRef(name=key.model_name, version=key.model_version), profile=ref,
        source=ANNOUNCED_SOURCES.get(profile.source, profile.source), set_by=profile.set_by,
        windows=profile.windows)
    announcement.set_time.FromNanoseconds(int(profile.set_at * 1e9))
    announcement.range_start.FromNanoseconds(int(profile.start * 1e9))
    announcement.range_end.FromNanoseconds(int(profile.end * 1e9))
    return Outbound(DRIFT_REFERENCES, announcement.SerializeToString(), subject.encode())


def reference_withdrawal(key: DriftKey) -> Outbound:
    """The subject's tombstone on vigil.drift.references: its reference is being learnt afresh, and a restarted
    service must not load the old one back."""
    return Outbound(DRIFT_REFERENCES, None, subject_of(key).encode())


def _camera(key: DriftKey) -> str:
    return key.subject.removeprefix("camera/") if key.subject.startswith("camera/") else ""


def _sensor(key: DriftKey) -> str:
    return key.subject.removeprefix("sensor/") if key.subject.startswith("sensor/") else ""
