"""Kafka side of ingest: frame events to vigil.frames (keyed by camera id, so each camera's frames keep their
order), large frames by claim-check through the object store, camera status to vigil.monitoring."""
from __future__ import annotations

import threading

from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import Counter

from libs.common.claimcheck import ClaimCheckStore, frame_key
from libs.common.envelope import new_envelope
from libs.common.kafka import producer_config
from libs.common.logs import get_logger
from libs.common.settings import KafkaSettings
from libs.common.topics import FRAMES, MONITORING
from protos import events_pb2

log = get_logger(__name__)

FRAMES_PRODUCED = Counter("vigil_ingest_frames_produced_total", "Frame events delivered to Kafka", ["camera_id"])
FRAMES_FAILED = Counter("vigil_ingest_frames_failed_total", "Frame events not delivered (queue full, broker "
                        "error, object store error)", ["camera_id", "reason"])
FRAMES_CLAIM_CHECKED = Counter("vigil_ingest_frames_claim_checked_total", "Frames sent by reference", ["camera_id"])


class FramePublisher:
    """Never blocks a camera: a frame Kafka cannot take now is dropped and counted, not waited for."""

    def __init__(self, kafka: KafkaSettings, claim_check: ClaimCheckStore | None, threshold_bytes: int,
                 buffer_mb: int = 64, client_id: str = "ingest") -> None:
        self._producer = Producer(producer_config(
            kafka, client_id,
            # Frames are JPEG already: compressing them again costs CPU and saves nothing.
            **{"compression.type": "none", "queue.buffering.max.kbytes": buffer_mb * 1024,
               # A frame not delivered within 30 s is stale: better reported as lost than delivered late.
               "message.timeout.ms": 30_000},
        ))
        self.claim_check = claim_check
        self.threshold_bytes = threshold_bytes
        self._lock = threading.Lock()  # one producer shared by every camera's thread

    def publish(self, frame: events_pb2.Frame) -> bool:
        camera_id = frame.camera_id
        if len(frame.data) > self.threshold_bytes:
            if not self._claim_check(frame):
                return False
        value = frame.SerializeToString()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                FRAMES_PRODUCED.labels(camera_id).inc()
            else:
                FRAMES_FAILED.labels(camera_id, "kafka").inc()
                log.error("frame not delivered", camera_id=camera_id, error=err.str())

        try:
            with self._lock:
                self._producer.produce(FRAMES, value=value, key=camera_id.encode(), on_delivery=on_delivery)
                self._producer.poll(0)
        except BufferError:
            FRAMES_FAILED.labels(camera_id, "queue_full").inc()
            return False
        return True

    def _claim_check(self, frame: events_pb2.Frame) -> bool:
        if self.claim_check is None:
            # No object store configured: the frame goes inline if the broker takes it (2 MiB), else is lost.
            if len(frame.data) < 2 * 1024 * 1024 - 4096:
                return True
            FRAMES_FAILED.labels(frame.camera_id, "too_large").inc()
            log.error("frame too large and no object store for claim-check", camera_id=frame.camera_id,
                      size=len(frame.data))
            return False
        try:
            ref = self.claim_check.put(frame_key(frame.camera_id, frame.envelope.event_id), frame.data)
        except Exception as exc:
            FRAMES_FAILED.labels(frame.camera_id, "object_store").inc()
            log.error("claim-check upload failed; frame dropped", camera_id=frame.camera_id, error=str(exc))
            return False
        frame.ref.CopyFrom(ref)  # replaces the inline data (one payload)
        FRAMES_CLAIM_CHECKED.labels(frame.camera_id).inc()
        return True

    def poll(self) -> None:
        with self._lock:
            self._producer.poll(0)

    def close(self, timeout_s: float = 10.0) -> int:
        """Delivers what is queued; returns how many frames could not be delivered in time."""
        return self._producer.flush(timeout_s)


class StatusPublisher:
    def __init__(self, kafka: KafkaSettings, client_id: str = "ingest-status") -> None:
        self._producer = Producer(producer_config(kafka, client_id))
        self._lock = threading.Lock()

    def publish(self, status: events_pb2.CameraStatus) -> None:
        event = events_pb2.MonitoringEvent(
            envelope=new_envelope(f"camera/{status.camera_id}", "ingest"), camera_status=status)
        with self._lock:
            try:
                self._producer.produce(MONITORING, value=event.SerializeToString(), key=status.camera_id.encode())
            except BufferError:
                log.warning("status dropped: producer queue full", camera_id=status.camera_id)
            self._producer.poll(0)

    def close(self, timeout_s: float = 5.0) -> None:
        self._producer.flush(timeout_s)
