"""The HTTP endpoint for devices that cannot speak Kafka.

POST /api/sensors/readings with a JSON array of readings (schema: GET /api/sensors/schema). Each item that
breaks the schema is answered at once with its index and reason; the others are converted to the protobuf
SensorReading, produced to vigil.sensors.raw, and acknowledged only once Kafka has them. From there they take
the same validation path as readings sent to Kafka directly, so unit, range and clock problems go to the DLQ.

Answer: 200 {"accepted": [{"index", "event_id"}], "rejected": [{"index", "reason", "detail"}],
"undelivered": []}; 503 with the same shape when some items were not delivered (resend those, with their
event ids so that a late delivery and the resend collapse into one); 400 or 413 for the batch as a whole (413 for
a body above the cap, counted as it arrives, with or without Content-Length)."""
from __future__ import annotations

import threading
from typing import Any, Protocol, Sequence

from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from libs.common.http import HttpServer, json_app
from libs.common.kafka import Outbound
from libs.common.logs import get_logger
from libs.common.topics import SENSORS_RAW
from services.ingest.sensors.json_readings import SCHEMA, InvalidJsonReading, parse_json, reading_from_json
from services.ingest.sensors.kafka_adapter import CONTENT_TYPE, PRODUCER, PROTOBUF_TYPE

log = get_logger(__name__)

READINGS_PATH = "/api/sensors/readings"
SCHEMA_PATH = "/api/sensors/schema"

HTTP_READINGS = Counter("vigil_ingest_sensor_http_readings_total", "Readings received over HTTP, by outcome",
                        ["outcome"])


class Publisher(Protocol):
    def deliver(self, messages: Sequence[Outbound], timeout_s: float) -> list[str | None]: ...


class ReadingBatchIntake:
    """What the endpoint does with one body, apart from HTTP itself."""

    def __init__(self, publisher: Publisher, max_readings: int, delivery_timeout_s: float) -> None:
        self.publisher = publisher
        self.max_readings = max_readings
        self.delivery_timeout_s = delivery_timeout_s

    def accept(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            items = parse_json(body)
        except InvalidJsonReading as exc:
            return 400, {"error": exc.detail}
        if not isinstance(items, list):
            return 400, {"error": "the body must be a JSON array of readings"}
        if len(items) > self.max_readings:
            return 413, {"error": f"{len(items)} readings in one batch; at most {self.max_readings}"}
        rejected, messages, indexes, event_ids = [], [], [], []
        for index, item in enumerate(items):
            try:
                reading = reading_from_json(item, PRODUCER)
            except InvalidJsonReading as exc:
                rejected.append({"index": index, "reason": exc.reason, "detail": exc.detail})
                continue
            messages.append(Outbound(SENSORS_RAW, reading.SerializeToString(), reading.sensor_id.encode(),
                                     {CONTENT_TYPE: PROTOBUF_TYPE}))
            indexes.append(index)
            event_ids.append(reading.envelope.event_id)
        errors = self.publisher.deliver(messages, self.delivery_timeout_s) if messages else []
        accepted = [{"index": i, "event_id": e} for i, e, err in zip(indexes, event_ids, errors) if err is None]
        undelivered = [{"index": i, "event_id": e, "error": err}
                       for i, e, err in zip(indexes, event_ids, errors) if err is not None]
        HTTP_READINGS.labels("accepted").inc(len(accepted))
        HTTP_READINGS.labels("schema_violation").inc(len(rejected))
        HTTP_READINGS.labels("undelivered").inc(len(undelivered))
        if undelivered:
            log.warning("sensor readings not delivered to Kafka", count=len(undelivered), error=undelivered[0]["error"])
        return (503 if undelivered else 200), {"accepted": accepted, "rejected": rejected, "undelivered": undelivered}


class SensorHttpApi:
    def __init__(self, intake: ReadingBatchIntake, host: str, port: int, max_body_bytes: int) -> None:
        async def readings(request: Request) -> Response:
            body = await request.body()
            status, answer = await run_in_threadpool(intake.accept, body)  # waits for Kafka: off the event loop
            return JSONResponse(answer, status_code=status)

        def schema(_request: Request) -> Response:
            return JSONResponse(SCHEMA, media_type="application/schema+json")

        app = json_app([Route(READINGS_PATH, readings, methods=["POST"]), Route(SCHEMA_PATH, schema, methods=["GET"])],
                       max_body_bytes=max_body_bytes)
        # Stopping waits for the batches in flight (up to their delivery timeout), so that what Kafka took is also
        # acknowledged to the device.
        self._server = HttpServer(app, host, port, name="sensor-http", stop_timeout_s=intake.delivery_timeout_s + 2)
        self.listening = threading.Event()

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> "SensorHttpApi":
        self._server.start()
        self.listening.set()
        return self

    def stop(self) -> None:
        self.listening.clear()
        self._server.stop()
