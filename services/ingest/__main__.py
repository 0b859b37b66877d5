"""The ingest service: one camera stream in, sampled JPEG frame events out to vigil.frames."""
from __future__ import annotations

import threading
import time

from prometheus_client import Counter

from libs.common.logs import get_logger
from libs.common.ops import Heartbeat, flag_check
from libs.common.service import start_service
from libs.common.settings import KafkaSettings
from libs.common.topics import ensure_topics
from services.ingest.camera import CameraStream
from services.ingest.frames import FrameEventBuilder
from services.ingest.kafka_adapter import FramePublisher
from services.ingest.sampler import FrameSampler
from services.ingest.settings import IngestSettings

FRAMES_READ = Counter("vigil_ingest_frames_read_total", "Frames read from the stream", ["camera_id"])


def main() -> None:
    settings = IngestSettings()
    kafka = KafkaSettings()
    runtime = start_service("ingest", settings)
    log = get_logger()
    if kafka.create_topics:
        ensure_topics(kafka.client_config(), kafka.replication_factor)

    online = threading.Event()

    def on_state(state: str, reason: str) -> None:
        (online.set if state == "online" else online.clear)()
        log.info("camera state", camera_id=settings.camera_id, state=state, reason=reason)

    heartbeat = Heartbeat(max_age_s=30)
    runtime.health.liveness["reader_loop"] = heartbeat.check
    runtime.health.readiness["camera_online"] = flag_check(online, f"camera {settings.camera_id} online")

    stream = CameraStream(
        settings.camera_url, runtime.stop, settings.open_timeout_s, settings.read_timeout_s,
        settings.reconnect_max_backoff_s, on_state=on_state, on_tick=heartbeat.beat,
    )
    sampler = FrameSampler(settings.sample_fps)
    builder = FrameEventBuilder(settings.camera_id, settings.jpeg_quality, settings.max_width)
    publisher = FramePublisher(kafka)
    try:
        for captured in stream:
            FRAMES_READ.labels(settings.camera_id).inc()
            if not sampler.keep(time.monotonic()):
                continue
            publisher.publish(builder.build(captured.image, captured.capture_time_ns, captured.time_from_stream))
    finally:
        undelivered = publisher.close()
        if undelivered:
            log.error("frames undelivered at shutdown", count=undelivered)
        runtime.close()


if __name__ == "__main__":
    main()
