"""Publishes frame events to Kafka, keyed by camera id so each camera's frames keep their order."""
from __future__ import annotations

from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import Counter

from libs.common.kafka import producer_config
from libs.common.logs import get_logger
from libs.common.settings import KafkaSettings
from libs.common.topics import FRAMES
from protos import events_pb2

log = get_logger(__name__)

FRAMES_PRODUCED = Counter("vigil_ingest_frames_produced_total", "Frame events delivered to Kafka", ["camera_id"])
FRAMES_FAILED = Counter("vigil_ingest_frames_failed_total", "Frame events Kafka did not accept", ["camera_id"])


class FramePublisher:
    def __init__(self, kafka: KafkaSettings, client_id: str = "ingest") -> None:
        # Frames are JPEG already: compressing them again costs CPU and saves nothing.
        self._producer = Producer(producer_config(kafka, client_id, **{"compression.type": "none"}))

    def publish(self, frame: events_pb2.Frame) -> None:
        camera_id = frame.camera_id

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                FRAMES_PRODUCED.labels(camera_id).inc()
            else:
                FRAMES_FAILED.labels(camera_id).inc()
                log.error("frame not delivered", camera_id=camera_id, error=err.str())

        try:
            self._producer.produce(FRAMES, value=frame.SerializeToString(), key=camera_id.encode(),
                                   on_delivery=on_delivery)
        except BufferError:
            # Kafka is slower than the camera: this frame is dropped (and counted) rather than blocking
            # the reader; the next ones go through once the queue drains.
            FRAMES_FAILED.labels(camera_id).inc()
            log.warning("producer queue full; frame dropped", camera_id=camera_id)
        self._producer.poll(0)

    def close(self, timeout_s: float = 10.0) -> int:
        """Delivers what is queued; returns how many frames could not be delivered in time."""
        return self._producer.flush(timeout_s)
