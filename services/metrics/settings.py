"""Settings of the metrics sink (prefix VIGIL_METRICS_)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings


class MetricsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_METRICS_", extra="ignore")

    store_path: Path = Field(Path(".state/data/clickhouse"),
                             description="Data directory of the embedded ClickHouse engine (chdb).")
    clickhouse_url: str | None = Field(None, description="A ClickHouse server, e.g. http://user:pass@host:8123; "
                                                         "when set, used instead of the embedded engine.")
    batch_max_events: int = Field(100_000, description="Insert after this many events...")
    batch_max_wait_s: float = Field(1.0, description="...or after this long, whichever comes first.")
    store_failures_unready: int = Field(5, description="Failed attempts in a row at storing a batch after which the "
                                                       "sink reports not ready and the store unavailable on "
                                                       "vigil.monitoring (it keeps retrying).")
    api_host: str = Field("127.0.0.1", description="Address of the query API.")
    api_port: int = Field(8088, description="Port of the query API.")
    api_token: SecretStr | None = Field(None, description="Token the query API and the dashboard require (Bearer "
                                                          "header, or open the dashboard once as /?token=...); "
                                                          "without one they serve only on a loopback address.")
    query_max_rows: int = Field(10_000, description="Most rows an ad-hoc query may return.")
    query_max_seconds: float = Field(10.0, description="Longest an ad-hoc query may run.")
    query_max_memory_mb: int = Field(512, description="Most memory one query may use (MiB); beyond it the query "
                                                       "fails, and ingestion and other queries go on.")
    live_frames: bool = Field(True, description="Follow vigil.frames, keeping each camera's newest frame for the "
                                                "dashboard's live view.")
    live_frames_max_cameras: int = Field(64, description="Most cameras whose frames the live view holds; the one "
                                                         "silent for longest is dropped first.")
    live_frames_max_age_s: float = Field(300.0, description="A camera with no frame for this long is dropped from the "
                                                            "live view.")
