"""The object store (S3: MinIO in Kubernetes, SeaweedFS locally) through the `minio` SDK: the client, small ref
objects updated by compare-and-swap, objects written and read with their sha256 checked, and objects staged
then published so a reader never sees one that was not verified.

Conditional writes, as measured against SeaweedFS 4.48's S3 gateway (`weed mini`) with minio 7.2.20:
- PutObject with `If-None-Match: *` creates the object only if it is absent, else answers 412 PreconditionFailed;
- PutObject with `If-Match: "<etag>"` replaces it only if its current ETag is that one, else 412 (also 412 when the
  object is absent); quoted and bare ETags are both accepted;
- both are atomic: 8 threads racing the same conditional PUT, repeated, always had exactly one winner and seven
  412s, and 8 threads x N retried increments of a counter end at exactly 8 x N
  (tests/integration/test_objectstore.py).
MinIO and AWS S3 honour the same headers (AWS may also answer 409 ConditionalRequestConflict to a racing writer,
and 404 NoSuchKey to `If-Match` on an absent key: both are a conflict here). The SDK's `put_object` turns any
header it does not know into user metadata (`x-amz-meta-if-match`), so the conditional PUT goes through its
lower-level `_put_object`, which sends headers as given.
"""
from __future__ import annotations

from minio import Minio
from minio.error import S3Error

from libs.common.settings import ObjectStoreSettings

# Answers to a conditional PUT that mean "someone else's write came first" (see the module docstring).
CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


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


# --- refs: small objects updated by compare-and-swap ------------------------------------------------------------


class RefConflict(Exception):
    """Another writer changed (or created) the ref since it was read: read it again and retry."""


def _etag(headers) -> str:
    return (headers.get("etag") or "").strip('"')


def read_ref(client: Minio, bucket: str, key: str) -> tuple[bytes, str] | None:
    """The ref's content and its ETag (taken from the same response, so they belong together); None if absent."""
    try:
        response = client.get_object(bucket, key)
    except S3Error as exc:
        if exc.code == "NoSuchKey":
            return None
        raise
    try:
        return response.read(), _etag(response.headers)
    finally:
        response.close()
        response.release_conn()


def compare_and_swap_ref(client: Minio, bucket: str, key: str, content: bytes, expected_etag: str | None) -> str:
    """Writes `content` only if the ref is still as read: absent when `expected_etag` is None, else carrying that
    ETag. Returns the new ETag; raises RefConflict when another write came first.

    Caveat: the SDK retries a PUT that failed with a 5xx; if the first attempt had in fact been stored, the retry
    sees a changed ETag and this raises RefConflict for the caller's own write. Callers whose update is not
    idempotent should put something unique (a writer id, a nonce) into the content to recognise it."""
    if expected_etag is None:
        condition = {"If-None-Match": "*"}
    else:
        condition = {"If-Match": f'"{expected_etag.strip(chr(34))}"'}
    headers = {"Content-Type": "application/octet-stream", **condition}
    try:
        result = client._put_object(bucket, key, content, headers=headers)  # noqa: SLF001 (see module docstring)
    except S3Error as exc:
        if exc.code in CONFLICT_CODES or (expected_etag is not None and exc.code == "NoSuchKey"):
            raise RefConflict(f"s3://{bucket}/{key} changed since it was read ({exc.code})") from exc
        raise
    return result.etag
