"""Settings of the inference service (prefix VIGIL_INFERENCE_)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_INFERENCE_", extra="ignore", protected_namespaces=())

    model_dir: Path | None = Field(None, description="Directory of the converted default model; unset: "
                                                     "yolov3-tiny as `vigil install` builds it into the cache.")
    device: str = Field("CPU", description="OpenVINO device.")
    precision_hint: str | None = Field(None, description="OpenVINO INFERENCE_PRECISION_HINT, e.g. f32 (default: "
                                                         "the device's choice, bf16 on CPUs that have it).")
    score_threshold: float = Field(0.25, description="Detections scoring below this are dropped.")
    embeddings: bool = Field(True, description="Give each inference result the model's frame embedding (its "
                             "pooled backbone features through the projection stored with the model version; "
                             "none for a model dir without one), for embedding drift. On by default: the extra "
                             "output cost yolov3-tiny 0.3-1.2% of CPU per frame in four side-by-side runs "
                             "(python -m bench.embedding_cost; AMD EPYC, 2 cores, bf16, 2026-11-29), within the "
                             "noise of its throughput and far below the 5% that would make it opt-in.")
    grpc_host: str = Field("127.0.0.1", description="Address of the gRPC (Open Inference Protocol) server.")
    grpc_port: int = Field(8001, description="Port of the gRPC server.")
    grpc_workers: int = Field(8, description="Threads serving gRPC requests.")
    grpc_max_concurrent: int = Field(128, ge=1, description="gRPC calls admitted at once (running on a worker "
                                     "or waiting for one); a call beyond them is refused with "
                                     "RESOURCE_EXHAUSTED, not queued.")
    grpc_tls_cert_file: Path | None = Field(None, description="PEM certificate chain: set with the key to serve "
                                                              "gRPC over TLS.")
    grpc_tls_key_file: Path | None = Field(None, description="PEM private key of the gRPC TLS certificate.")
    grpc_auth_token: SecretStr | None = Field(None, description="When set, every gRPC call must carry "
                                                                "`authorization: Bearer <token>`.")
    grpc_admin_token: SecretStr | None = Field(None, description="When set, RepositoryModelLoad/Unload must "
                                               "carry `x-vigil-admin-token: <token>`; unset, they are refused "
                                               "to callers not on this host.")
    model_repository: Path | None = Field(None, description="Directory of model dirs that the repository "
                                                            "extension (index, load, unload) serves from.")
    max_input_bytes: int = Field(32 * 1024 * 1024, description="Largest request or frame accepted.")
    batch_max_frames: int = Field(32, description="Most frames taken from Kafka for one batch (the device idles "
                                  "while a batch ends, so a backlog drains faster in bigger ones).")
    batch_max_wait_s: float = Field(0.02, description="Longest wait to fill a batch from Kafka.")
    camera_models: dict[str, str] = Field({}, description="JSON object camera id -> model name "
                                          "(loaded from the model repository at start); other cameras get the "
                                          "default model.")
    canary_model: str | None = Field(None, description="Model (by name, from the model repository, loaded at "
                                     "start) that a share of the cameras without an own model go to.")
    canary_share: float = Field(0.0, ge=0.0, le=1.0, description="Share (0..1) of cameras routed to the canary "
                                "model, chosen by a stable hash of the camera id.")
    shadow_model: str | None = Field(None, description="Model (by name, from the model repository, loaded at "
                                     "start) that also sees every frame; its results go to "
                                     "vigil.inference.shadow with shadow=true.")
    extra_model_dirs: list[Path] = Field([], description="JSON list of single model dirs served beside the model "
                                         "repository's (a model of the same name in the repository wins).")
    preload_models: list[str] = Field([], description="JSON list of models (by name, from the model repository) "
                                      "loaded at start and served over gRPC, e.g. [\"centerface\"] for the "
                                      "annotation service's face blurring.")
    consume: bool = Field(True, description="Consume vigil.frames (off: serve gRPC only).")
    follow_registry: bool | None = Field(None, description="Follow vigil.models and hot-swap in each version "
                                         "of a served model promoted (or rolled back to) in the model registry; "
                                         "default: on when the S3 secret key is set.")
    registry_bucket: str = Field("vigil-models", description="Bucket of the model registry that is followed.")
    registry_reconcile_s: float = Field(60.0, gt=0, description="How often the registry follower compares the "
                                        "registry's primaries with vigil.models and announces a promotion whose "
                                        "announcement was lost (one older than this).")
    registry_cache_dir: Path | None = Field(None, description="Where registry versions are downloaded "
                                            "(default: <VIGIL_CACHE_DIR>/registry/NAME/VERSION).")
    consume_sensors: bool = Field(True, description="Consume vigil.sensors and score each reading with the sensor "
                                  "anomaly model; results go to vigil.inference.sensors.")
    sensor_model_dir: Path | None = Field(None, description="Directory of the sensor anomaly model (OpenVINO IR "
                                          "and model.json); unset: the one `vigil install` trains into the cache.")
    sensor_batch_max_readings: int = Field(256, description="Most sensor readings taken from Kafka for one batch.")
    sensor_warmup_s: float = Field(3600.0, ge=0.0, description="On a partition assignment (a start, a "
                                   "rebalance), the sensor windows are refilled from the readings of vigil.sensors "
                                   "already handled, as far back as this many seconds (Kafka timestamps); 0: "
                                   "start them empty.")
