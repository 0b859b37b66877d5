"""Settings of the drift service (prefix VIGIL_DRIFT_)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings


class DriftSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_DRIFT_", extra="ignore")

    window_s: float = Field(60.0, description="Length of the tumbling windows compared with the reference.")
    grace_s: float = Field(5.0, description="How long after its end a window waits for late events before it "
                                             "is closed by the clock (a silent camera's last window); under window_s.")
    min_frames: int = Field(30, description="A window with fewer events is 'insufficient data', never an alarm.")
    reference_windows: int = Field(5, description="Windows (with enough data) that make a new subject's reference, "
                                                  "unless one was set by hand.")
    raise_after: int = Field(2, description="Consecutive drifting windows that raise an alert.")
    clear_after: int = Field(3, description="Consecutive clean windows that clear it.")
    reference_bucket: str = Field("vigil-drift", description="Bucket of the reference profiles.")
    batch_max_events: int = Field(10_000, description="Events taken from Kafka at once (each batch ends with a "
                                                       "snapshot of every subject it touched).")
    batch_max_wait_s: float = Field(0.5, description="...or after this long, whichever comes first.")
    source_reader: Literal["aiokafka", "faust"] = Field(
        "aiokafka", description="What reads the four source topics: a consumer of the service's own (group "
                                "GROUP_ID-sources, 42 us/event measured) or faust's agent (114 us/event: faust's "
                                "stream path); faust keeps the state table, its changelog and the timer either way.")
    web_host: str = Field("127.0.0.1", description="Address of faust's own web server (off unless web_port is set).")
    web_port: int | None = Field(None, description="Port of faust's web server (table and agent views); off by "
                                                   "default, the ops port serves health and metrics.")
    data_dir: Path | None = Field(None, description="faust's data directory (tables are in memory, rebuilt from "
                                                    "their changelog topics); a temporary one when unset.")
    from_beginning: bool = Field(False, description="A new consumer group starts at the beginning of the source "
                                                    "topics (a backfill, the benchmark) instead of now.")
    group_id: str = Field("vigil-drift", description="faust application id: its consumer group and the prefix of "
                                                     "its changelog topics.")
