"""Kafka side of the sensor path: vigil.sensors in, one SensorAnomalyResult per scored reading out to
vigil.inference.sensors (keyed by sensor id), readings that can never be scored to the dead-letter topic.

Each sensor's window of recent readings lives in this process's memory (SensorWindows): vigil.sensors is keyed
by sensor id, so a sensor's readings reach one consumer, in order. The log is the windows' backup: when
partitions are assigned (a start, a rebalance that moves them here), the readings before the group's committed
offsets, up to sensor_warmup_s old, are read again into the windows without being scored, so a sensor whose
window was full before is scored from its next reading on. A sensor with fewer readings in that span warms up
on live readings (counted in vigil_inference_sensor_readings_total{outcome="warming_up"})."""
from __future__ import annotations

import threading
import time
import uuid
from typing import Callable, Sequence

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from prometheus_client import Counter

from libs.common.kafka import KafkaRunner, Outbound, Outcome, Rejected, decode_each
from libs.common.logs import get_logger, trace_context
from libs.common.ops import Health, flag_check
from libs.common.service import Task
from libs.common.settings import KafkaSettings
from libs.common.topics import INFERENCE_SENSORS, SENSORS
from protos import events_pb2
from services.inference.model_dirs import built, sensor_anomaly_model_dir
from services.inference.sensors.scoring import InvalidReading, SensorAnomalyScorer, SensorReadingScorer
from services.inference.settings import InferenceSettings

READINGS = Counter("vigil_inference_sensor_readings_total", "Sensor readings consumed, by what became of them",
                   ["outcome"])
GROUP_ID = "vigil-inference-sensors"


def sensor_batch_handler(scorer: SensorReadingScorer):
    def handle(batch: Sequence[Message]) -> list[Outcome]:
        readings, positions, outcomes = decode_each(batch, events_pb2.SensorReading)
        for i, result in zip(positions, scorer.run(readings)):
            if isinstance(result, InvalidReading):
                outcomes[i] = Rejected(result.reason, result.detail)
            elif isinstance(result, str):
                READINGS.labels(result).inc()
                outcomes[i] = []
            else:
                READINGS.labels("anomaly" if result.anomaly else "normal").inc()
                with trace_context(result.envelope.trace_id):
                    if result.anomaly:
                        get_logger(__name__).info("sensor anomaly", sensor=result.sensor_id, value=result.value,
                                                  score=round(result.score, 2))
                outcomes[i] = [Outbound(INFERENCE_SENSORS, result.SerializeToString(), result.sensor_id.encode())]
        return outcomes  # type: ignore[return-value]

    return handle


def rebuild_windows(client_config: dict[str, str], consumer: Consumer, partitions: list[TopicPartition],
                    scorer: SensorReadingScorer, lookback_s: float, timeout_s: float = 120.0,
                    progress: Callable[[], None] = lambda: None) -> int:
    """Reads vigil.sensors again from lookback_s ago up to the group's committed offset of each assigned partition,
    into the scorer's windows (SensorReadingScorer.warm); returns how many readings went in. Nothing committed
    yet (a new group): nothing to rebuild, every reading is consumed anyway. `progress` is called as it reads
    (the consume loop's heartbeat: the rebuild runs inside its rebalance callback)."""
    log = get_logger(__name__)
    if lookback_s <= 0:
        return 0
    started = time.monotonic()
    ends = {p.partition: p.offset for p in consumer.committed(partitions, timeout=10) if p.offset > 0}
    if not ends:
        return 0
    reader = Consumer({**client_config, "group.id": f"vigil-sensor-windows-{uuid.uuid4().hex[:12]}",
                       "enable.auto.commit": False, "enable.partition.eof": True})
    warmed = 0
    try:
        since_ms = int((time.time() - lookback_s) * 1000)
        found = reader.offsets_for_times([TopicPartition(SENSORS, p, since_ms) for p in ends], timeout=10)
        # -1: nothing as recent as since_ms in that partition.
        starts = {tp.partition: tp.offset for tp in found if 0 <= tp.offset < ends[tp.partition]}
        reader.assign([TopicPartition(SENSORS, p, offset) for p, offset in starts.items()])
        pending = set(starts)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            progress()
            handled = []
            for msg in reader.consume(1000, 0.5):
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                    continue
                if msg.partition() not in pending:
                    continue
                if msg.offset() >= ends[msg.partition()]:
                    pending.discard(msg.partition())
                    continue
                handled.append(msg)
                if msg.offset() == ends[msg.partition()] - 1:
                    pending.discard(msg.partition())
            # What does not parse was dead-lettered the first time: left out again.
            warmed += scorer.warm(decode_each(handled, events_pb2.SensorReading)[0])
        if pending:
            log.warning("sensor windows not fully rebuilt in time", partitions=sorted(pending), timeout_s=timeout_s)
    finally:
        reader.close()
    log.info("sensor windows rebuilt from vigil.sensors", readings=warmed, sensors=len(scorer.windows),
             partitions=len(starts), seconds=round(time.monotonic() - started, 2))
    return warmed


def sensor_path_task(settings: InferenceSettings, kafka: KafkaSettings, health: Health) -> Task | None:
    """When enabled: the task that loads the sensor anomaly model (built by the install step) and consumes
    vigil.sensors, group vigil-inference-sensors; the service runtime runs it on a thread of its own. Readiness
    waits for the model; liveness for the loop. A failure (the model cannot load, Kafka cannot take the results)
    stops the whole service, which its supervisor restarts, rather than leaving it half working."""
    if not settings.consume_sensors:
        return None
    log = get_logger(__name__)
    loaded = threading.Event()
    health.readiness["sensor_model_ready"] = flag_check(loaded, "sensor anomaly model loaded")

    def run(stop: threading.Event) -> None:
        model_dir = built(settings.sensor_model_dir or sensor_anomaly_model_dir(), "sensor anomaly model")
        reading_scorer = SensorReadingScorer(SensorAnomalyScorer.load(model_dir, settings.device))
        scorer = reading_scorer.scorer

        def refill_windows(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            try:
                rebuild_windows(kafka.client_config(), consumer, partitions, reading_scorer,
                                settings.sensor_warmup_s, progress=runner.heartbeat.beat)
            except Exception:
                log.warning("sensor windows not rebuilt; they fill from live readings", exc_info=True)

        runner = KafkaRunner(kafka, service="inference-sensors", group_id=GROUP_ID, topics=[SENSORS],
                             handler=sensor_batch_handler(reading_scorer),
                             max_batch=settings.sensor_batch_max_readings, max_wait_s=0.05,
                             on_assigned=refill_windows)
        health.liveness["sensor_consume_loop"] = runner.heartbeat.check
        loaded.set()
        log.info("sensor path", model=scorer.name, version=scorer.version, threshold=scorer.threshold)
        runner.run(stop)

    return run
