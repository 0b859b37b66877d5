"""The ingest service: the cameras the registry assigns to this replica, read, sampled and produced as frame
events to vigil.frames; their status to vigil.monitoring."""
from __future__ import annotations

import os
import sys
import threading

from libs.common.claimcheck import ClaimCheckStore
from libs.common.logs import get_logger
from libs.common.objectstore import object_store_client
from libs.common.ops import Heartbeat
from libs.common.service import start_service
from libs.common.settings import KafkaSettings, ObjectStoreSettings
from libs.common.topics import ensure_topics
from services.ingest.fleet import CameraFleet
from services.ingest.kafka_adapter import FramePublisher, StatusPublisher
from services.ingest.camera_registry import CameraRegistryFollower
from services.ingest.sensors.ingest import SensorIngest
from services.ingest.sensors.settings import SensorSettings
from services.ingest.settings import IngestSettings


def main() -> None:
    settings = IngestSettings()
    kafka = KafkaSettings()
    object_store = ObjectStoreSettings()
    runtime = start_service("ingest", settings)
    log = get_logger()
    if kafka.create_topics:
        ensure_topics(kafka.client_config(), kafka.replication_factor)

    claim_check = None
    if object_store.secret_key is not None:
        claim_check = ClaimCheckStore(object_store_client(object_store), settings.claim_check_bucket,
                                      settings.claim_check_expiry_days)
        claim_check.ensure_bucket()
    else:
        log.warning("no object store configured (VIGIL_S3_SECRET_KEY): frames above the claim-check threshold "
                    "go inline while the broker takes them")

    # Set before any capture opens: OpenCV's FFmpeg backend reads it at open time, for the whole process.
    # A short probe opens an RTSP camera in ~0.7 s instead of ~2.8 s (measured on the demo camera), which is
    # most of the time a camera takes to come back after an outage.
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = (
        f"rtsp_transport;{settings.rtsp_transport}|analyzeduration;{int(settings.stream_probe_s * 1e6)}")

    publisher = FramePublisher(kafka, claim_check, settings.claim_check_threshold_bytes, settings.producer_buffer_mb)
    status_publisher = StatusPublisher(kafka)
    camera_heartbeat = Heartbeat(max_age_s=30)
    fleet = CameraFleet(publisher, status_publisher.publish, settings.open_timeout_s,
                        settings.reconnect_max_backoff_s, settings.frame_queue_size, settings.replica_id,
                        decode_threads=settings.decode_threads)
    follower = CameraRegistryFollower(
        kafka, fleet, replica_id=settings.replica_id,
        spec_defaults={"default_fps": settings.default_sample_fps, "default_quality": settings.default_jpeg_quality,
                       "default_stall_timeout_s": settings.default_stall_timeout_s},
        heartbeat=camera_heartbeat,
    )
    runtime.health.liveness["registry_loop"] = follower.heartbeat.check
    runtime.health.readiness["registry_loaded"] = follower.ready

    def report_status(stop: threading.Event) -> None:
        while not stop.wait(settings.status_interval_s):
            fleet.publish_all()
            publisher.poll()

    # Cleanups run last registered first: the cameras stop before their producers are flushed.
    runtime.on_stop("status producer", status_publisher.close)
    runtime.on_stop("frame producer", lambda: close_frame_publisher(publisher))
    runtime.on_stop("cameras", fleet.stop_all)
    runtime.start_task("camera-registry", follower.run)
    runtime.start_task("camera-status", report_status)
    sensors = SensorIngest(kafka, SensorSettings(), runtime.health)
    if sensors.settings.enabled:
        runtime.start_task("sensors", sensors.run)
    sys.exit(runtime.run())


def close_frame_publisher(publisher: FramePublisher) -> None:
    undelivered = publisher.close()
    if undelivered:
        get_logger().error("frames undelivered at shutdown", count=undelivered)


if __name__ == "__main__":
    main()
