"""The topic catalog: every Kafka topic Vigil uses, with its partitions and retention, created
idempotently at service start so that a fresh cluster needs no manual step."""
from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka import KafkaException, KafkaError

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


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    config: dict[str, str] = field(default_factory=dict)

    def topic_config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), **self.config}


CATALOG: tuple[TopicSpec, ...] = (
    # Frames are big and only useful while fresh: short retention; keyed by camera id so a camera's
    # frames stay in order on one partition.
    TopicSpec(FRAMES, 6, 2 * HOUR_MS, {"max.message.bytes": str(2 * 1024 * 1024)}),
    TopicSpec(SENSORS_RAW, 3, DAY_MS),
    TopicSpec(SENSORS, 3, 7 * DAY_MS),
    TopicSpec(INFERENCE, 6, 7 * DAY_MS),
    TopicSpec(MONITORING, 3, 7 * DAY_MS),
    # Dead letters keep the original bytes; kept long enough for someone to look at them and replay.
    TopicSpec(DLQ, 3, 14 * DAY_MS, {"max.message.bytes": str(2 * 1024 * 1024)}),
    # The camera registry: the latest config per camera forever (compacted, no time limit). Its partitions
    # are how cameras are spread over ingest replicas, so there are more than replicas will ever be.
    TopicSpec(CAMERAS, 12, -1, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0",
                                "segment.ms": str(HOUR_MS), "delete.retention.ms": str(DAY_MS)}),
    # The sensor registry: the latest definition per sensor forever (compacted). Every ingest replica reads
    # all of it, so one partition keeps it in one order.
    TopicSpec(SENSORS_REGISTRY, 1, -1, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0",
                                        "segment.ms": str(HOUR_MS), "delete.retention.ms": str(DAY_MS)}),
    # Model registry announcements (ModelVersion), keyed by model name: compaction keeps each model's latest
    # change, its current primary. One partition keeps one order of changes.
    TopicSpec(MODELS, 1, -1, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0",
                              "segment.ms": str(HOUR_MS), "delete.retention.ms": str(DAY_MS)}),
    # A shadow model's results (shadow=true), kept apart from vigil.inference so no consumer of the primary
    # stream ever sees them; keyed by camera id like vigil.inference.
    TopicSpec(INFERENCE_SHADOW, 6, 7 * DAY_MS),
    # Sensor anomaly results (SensorAnomalyResult), keyed by sensor id like vigil.sensors; a topic of their own,
    # since readers of vigil.inference expect InferenceResult.
    TopicSpec(INFERENCE_SENSORS, 3, 7 * DAY_MS),
)


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
