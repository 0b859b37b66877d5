"""The topic catalog: every Kafka topic Vigil uses, with its partitions, retention and the protobuf message it
carries, created idempotently at service start so that a fresh cluster needs no manual step. Which service owns
a topic is said by the service's declaration (services/<name>/declaration.py); a test checks that every topic
has exactly one owner, or is shared."""
from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka import KafkaException, KafkaError
from google.protobuf.message import Message

from protos import events_pb2

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

FRAMES = "vigil.frames"
SENSORS_RAW = "vigil.sensors.raw"
SENSORS = "vigil.sensors"
INFERENCE = "vigil.inference"
MONITORING = "vigil.monitoring"
DLQ = "vigil.dlq"
CAMERAS = "vigil.cameras"
SENSORS_REGISTRY = "vigil.sensors.registry"
MODELS = "vigil.models"
INFERENCE_SHADOW = "vigil.inference.shadow"
INFERENCE_SENSORS = "vigil.inference.sensors"
ANNOTATION_TASKS = "vigil.annotation.tasks"
ANNOTATION_LABELS = "vigil.annotations"
DATASETS = "vigil.datasets"
DRIFT_WINDOWS = "vigil.drift.windows"
DRIFT_REFERENCES = "vigil.drift.references"
TRAINING = "vigil.training"
ROLLOUTS = "vigil.rollouts"

# Produced by every service: no single owner.
SHARED_TOPICS = frozenset({MONITORING, DLQ})


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    # The payload's protobuf type; None for the dead-letter topic, whose messages may be anything.
    message: type[Message] | None
    config: dict[str, str] = field(default_factory=dict)

    def topic_config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), **self.config}


# A keyed table: compaction keeps each key's latest value forever; tombstones (deletes) live a day, long enough
# for every follower to see them.
COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": str(HOUR_MS),
             "delete.retention.ms": str(DAY_MS)}

CATALOG: tuple[TopicSpec, ...] = (
    # Frames are big and only useful while fresh: short retention; keyed by camera id so a camera's
    # frames stay in order on one partition.
    TopicSpec(FRAMES, 6, 2 * HOUR_MS, events_pb2.Frame, {"max.message.bytes": str(2 * 1024 * 1024)}),
    TopicSpec(SENSORS_RAW, 3, DAY_MS, events_pb2.SensorReading),
    TopicSpec(SENSORS, 3, 7 * DAY_MS, events_pb2.SensorReading),
    TopicSpec(INFERENCE, 6, 7 * DAY_MS, events_pb2.InferenceResult),
    TopicSpec(MONITORING, 3, 7 * DAY_MS, events_pb2.MonitoringEvent),
    # Dead letters keep the original bytes; kept long enough for someone to look at them and replay.
    TopicSpec(DLQ, 3, 14 * DAY_MS, None, {"max.message.bytes": str(2 * 1024 * 1024)}),
    # The camera registry: the latest config per camera forever (compacted, no time limit). Its partitions
    # are how cameras are spread over ingest replicas, so there are more than replicas will ever be.
    TopicSpec(CAMERAS, 12, -1, events_pb2.CameraConfig, COMPACTED),
    # The sensor registry: the latest definition per sensor forever (compacted). Every ingest replica reads
    # all of it, so one partition keeps it in one order.
    TopicSpec(SENSORS_REGISTRY, 1, -1, events_pb2.SensorDefinition, COMPACTED),
    # Model registry announcements (ModelVersion), keyed by model name: compaction keeps each model's latest
    # change, its current primary. One partition keeps one order of changes.
    TopicSpec(MODELS, 1, -1, events_pb2.ModelVersion, COMPACTED),
    # A shadow model's results (shadow=true), kept apart from vigil.inference so no consumer of the primary
    # stream ever sees them; keyed by camera id like vigil.inference.
    TopicSpec(INFERENCE_SHADOW, 6, 7 * DAY_MS, events_pb2.InferenceResult),
    # Sensor anomaly results (SensorAnomalyResult), keyed by sensor id like vigil.sensors; a topic of their own,
    # since readers of vigil.inference expect InferenceResult.
    TopicSpec(INFERENCE_SENSORS, 3, 7 * DAY_MS, events_pb2.SensorAnomalyResult),
    # The annotation queue (AnnotationTask), keyed by task id and compacted: the latest state of every task,
    # forever (a task is small; its image is in the annotation bucket). Replicas and restarts rebuild from it.
    TopicSpec(ANNOTATION_TASKS, 3, -1, events_pb2.AnnotationTask, COMPACTED),
    # People's answers and reviewers' decisions (AnnotationLabel), keyed by task id. Kept forever: labels are
    # what datasets are built from, and every answer (a relabel too) stays for lineage and audit.
    TopicSpec(ANNOTATION_LABELS, 3, -1, events_pb2.AnnotationLabel),
    # Every published dataset version (DatasetVersion), keyed by dataset name, kept forever and not compacted:
    # each version stays announced, so a model's lineage can always be followed back. One partition, one order.
    TopicSpec(DATASETS, 1, -1, events_pb2.DatasetVersion),
    # Every closed drift window with its scores (DriftWindow), keyed by subject (camera and model, or sensor):
    # the metrics sink's drift_scores; a month, like the store keeps them at least.
    TopicSpec(DRIFT_WINDOWS, 3, 30 * DAY_MS, events_pb2.DriftWindow),
    # The reference profile of each drift subject (DriftReference, the profile itself in the object store),
    # keyed by subject: compacted, the latest reference per subject forever.
    TopicSpec(DRIFT_REFERENCES, 1, -1, events_pb2.DriftReference, COMPACTED),
    # Training jobs' progress and outcomes (TrainingRun), keyed by base model: a month of history.
    TopicSpec(TRAINING, 1, 30 * DAY_MS, events_pb2.TrainingRun),
    # Every rollout step of a candidate model (RolloutEvent), keyed by model name, kept forever: with the
    # registry's history it is how a model came to serve (or why it was rolled back).
    TopicSpec(ROLLOUTS, 1, -1, events_pb2.RolloutEvent),
)

TOPIC_OF_NAME: dict[str, TopicSpec] = {spec.name: spec for spec in CATALOG}


def message_type(topic: str) -> type[Message] | None:
    """The protobuf type a catalog topic carries (None for the dead-letter topic and unknown topics)."""
    spec = TOPIC_OF_NAME.get(topic)
    return spec.message if spec is not None else None


def ensure_topics(
    client_config: dict[str, str], replication_factor: int = 1, specs: tuple[TopicSpec, ...] = CATALOG,
    timeout_s: float = 30.0,
) -> list[str]:
    """Creates the topics that do not exist yet; returns the names it created. Existing topics are left
    as they are (a changed partition count or retention is an operator's decision, not a start-up's)."""
    admin = AdminClient(client_config)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, s.partitions, replication_factor, config=s.topic_config()) for s in missing],
        operation_timeout=timeout_s,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            # Another replica may have created it between our listing and our request.
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created
