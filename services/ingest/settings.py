"""Settings of the ingest service (prefix VIGIL_INGEST_). Cameras themselves are not settings: they live in
the camera registry (topic vigil.cameras, `vigil cameras add ...`); these are the defaults they inherit."""
from __future__ import annotations

import socket

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.common.claimcheck import DEFAULT_THRESHOLD_BYTES
from libs.common.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_INGEST_", extra="ignore")

    replica_id: str = Field(default_factory=socket.gethostname,
                            description="Name of this replica in logs and the consumer group (default: host name).")
    default_sample_fps: float = Field(5.0, gt=0, description="Frames per second produced per camera, unless its config says.")
    default_jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality, unless the camera's config says.")
    default_stall_timeout_s: float = Field(5.0, gt=0, description="No frame for this long reopens the stream (watchdog).")
    open_timeout_s: float = Field(10.0, gt=0, description="Give up opening a stream after this long.")
    # Low on purpose: a reopen attempt costs one TCP connect, and a camera back from a power cut should
    # stream again within seconds, not after a long back-off.
    reconnect_max_backoff_s: float = Field(4.0, gt=0, description="Cap of the exponential back-off between reopens.")
    rtsp_transport: str = Field("tcp", pattern="^(tcp|udp)$", description="RTSP transport for this process: tcp or udp.")
    stream_probe_s: float = Field(0.5, gt=0, description="How long FFmpeg probes a stream when opening it; "
                                                         "shorter opens faster (5 s is FFmpeg's own default).")
    decode_threads: int = Field(1, ge=0, description="FFmpeg decoder threads per camera (0: one per core). One "
                                                     "costs the least CPU per frame; more only shortens one "
                                                     "camera's decode latency.")
    frame_queue_size: int = Field(4, ge=1, description="Frames held per camera between reader and producer; "
                                                       "when full the oldest is dropped (and counted).")
    status_interval_s: float = Field(5.0, gt=0, description="Camera status is published this often, and on every change.")
    claim_check_threshold_bytes: int = Field(DEFAULT_THRESHOLD_BYTES, gt=0,
                                             description="Frames larger than this go to the object store by reference.")
    claim_check_bucket: str = Field("vigil-frames", description="Bucket of claim-checked frames.")
    claim_check_expiry_days: int = Field(1, ge=1, description="Claim-checked frames expire after this many days.")
    producer_buffer_mb: int = Field(64, ge=1, description="Most memory the Kafka producer may queue; beyond it "
                                                          "frames are dropped and counted.")
