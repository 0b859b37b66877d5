"""The object store (S3: MinIO in Kubernetes, SeaweedFS locally) through the `minio` SDK."""
from __future__ import annotations

from minio import Minio

from libs.common.settings import ObjectStoreSettings


def object_store_client(settings: ObjectStoreSettings) -> Minio:
    if settings.secret_key is None:
        raise ValueError("VIGIL_S3_SECRET_KEY is not set: the object store needs credentials")
    return Minio(
        settings.endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key.get_secret_value(),
        secure=settings.secure,
        region=settings.region,
    )


def ensure_bucket(client: Minio, bucket: str) -> bool:
    """Creates the bucket if missing; returns True when it created it."""
    if client.bucket_exists(bucket):
        return False
    client.make_bucket(bucket)
    return True
