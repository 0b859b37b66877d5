"""Settings of the datasets service (prefix VIGIL_DATASETS_)."""
from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.common.settings import ServiceSettings


class DatasetsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_DATASETS_", extra="ignore")

    bucket: str = Field("vigil-datasets", description="Bucket of the dataset store (blobs, manifests, refs).")
    dataset: str = Field("site", description="Dataset the accepted labels of vigil.annotations are appended to.")
    branch: str = Field("main", description="Working branch of that dataset the service commits to.")
    commit_every_labels: int = Field(100, ge=1, description="A version is committed once this many labels are "
                                     "waiting...")
    commit_every_min: float = Field(10.0, gt=0, description="...or when the oldest waiting label has waited this "
                                    "many minutes, whichever comes first.")
    split_group_s: float = Field(600.0, gt=0, description="Frames of one camera captured within the same period of "
                                 "this many seconds share a split (train, val or test), so neighbouring frames "
                                 "never sit on both sides of an evaluation.")
    commit_host: str = Field("127.0.0.1", description="Address of the commit endpoint (POST /commit commits the "
                             "waiting labels now).")
    commit_port: int = Field(8094, description="Port of the commit endpoint.")
    commit_token: SecretStr | None = Field(None, description="Bearer token POST /commit requires (required off "
                                           "loopback).")
    batch_max_events: int = Field(500, ge=1, description="Labels taken from Kafka at once.")
    batch_max_wait_s: float = Field(0.5, gt=0, description="...or after this long, whichever comes first.")
