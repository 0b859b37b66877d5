"""Kafka side of sensor ingest: the batch handler for vigil.sensors.raw (protobuf or JSON in, valid readings to
vigil.sensors, rejects to the DLQ through the runner), and the publisher the HTTP endpoint hands readings to. The
registry view is kept current by its compacted table's follower (registry.py)."""
from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

from confluent_kafka import KafkaError, Message, Producer
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from libs.common.kafka import Outbound, Outcome, Rejected, producer_config
from libs.common.logs import get_logger, trace_context
from libs.common.settings import KafkaSettings
from libs.common.topics import SENSORS
from protos import events_pb2
from services.ingest.sensors.json_readings import (
    InvalidJsonReading, event_id_for_position, parse_json, reading_from_json,
)
from services.ingest.sensors.sensor_registry import SensorRegistry
from services.ingest.sensors.validation import ClockLimits, validate_reading

log = get_logger(__name__)

READINGS = Counter("vigil_ingest_sensor_readings_total", "Sensor readings judged, by outcome "
                   "(accepted, or the reason of the rejection)", ["outcome"])

PRODUCER = "ingest"
CONTENT_TYPE = "content-type"
JSON_TYPE = b"application/json"
PROTOBUF_TYPE = b"application/x-protobuf"
MALFORMED_EVENT = "malformed_event"


def _is_json(msg: Message) -> bool:
    """A content-type header decides; without one, a value starting with '{' is JSON (a SensorReading in
    protobuf starts with a field tag, never with that byte's tag of field 15)."""
    for name, value in msg.headers() or []:
        if name.lower() == CONTENT_TYPE and value:
            return value.split(b";")[0].strip().lower() == JSON_TYPE
    return (msg.value() or b"").lstrip()[:1] == b"{"


def _decode(msg: Message) -> tuple[events_pb2.SensorReading, bytes]:
    """The reading and the bytes to forward: a protobuf reading's own bytes, untouched; a JSON one converted."""
    raw = msg.value() or b""
    if _is_json(msg):
        item = parse_json(raw)
        reading = reading_from_json(item, PRODUCER, event_id_for_position(msg.topic(), msg.partition(), msg.offset()))
        return reading, reading.SerializeToString()
    try:
        return events_pb2.SensorReading.FromString(raw), raw
    except DecodeError as exc:
        raise InvalidJsonReading(MALFORMED_EVENT, f"neither JSON nor a protobuf SensorReading: {exc}") from exc


def sensor_reading_batch_handler(
    registry: SensorRegistry, limits: ClockLimits, clock_ns: Callable[[], int] = time.time_ns,
) -> Callable[[Sequence[Message]], list[Outcome]]:
    def handle(batch: Sequence[Message]) -> list[Outcome]:
        definitions, now_ns = registry.snapshot(), clock_ns()
        outcomes: list[Outcome] = []
        for msg in batch:
            try:
                reading, value = _decode(msg)
            except InvalidJsonReading as exc:
                READINGS.labels(exc.reason).inc()
                outcomes.append(Rejected(exc.reason, exc.detail))
                continue
            problem = validate_reading(reading, definitions, now_ns, limits)
            READINGS.labels(problem.reason if problem else "accepted").inc()
            if problem:
                with trace_context(reading.envelope.trace_id):
                    log.debug("sensor reading rejected", sensor_id=reading.sensor_id, reason=problem.reason)
                outcomes.append(Rejected(problem.reason, problem.detail))
            else:
                outcomes.append([Outbound(SENSORS, value, reading.sensor_id.encode())])
        return outcomes

    return handle


class DeliveryReport:
    """Which messages of one batch were delivered: an error text per message, None when delivered."""

    def __init__(self, count: int) -> None:
        self.errors: list[str | None] = ["not delivered in time"] * count
        self._remaining = count
        self._lock = threading.Lock()
        self.done = threading.Event()
        if count == 0:
            self.done.set()

    def callback(self, index: int):
        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            with self._lock:
                self.errors[index] = None if err is None else err.str()
                self._remaining -= 1
                if self._remaining == 0:
                    self.done.set()
        return on_delivery


class ReadingPublisher:
    """Produces readings for the HTTP endpoint and tells each caller which of its own messages Kafka took.
    Request threads share one producer; each serves delivery callbacks until its own batch is done."""

    def __init__(self, kafka: KafkaSettings, client_id: str = "ingest-sensors-http") -> None:
        self._producer = Producer(producer_config(kafka, client_id))

    def deliver(self, messages: Sequence[Outbound], timeout_s: float) -> list[str | None]:
        report = DeliveryReport(len(messages))
        deadline = time.monotonic() + timeout_s
        for index, out in enumerate(messages):
            while True:
                try:
                    self._producer.produce(out.topic, value=out.value, key=out.key,
                                           headers=list(out.headers.items()) or None,
                                           on_delivery=report.callback(index))
                    break
                except BufferError:  # the local queue is full: serve callbacks until there is room
                    if time.monotonic() > deadline:
                        return report.errors
                    self._producer.poll(0.05)
        while not report.done.is_set() and time.monotonic() < deadline:
            self._producer.poll(0.05)
        return list(report.errors)

    def close(self, timeout_s: float = 10.0) -> int:
        return self._producer.flush(timeout_s)

