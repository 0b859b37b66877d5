"""Kafka side of the sink: decodes the events of every topic that reports something (inference results,
monitoring events, sensor anomaly results, model version announcements, drift windows, annotation tasks and
labels, dataset events, training runs, rollout steps, dead letters), hands their rows to the sink in one insert per table per batch, and
dead-letters the events that cannot be stored. Also: consumer lag from librdkafka's statistics, and the newest
frame of each camera for the dashboard."""
from __future__ import annotations

import json
import threading
from typing import Callable, Sequence

from confluent_kafka import OFFSET_END, Consumer, Message, TopicPartition
from google.protobuf.message import DecodeError, Message as ProtoMessage
from prometheus_client import Gauge

from libs.common.envelope import new_envelope
from libs.common.kafka import DeliveringProducer, DeliveryFailed, Outbound, Outcome, Rejected, Retryable
from libs.common.logs import get_logger
from libs.common.topics import (ANNOTATION_LABELS, ANNOTATION_TASKS, DATASETS, DRIFT_WINDOWS, FRAMES, INFERENCE,
                                INFERENCE_SENSORS, MODELS, MONITORING, ROLLOUTS, TOPIC_OF_NAME, TRAINING,
                                message_type)
from protos import events_pb2
from services.metrics.rows import INFERENCE as INFERENCE_TABLE, ANNOTATION_TASKS as ANNOTATION_TASKS_TABLE, \
    ANNOTATIONS, DATASET_EVENTS, DEAD_LETTERS, MODEL_VERSIONS, ROLLOUT_EVENTS, SENSOR_ANOMALIES, TRAINING_RUNS, \
    InvalidEvent, Rows, annotation_label_row, annotation_task_row, dataset_event_row, dead_letter_row, \
    drift_window_rows, inference_row, model_version_row, monitoring_rows, rollout_event_row, sensor_anomaly_row, \
    training_run_row
from services.metrics.latest_frames import LatestFrames
from services.metrics.protobuf_ingest import FramedBatch, StagedBatch, UnparseableBatch, frame_batch
from services.metrics.sink import EventSink
from services.metrics.store_failures import StoreHealth, is_rejection, isolate_rejections, rejection_reason

log = get_logger(__name__)

CONSUMER_LAG = Gauge("vigil_metrics_consumer_lag", "Messages not yet consumed, per partition", ["topic", "partition"])


def _event(msg: Message, message: type[ProtoMessage]) -> ProtoMessage:
    """The message as an event of `message`, which must carry an event id (the sink dedupes by it)."""
    event = message.FromString(msg.value() or b"")
    if not event.envelope.event_id:
        raise InvalidEvent("envelope.event_id is empty")
    return event


def _inference(event: events_pb2.InferenceResult, msg: Message, rows: Rows) -> None:
    rows[INFERENCE_TABLE.name].append(inference_row(event, msg.timestamp()[1]))


def _add(rows: Rows, more: Rows) -> None:
    for table, table_rows in more.items():
        rows.setdefault(table, []).extend(table_rows)


def _monitoring(event: events_pb2.MonitoringEvent, _msg: Message, rows: Rows) -> None:
    _add(rows, monitoring_rows(event))


def _drift_window(event: events_pb2.DriftWindow, _msg: Message, rows: Rows) -> None:
    _add(rows, drift_window_rows(event))


def _sensor_anomaly(event: events_pb2.SensorAnomalyResult, msg: Message, rows: Rows) -> None:
    rows.setdefault(SENSOR_ANOMALIES.name, []).append(sensor_anomaly_row(event, msg.timestamp()[1]))


def _model_version(event: events_pb2.ModelVersion, _msg: Message, rows: Rows) -> None:
    rows.setdefault(MODEL_VERSIONS.name, []).append(model_version_row(event))


def _annotation_task(event: events_pb2.AnnotationTask, msg: Message, rows: Rows) -> None:
    rows.setdefault(ANNOTATION_TASKS_TABLE.name, []).append(annotation_task_row(event, msg.timestamp()[1]))


def _annotation_label(event: events_pb2.AnnotationLabel, _msg: Message, rows: Rows) -> None:
    rows.setdefault(ANNOTATIONS.name, []).append(annotation_label_row(event))


def _dataset_event(event: events_pb2.DatasetVersion, _msg: Message, rows: Rows) -> None:
    rows.setdefault(DATASET_EVENTS.name, []).append(dataset_event_row(event))


def _training_run(event: events_pb2.TrainingRun, _msg: Message, rows: Rows) -> None:
    rows.setdefault(TRAINING_RUNS.name, []).append(training_run_row(event))


def _rollout(event: events_pb2.RolloutEvent, _msg: Message, rows: Rows) -> None:
    rows.setdefault(ROLLOUT_EVENTS.name, []).append(rollout_event_row(event))


# The rows of each event type the sink stores. Which type a topic carries is the topic catalog's word
# (libs/common/topics.py, TopicSpec.message), not this module's: a topic is decoded as its spec says.
ROWS_OF = {
    events_pb2.InferenceResult: _inference, events_pb2.MonitoringEvent: _monitoring,
    events_pb2.SensorAnomalyResult: _sensor_anomaly, events_pb2.ModelVersion: _model_version,
    events_pb2.DriftWindow: _drift_window, events_pb2.AnnotationTask: _annotation_task,
    events_pb2.AnnotationLabel: _annotation_label, events_pb2.DatasetVersion: _dataset_event,
    events_pb2.TrainingRun: _training_run, events_pb2.RolloutEvent: _rollout,
}
# What the sink reads besides the dead-letter topic.
SINK_TOPICS = (INFERENCE, MONITORING, INFERENCE_SENSORS, MODELS, DRIFT_WINDOWS, ANNOTATION_TASKS, ANNOTATION_LABELS,
               DATASETS, TRAINING, ROLLOUTS)


def topic_decoder(topic: str) -> Callable[[Message, Rows], None]:
    """Decodes a message of `topic` as the type its TopicSpec names and adds its rows; raises ValueError for a
    topic whose type the sink does not store."""
    message = message_type(topic)
    to_rows = ROWS_OF.get(message)
    if to_rows is None:
        raise ValueError(f"the metrics sink stores no {getattr(message, '__name__', 'untyped')} events "
                         f"(topic {topic})")
    compacted = "compact" in TOPIC_OF_NAME[topic].config.get("cleanup.policy", "")

    def decode(msg: Message, rows: Rows) -> None:
        if compacted and msg.value() is None:
            return  # a tombstone of a compacted topic: a key forgotten, no event happened
        to_rows(_event(msg, message), msg, rows)

    return decode


def _dead_letter(msg: Message, rows: Rows) -> None:
    # Never rejected: a dead letter that cannot be read would go back to the dead-letter topic, forever.
    headers = {k: v for k, v in (msg.headers() or []) if v is not None}
    rows[DEAD_LETTERS.name].append(dead_letter_row(
        msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1], headers, msg.key(), len(msg.value() or b"")))


# The outcome of a message stored with nothing to produce: one shared empty list (the runner only iterates it),
# not 100,000 new ones a batch.
_STORED: list = []


class PreparedBatch(list):
    """A batch's messages with their inference events framed (and parsed by the engine) ahead of time
    (MetricsBatchHandler.prepare), so that this work on the next batch overlaps with storing the current one."""

    def __init__(self, messages: Sequence[Message], inference: list[int],
                 framed: FramedBatch | StagedBatch | None) -> None:
        super().__init__(messages)
        self.inference = inference
        self.framed = framed


class MetricsBatchHandler:
    """The runner's batch handler: inference events to the engine's protobuf path in one piece (when the sink has
    it), every other message decoded here; returns each message's outcome (stored, or rejected with a reason)."""

    def __init__(self, sink: EventSink, dlq_topic: str, topics: Sequence[str] = SINK_TOPICS,
                 health: StoreHealth | None = None) -> None:
        self.sink = sink
        self.dlq_topic = dlq_topic
        # Failed attempts at storing in a row: the service's readiness check, and its reports on vigil.monitoring.
        self.health = health or StoreHealth()
        self.decoders: dict[str, Callable[[Message, Rows], None]] = {topic: topic_decoder(topic) for topic in topics}
        self.decoders[dlq_topic] = _dead_letter
        # Topics of InferenceResults: the engine's protobuf path takes them, when the sink has it.
        self.inference_topics = frozenset(t for t in topics if message_type(t) is events_pb2.InferenceResult)

    def prepare(self, batch: Sequence[Message]) -> PreparedBatch:
        """The runner's hook, called for each batch as it is consumed, while the previous one is being written:
        frames the batch's inference events and has the engine parse them into a staging table of their own
        (ProtobufInferenceIngest.stage); nothing is stored yet."""
        prepared = self._framed(batch)
        if prepared.framed is not None:
            prepared.framed = self.sink.protobuf.stage(prepared.framed)
        return prepared

    def _framed(self, batch: Sequence[Message]) -> PreparedBatch:
        if isinstance(batch, PreparedBatch):
            return batch
        if self.sink.protobuf is None:
            return PreparedBatch(batch, [], None)
        inference = [i for i, msg in enumerate(batch) if msg.topic() in self.inference_topics]
        framed = frame_batch([(batch[i].value() or b"", batch[i].timestamp()[1]) for i in inference]) \
            if inference else None
        return PreparedBatch(batch, inference, framed)

    def __call__(self, batch: Sequence[Message]) -> list[Outcome]:
        # A batch the runner did not prepare (e.g. one message handled alone) is framed here and parsed by its
        # write: only the runner's thread stages batches ahead.
        batch = self._framed(batch)
        try:
            outcomes = self._store(batch)
        except Exception as exc:
            if not is_rejection(exc):
                # The store cannot take anything: retry the batch, commit nothing; after a few attempts in a row
                # the sink reports itself unready (self.health).
                self.health.failed(exc)
                raise Retryable(f"insert failed: {exc}") from exc
            outcomes = self._isolate_rejections(batch, exc)
        self.health.succeeded()
        return outcomes

    def _isolate_rejections(self, batch: PreparedBatch, error: Exception) -> list[Outcome]:
        """The store is up but refused the batch: store it in halves until each message it refuses is alone;
        those are dead-lettered with the engine's reason, the rest stored."""
        messages = list(batch)
        log.warning("the store refused the batch; splitting it to isolate the messages it refuses",
                    messages=len(messages), error=rejection_reason(error)[:300])
        try:
            results = isolate_rejections(len(messages), lambda lo, hi: self._store(self._framed(messages[lo:hi])),
                                         error)
        except Exception as exc:
            self.health.failed(exc)
            raise Retryable(f"insert failed while isolating refused messages: {exc}") from exc
        outcomes: list[Outcome] = []
        for msg, result in zip(messages, results):
            if not isinstance(result, BaseException):
                outcomes.append(result)
            elif msg.topic() == self.dlq_topic:
                # Never back to the dead-letter topic, where it would come from again, forever.
                log.error("the store refuses a dead letter; it is not stored", partition=msg.partition(),
                          offset=msg.offset(), error=rejection_reason(result)[:300])
                outcomes.append(_STORED)
            else:
                outcomes.append(Rejected("store_rejected", rejection_reason(result)))
        return outcomes

    def _store(self, batch: PreparedBatch) -> list[Outcome]:
        """Decodes and stores the batch; each message's outcome (stored, or rejected for what it holds). Raises
        what the store raised."""
        outcomes: list[Outcome | None] = [_STORED] * len(batch)
        rows: Rows = {INFERENCE_TABLE.name: [], DEAD_LETTERS.name: []}
        if len(batch.inference) < len(batch):
            inference_set = set(batch.inference)
            self._decode_here(batch, outcomes, [i for i in range(len(batch)) if i not in inference_set], rows)
        if batch.framed is not None:
            try:
                written = self.sink.write_inference_protobuf(batch.framed)
                for index, reason in written.invalid.items():
                    outcomes[batch.inference[index]] = Rejected("invalid_event", reason)
                if written.duplicates:
                    log.info("duplicates skipped", count=written.duplicates, stored=written.stored)
            except UnparseableBatch as exc:
                # Some message is not an InferenceResult: decode this batch here, to find and reject it.
                log.info("the engine could not parse the batch; decoding it here", error=str(exc))
                self._decode_here(batch, outcomes, batch.inference, rows)
        report = self.sink.write(rows)
        if report.duplicates:
            log.info("duplicates skipped", count=report.duplicates, stored=report.stored)
        return outcomes

    def _decode_here(self, batch: Sequence[Message], outcomes: list[Outcome | None], positions, rows: Rows) -> None:
        for position in positions:
            msg = batch[position]
            decode = self.decoders.get(msg.topic())
            try:
                if decode is None:
                    raise InvalidEvent(f"the metrics sink does not read {msg.topic()}")
                decode(msg, rows)
                outcomes[position] = _STORED
            except DecodeError as exc:
                outcomes[position] = Rejected("malformed_event", f"not a valid event of {msg.topic()}: {exc}")
            except InvalidEvent as exc:
                outcomes[position] = Rejected("invalid_event", str(exc))


def store_status_announcer(producer: DeliveringProducer, service: str = "metrics", component: str = "store"
                           ) -> Callable[[bool, str, int], None]:
    """StoreHealth's on_change hook: the store unavailable, or available again, as a ServiceStatus on
    vigil.monitoring keyed by service/component. A Kafka outage is logged, never raised."""
    subject = f"service/{service}"

    def announce(available: bool, reason: str, failures: int) -> None:
        state = "available" if available else "unavailable"
        event = events_pb2.MonitoringEvent(
            envelope=new_envelope(subject, service),
            service_status=events_pb2.ServiceStatus(service=service, component=component, state=state,
                                                    reason=reason[:2000], failures=failures))
        (log.info if available else log.error)("store status", state=state, failures=failures, reason=reason[:300])
        try:
            producer.produce(Outbound(MONITORING, event.SerializeToString(), subject.encode()))
            producer.flush(10)
        except DeliveryFailed as exc:
            log.warning("store status not announced", state=state, error=str(exc))

    return announce


def record_consumer_lag(stats_json: str) -> None:
    """librdkafka's statistics callback (statistics.interval.ms): the lag of each assigned partition."""
    stats = json.loads(stats_json)
    for topic, topic_stats in stats.get("topics", {}).items():
        for partition, p in topic_stats.get("partitions", {}).items():
            if partition == "-1" or p.get("consumer_lag", -1) < 0:
                continue
            CONSUMER_LAG.labels(topic, partition).set(p["consumer_lag"])


class LatestFrameFollower:
    """Follows vigil.frames from its end, keeping each camera's newest JPEGs for the dashboard.

    No consumer group and no commits: the frames of the past are of no interest, so it assigns every
    partition at its end, and at restart starts at the end again. It parses each Frame (a copy of its bytes)
    and decodes no image, so a camera at 5 fps costs next to nothing. Frames kept in the object store
    (claim-check) are not held."""

    def __init__(self, client_config: dict[str, str], frames: LatestFrames, topic: str = FRAMES) -> None:
        self.frames = frames
        self.topic = topic
        self._message = message_type(topic)
        self._consumer = Consumer({
            **client_config, "group.id": "vigil-metrics-latest-frames", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "fetch.wait.max.ms": 200,
            # Bounded memory: a few frames' worth of prefetch, not librdkafka's default of ~64 MiB a partition.
            "queued.max.messages.kbytes": 8192,
        })

    def run(self, stop: threading.Event) -> None:
        try:
            partitions = self._consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            self._consumer.assign([TopicPartition(self.topic, p, OFFSET_END) for p in partitions])
            while not stop.is_set():
                for msg in self._consumer.consume(100, 0.5):
                    if msg.error() is None:
                        self._offer(msg)
        except Exception:
            log.exception("latest-frame follower stopped; the dashboard shows no live frames")
        finally:
            self._consumer.close()

    def _offer(self, msg: Message) -> None:
        try:
            frame = self._message.FromString(msg.value() or b"")
        except DecodeError:
            return  # the inference service dead-letters it; nothing to show
        if frame.camera_id and frame.WhichOneof("payload") == "data" and frame.data:
            self.frames.offer(frame.camera_id, frame.envelope.event_id, frame.data, frame.sequence, frame.width,
                              frame.height,
                              frame.envelope.event_time.ToMilliseconds())
