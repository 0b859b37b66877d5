"""Settings of sensor ingest (prefix VIGIL_INGEST_SENSORS_). It runs inside the ingest service, whose ops
server, log level and shutdown timeout it shares (VIGIL_INGEST_...)."""
from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SensorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_INGEST_SENSORS_", extra="ignore")

    enabled: bool = Field(True, description="Validate sensor readings and serve the HTTP endpoint for devices.")
    http_host: str = Field("127.0.0.1", description="Address of the HTTP endpoint for devices (POST /api/sensors/readings).")
    http_port: int = Field(8090, description="Port of the HTTP endpoint for devices; 0 picks a free one.")
    http_max_body_bytes: int = Field(1024 * 1024, description="Largest HTTP batch body accepted.")
    http_max_readings: int = Field(1000, description="Most readings in one HTTP batch.")
    delivery_timeout_s: float = Field(10.0, description="How long an HTTP batch waits for Kafka to take its readings.")
    max_future_skew_s: float = Field(60.0, description="Reject readings whose event time is further ahead of our clock than this.")
    max_age_s: float = Field(3600.0, description="Reject readings whose event time is older than this "
                                                 "(raise it for devices that buffer while offline).")
    batch_max_readings: int = Field(500, description="Readings validated per Kafka batch.")
    group_id: str = Field("vigil-ingest-sensors", description="Consumer group of the replicas reading vigil.sensors.raw.")
