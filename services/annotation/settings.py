"""Settings of the annotation service (prefix VIGIL_ANNOTATION_)."""
from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings


class AnnotationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_ANNOTATION_", extra="ignore")

    # --- selection (services/annotation/selection.py) ---
    uncertainty_low: float = Field(0.25, ge=0, le=1, description="Lower end of the uncertainty band: a result "
                                   "with a detection scored inside [low, high] is worth a look.")
    uncertainty_high: float = Field(0.6, ge=0, le=1, description="Upper end of the uncertainty band.")
    rare_class_share: float = Field(0.05, ge=0, le=1, description="A class below this share of the camera's "
                                    "recent detections is rare: frames showing it are worth a look.")
    drift_sample_rate: float = Field(0.2, ge=0, le=1, description="Share of a camera's results taken while it "
                                     "is under a drift alert.")
    audit_share: float = Field(0.01, ge=0, le=1, description="Share of all results taken at random: an "
                               "unbiased sample for estimating precision.")
    camera_budget_per_hour: int = Field(60, ge=0, description="Most tasks made from one camera in an hour.")
    total_budget_per_hour: int = Field(600, ge=0, description="Most tasks made in an hour, all cameras.")
    duplicate_distance: int = Field(6, ge=0, le=64, description="Hamming distance (of 64 bits) under which a "
                                    "frame's perceptual hash is a near-duplicate of a recently selected one.")
    duplicate_cooldown_s: float = Field(5.0, ge=0, description="After a near-duplicate is refused, the camera's "
                                        "results are not looked at for this long (a static scene would otherwise "
                                        "have every frame fetched and hashed only to be refused).")
    drift_lookback_h: float = Field(24.0, gt=0, description="How far back vigil.monitoring is read at start for "
                                    "drift alerts still open.")
    # --- the queue (services/annotation/queue.py) ---
    lease_s: float = Field(300.0, gt=0, description="How long a task stays with the annotator who opened it; "
                           "then it returns to the queue.")
    double_label_share: float = Field(0.1, ge=0, le=1, description="Share of tasks labelled by two people, for "
                                      "agreement.")
    bucket: str = Field("vigil-annotation", description="Bucket of the tasks, their images, label schemas and "
                        "users.")
    # --- label schema (services/annotation/schemas.py), version 1 made at the first start ---
    site_classes: list[str] = Field([], description="JSON list of classes of this site added to the model's "
                                    "labels in the first label schema.")
    rules: list[str] = Field([], description="JSON list of labelling rules shown to annotators in the first "
                             "label schema (its defaults when empty).")
    # --- frames and privacy ---
    claim_check_bucket: str = Field("vigil-frames", description="Bucket of claim-checked frames (ingest's).")
    frame_search_s: float = Field(30.0, gt=0, description="How far past a result's capture time vigil.frames is "
                                  "searched for its frame.")
    blur_faces: bool = Field(True, description="Blur faces (CenterFace, served by inference) before an image "
                             "is stored for people to see; a camera opts out with the registry label "
                             "privacy.blur_faces=false.")
    face_model: str = Field("centerface", description="Model that finds faces, served by inference over gRPC.")
    face_min_score: float = Field(0.3, ge=0, le=1, description="Faces scored at least this are blurred.")
    inference_grpc: str = Field("127.0.0.1:8001", description="host:port of inference's gRPC endpoint.")
    inference_token: SecretStr | None = Field(None, description="Bearer token for inference's gRPC endpoint "
                                              "(when it requires one).")
    # --- the review UI and API (services/annotation/web) ---
    ui_host: str = Field("127.0.0.1", description="Address of the review UI and its JSON API.")
    ui_port: int = Field(8091, description="Port of the review UI and its JSON API.")
    # --- consuming ---
    batch_max_events: int = Field(500, description="Results taken from Kafka at once.")
    batch_max_wait_s: float = Field(0.2, description="...or after this long, whichever comes first.")
