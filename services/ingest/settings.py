"""Settings of the ingest service (prefix VIGIL_INGEST_)."""
from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_INGEST_", extra="ignore")

    camera_id: str = Field("demo", description="Id of the camera this ingest reads; the Kafka key of its frames.")
    camera_url: str = Field("rtsp://127.0.0.1:8554/demo", description="Stream URL (rtsp://, http://, a file).")
    sample_fps: float = Field(5.0, description="Frames per second produced to Kafka (the stream is read in full).")
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of produced frames.")
    max_width: int = Field(0, description="Downscale frames wider than this (0 keeps the stream's size).")
    open_timeout_s: float = Field(10.0, description="Give up opening the stream after this long.")
    read_timeout_s: float = Field(5.0, description="A stream that gives no frame for this long is reopened.")
    reconnect_max_backoff_s: float = Field(30.0, description="Cap of the exponential back-off between reopens.")
