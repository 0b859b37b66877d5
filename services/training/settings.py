"""Settings of the training service (prefix VIGIL_TRAINING_)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.common.cache_dir import default_cache_dir
from libs.common.settings import ServiceSettings
from libs.model_registry.store import BUCKET as MODELS_BUCKET
from services.datasets.store import DEFAULT_BUCKET as DATASETS_BUCKET
from services.inference.model_dirs import DEFAULT_DETECTOR_NAME
from services.training.rollout import RolloutPolicy
from services.training.trainer import TrainingParams

_DEFAULTS = TrainingParams()
_ROLLOUT = RolloutPolicy()


class TrainingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_TRAINING_", extra="ignore")

    base_model: str = Field(DEFAULT_DETECTOR_NAME, description="Model in the registry a candidate is trained for: "
                            "its primary is the champion (the served default dir while it has none).")
    datasets: list[str] = Field([], description="JSON list of the datasets whose committed versions start a "
                                "job; empty: every dataset.")
    min_items: int = Field(40, ge=1, description="Least number of labelled items a committed version needs "
                           "before it is trained on (smaller ones are skipped).")
    max_age_h: float = Field(24.0, gt=0, description="A version committed longer ago than this is not trained "
                             "on: history read from vigil.datasets at a first start, not a new version.")
    seed: int = Field(0, description="Seed of every job: a version trained for the base model with this seed is "
                      "not trained again.")
    margin: float = Field(_DEFAULTS.margin, ge=0, description="mAP@0.5 a candidate must beat the champion's by "
                          "to be eligible.")
    tolerance: float = Field(_DEFAULTS.tolerance, ge=0, le=1, description="How far any class's AP or recall "
                             "may fall for the candidate still to be eligible.")
    work_dir: Path | None = Field(None, description="Where champions are downloaded, candidates written before "
                                  "their import and the base detector's proposals cached; unset: "
                                  "<cache dir>/training.")
    registry_bucket: str = Field(MODELS_BUCKET, description="Bucket of the model registry candidates are "
                                 "imported into.")
    datasets_bucket: str = Field(DATASETS_BUCKET, description="Bucket of the dataset store the versions are "
                                 "read from.")
    datasets_read_access_key: str | None = Field(None, description="Read-only S3 access key of the dataset "
                                                 "store; unset: the S3 keys (VIGIL_S3_*) read it.")
    datasets_read_secret_key: SecretStr | None = Field(None, description="Its secret key.")
    max_job_s: float = Field(3600.0, gt=0, description="Longest a job may take: the consumer stays in its group "
                             "that long between two reads of vigil.datasets (max.poll.interval.ms).")
    progress_every_s: float = Field(1.0, gt=0, description="At most one progress event per step this often "
                                    "(and each step's end).")
    shutdown_timeout_s: float = Field(25.0, description="How long in-flight work may take after SIGTERM (within "
                                      "the pod's 30 s grace): a job stops at its next progress step and is run "
                                      "again after the restart.")

    rollout: bool = Field(True, description="Roll an eligible candidate out by itself (shadow, canary, promoted, "
                          "or rolled back by the live checks); off: candidates wait for `vigil models rollout`, "
                          "whose rollouts are still judged.")
    rollout_shadow_min_frames: int = Field(_ROLLOUT.shadow_min_frames, ge=1, description="Frames seen by both "
                                           "the candidate in shadow and the champion before shadow can end.")
    rollout_shadow_min_s: float = Field(_ROLLOUT.shadow_min_s, ge=0, description="...and seconds in shadow.")
    rollout_canary_share: float = Field(_ROLLOUT.canary_share, gt=0, le=1, description="Share of cameras the "
                                        "canary serves (more when none of the cameras seen falls in it).")
    rollout_canary_min_frames: int = Field(_ROLLOUT.canary_min_frames, ge=1, description="Frames of the canary's "
                                           "cameras (the champion beside it in shadow) before canary can end.")
    rollout_canary_min_s: float = Field(_ROLLOUT.canary_min_s, ge=0, description="...and seconds as a canary.")
    rollout_max_error_rate: float = Field(_ROLLOUT.max_error_rate, ge=0, le=1, description="Share of frames the "
                                          "candidate may leave unanswered.")
    rollout_max_latency_ratio: float = Field(_ROLLOUT.max_latency_ratio, gt=0, description="Candidate's p95 "
                                             "inference latency over the champion's on the same frames, at most.")
    rollout_max_disagreement: float = Field(_ROLLOUT.max_disagreement, ge=0, le=1, description="Mean 1 - "
                                            "IoU-matched F1 between the candidate's and the champion's confident "
                                            "boxes, at most.")
    rollout_max_output_drift: float = Field(_ROLLOUT.max_output_drift, ge=0, le=1, description="Jensen-Shannon "
                                            "distance between their output mixes (classes, empty frames), at most.")
    rollout_stage_timeout_s: float = Field(_ROLLOUT.stage_timeout_s, gt=0, description="A stage without enough "
                                           "frames to judge by then is rolled back.")

    def rollout_policy(self) -> RolloutPolicy:
        return RolloutPolicy(
            shadow_min_frames=self.rollout_shadow_min_frames, shadow_min_s=self.rollout_shadow_min_s,
            canary_share=self.rollout_canary_share, canary_min_frames=self.rollout_canary_min_frames,
            canary_min_s=self.rollout_canary_min_s, stage_timeout_s=self.rollout_stage_timeout_s,
            max_error_rate=self.rollout_max_error_rate, max_latency_ratio=self.rollout_max_latency_ratio,
            max_disagreement=self.rollout_max_disagreement, max_output_drift=self.rollout_max_output_drift)

    def resolved_work_dir(self) -> Path:
        return self.work_dir or default_cache_dir() / "training"

    def params(self) -> TrainingParams:
        return TrainingParams(margin=self.margin, tolerance=self.tolerance)
