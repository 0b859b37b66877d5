"""Kafka side of the sensor path: vigil.sensors in, one SensorAnomalyResult per scored reading out to
vigil.inference.sensors (keyed by sensor id), readings that can never be scored to the dead-letter topic.

Each sensor's window of recent readings lives in this process's memory (SensorWindows): vigil.sensors is keyed
by sensor id, so a sensor's readings reach one consumer, in order. A restart, or a rebalance that moves a
partition to another replica, starts those sensors' windows empty: their next WINDOW readings are consumed
but not scored (a warm-up, counted in vigil_inference_sensor_readings_total{outcome="warming_up"})."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Sequence

from confluent_kafka import Message
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from libs.common.kafka import KafkaRunner, Outbound, Outcome, Rejected
from libs.common.logs import get_logger, trace_context
from libs.common.ops import flag_check
from libs.common.service import ServiceRuntime
from libs.common.settings import KafkaSettings
from libs.common.topics import INFERENCE_SENSORS, SENSORS
from protos import events_pb2
from services.inference.sensor_anomaly import ensure_sensor_anomaly_model
from services.inference.sensor_scoring import InvalidReading, SensorAnomalyScorer, SensorReadingScorer
from services.inference.settings import InferenceSettings

READINGS = Counter("vigil_inference_sensor_readings_total", "Sensor readings consumed, by what became of them",
                   ["outcome"])
GROUP_ID = "vigil-inference-sensors"


def sensor_batch_handler(scorer: SensorReadingScorer):
    def handle(batch: Sequence[Message]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        readings, positions = [], []
        for i, msg in enumerate(batch):
            try:
                readings.append(events_pb2.SensorReading.FromString(msg.value() or b""))
                positions.append(i)
            except DecodeError as exc:
                outcomes[i] = Rejected("malformed_event", f"not a SensorReading event: {exc}")
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


@dataclass
class SensorPath:
    """The sensor path running on its own thread beside the frame path; `failure` holds what stopped it."""

    thread: threading.Thread
    loaded: threading.Event
    failure: BaseException | None = field(default=None)

    def join(self, timeout_s: float) -> None:
        self.thread.join(timeout=timeout_s)

    def raise_if_failed(self) -> None:
        """Called last, so the process exits non-zero (and is restarted) after a clean shutdown."""
        if self.failure is not None:
            raise RuntimeError("the sensor path failed") from self.failure


def start_sensor_path(settings: InferenceSettings, kafka: KafkaSettings,
                      runtime: ServiceRuntime) -> SensorPath | None:
    """When enabled: loads (or first trains into the cache) the sensor anomaly model and consumes vigil.sensors
    on a thread, group vigil-inference-sensors. Readiness waits for the model; liveness for the loop. A failure
    (the model cannot load, Kafka cannot take the results) stops the whole service, which its supervisor
    restarts, rather than leaving it half working."""
    if not settings.consume_sensors:
        return None
    log = get_logger(__name__)
    loaded = threading.Event()
    runtime.health.readiness["sensor_model_ready"] = flag_check(loaded, "sensor anomaly model loaded")

    def run() -> None:
        try:
            model_dir = settings.sensor_model_dir or ensure_sensor_anomaly_model()
            scorer = SensorAnomalyScorer.load(model_dir, settings.device)
            runner = KafkaRunner(kafka, service="inference-sensors", group_id=GROUP_ID, topics=[SENSORS],
                                 handler=sensor_batch_handler(SensorReadingScorer(scorer)),
                                 max_batch=settings.sensor_batch_max_readings, max_wait_s=0.05)
            runtime.health.liveness["sensor_consume_loop"] = runner.heartbeat.check
            loaded.set()
            log.info("sensor path", model=scorer.name, version=scorer.version, threshold=scorer.threshold)
            runner.run(runtime.stop)
        except BaseException as exc:
            log.exception("sensor path failed; stopping the service")
            path.failure = exc
            runtime.stop.set()

    path = SensorPath(threading.Thread(target=run, name="sensor-path", daemon=True), loaded)
    path.thread.start()
    return path
