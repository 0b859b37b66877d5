"""The HTTP endpoint for devices that cannot speak Kafka.

POST /api/sensors/readings with a JSON array of readings (schema: GET /api/sensors/schema). Each item that
breaks the schema is answered at once with its index and reason; the others are converted to the protobuf
SensorReading, produced to vigil.sensors.raw, and acknowledged only once Kafka has them. From there they take
the same validation path as readings sent to Kafka directly, so unit, range and clock problems go to the DLQ.

Answer: 200 {"accepted": [{"index", "event_id"}], "rejected": [{"index", "reason", "detail"}],
"undelivered": []}; 503 with the same shape when some items were not delivered (resend those, with their
event ids so that a late delivery and the resend collapse into one); 400, 411 or 413 for the batch as a whole."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, Sequence
from urllib.parse import urlparse

from prometheus_client import Counter

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
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if urlparse(self.path).path == SCHEMA_PATH:
                    self._answer(200, SCHEMA, "application/schema+json")
                else:
                    self._answer(404, {"error": f"no such endpoint: {urlparse(self.path).path}"})

            def do_POST(self) -> None:  # noqa: N802
                if urlparse(self.path).path != READINGS_PATH:
                    self._answer(404, {"error": f"no such endpoint: {urlparse(self.path).path}"})
                    return
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    self._answer(411, {"error": "Content-Length is required"})
                    return
                if int(length) > max_body_bytes:
                    self.close_connection = True  # the body stays unread
                    self._answer(413, {"error": f"body of {length} bytes; at most {max_body_bytes}"})
                    return
                self._answer(*intake.accept(self.rfile.read(int(length))))

            def _answer(self, status: int, payload: dict[str, Any], content_type: str = "application/json") -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:  # counted in metrics; a line per request would flood
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        # Shutdown waits for requests in flight, so that what Kafka took is also acknowledged to the device.
        self._server.daemon_threads = False
        self._server.block_on_close = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="sensor-http", daemon=True)
        self.listening = threading.Event()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> "SensorHttpApi":
        self._thread.start()
        self.listening.set()
        return self

    def stop(self) -> None:
        self.listening.clear()
        self._server.shutdown()
        self._server.server_close()
