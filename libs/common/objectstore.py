"""The object store (S3: MinIO in Kubernetes, SeaweedFS locally) through the `minio` SDK: the client, small ref
objects updated by compare-and-swap, objects written and read with their sha256 checked, and objects staged
then published so a reader never sees one that was not verified.

Conditional writes, as measured against SeaweedFS 4.48's S3 gateway (`weed mini`) with minio 7.2.20:
- PutObject with `If-None-Match: *` creates the object only if it is absent, else answers 412 PreconditionFailed;
- PutObject with `If-Match: "<etag>"` replaces it only if its current ETag is that one, else 412 (also 412 when the
  object is absent); quoted and bare ETags are both accepted;
- both are atomic: 8 threads racing the same conditional PUT (3 rounds of each kind) always had exactly one winner
  and seven 412s, and 8 threads x N retried increments of a counter end at exactly 8 x N
  (tests/integration/test_objectstore.py checks both).
MinIO and AWS S3 document the same headers (AWS may also answer 409 ConditionalRequestConflict to a racing writer,
and 404 NoSuchKey to `If-Match` on an absent key: both count as a conflict here; not tried against them here). The SDK's `put_object` turns any
header it does not know into user metadata (`x-amz-meta-if-match`), so the conditional PUT goes through its
lower-level `_put_object`, which sends headers as given.
"""
from __future__ import annotations

import hashlib
import io
import uuid
from datetime import datetime, timedelta, timezone

from minio import Minio
from minio.commonconfig import ENABLED, CopySource, Filter
from minio.error import S3Error
from minio.helpers import normalize_headers
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from libs.common.settings import ObjectStoreSettings
from protos import events_pb2

# Answers to a conditional PUT that mean "someone else's write came first" (see the module docstring).
CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
# The user-metadata key holding an object's sha256 (x-amz-meta-sha256 on the wire).
SHA256_METADATA = "sha256"
# Staged objects live under this prefix of the bucket they are published into, until published or expired.
STAGING_PREFIX = "_staging/"
STAGING_RULE_ID = "expire-staging"


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


# --- objects whose sha256 is recorded and checked ----------------------------------------------------------------


class ObjectIntegrityError(RuntimeError):
    """An object's bytes are not the bytes its sha256 names, or there is no sha256 to check them against."""


def put_verified(client: Minio, bucket: str, key: str, data: bytes, *,
                 content_type: str = "application/octet-stream", metadata: dict[str, str] | None = None,
                 if_absent: bool = False) -> events_pb2.ObjectRef:
    """Writes `data` with its sha256 in the object's metadata, and returns a reference naming both.

    With `if_absent`, an object already at `key` is left as it is (`If-None-Match: *`): for content-addressed
    keys, where an existing object holds the same bytes, so concurrent writers write once."""
    digest = hashlib.sha256(data).hexdigest()
    ref = events_pb2.ObjectRef(bucket=bucket, key=key, size=len(data), sha256=digest)
    all_metadata = {**(metadata or {}), SHA256_METADATA: digest}
    if not if_absent:
        client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type, metadata=all_metadata)
        return ref
    headers = {**normalize_headers(all_metadata), "Content-Type": content_type, "If-None-Match": "*"}
    try:
        client._put_object(bucket, key, data, headers=headers)  # noqa: SLF001 (see the module docstring)
    except S3Error as exc:
        if exc.code not in CONFLICT_CODES:
            raise
    return ref


def stored_sha256(headers) -> str | None:
    """The sha256 recorded in an object's metadata (from a GET's or a stat's headers)."""
    return headers.get(f"x-amz-meta-{SHA256_METADATA}")


def get_verified(client: Minio, ref: events_pb2.ObjectRef) -> bytes:
    """The object's bytes, checked against the reference's sha256, or (when the reference names none) against
    the sha256 recorded when it was written. Raises ObjectIntegrityError on a mismatch or when neither exists;
    S3Error (e.g. NoSuchKey) passes through."""
    response = client.get_object(ref.bucket, ref.key)
    try:
        data = response.read()
        expected = ref.sha256 or stored_sha256(response.headers)
    finally:
        response.close()
        response.release_conn()
    where = f"s3://{ref.bucket}/{ref.key}"
    if not expected:
        raise ObjectIntegrityError(f"{where}: no sha256 to check the content against")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ObjectIntegrityError(f"{where}: content does not match its sha256 (expected {expected}, got {actual})")
    return data


# --- staged, then published ---------------------------------------------------------------------------------------


def publish_staged(client: Minio, bucket: str, key: str, data: bytes, *,
                   content_type: str = "application/octet-stream",
                   metadata: dict[str, str] | None = None) -> events_pb2.ObjectRef:
    """Writes `data` under a staging key, reads it back and checks its sha256, and only then copies it (a
    server-side copy, atomic for readers) to `key`: a reader of `key` sees the previous object or a verified new
    one, never a partial or corrupted one. The staging object is removed on the way out; one left behind by a
    crash is expired by `expire_staging` (or removed by `remove_stale_staging`)."""
    staging_key = f"{STAGING_PREFIX}{uuid.uuid4().hex}/{key}"
    ref = put_verified(client, bucket, staging_key, data, content_type=content_type, metadata=metadata)
    try:
        get_verified(client, ref)
        client.copy_object(bucket, key, CopySource(bucket, staging_key))
    finally:
        client.remove_object(bucket, staging_key)
    ref.key = key
    return ref


def expire_staging(client: Minio, bucket: str, days: int = 1) -> bool:
    """Adds (or keeps) a lifecycle rule expiring what is left under the staging prefix after `days`, keeping
    the bucket's other rules. Returns False when the server has no lifecycle support."""
    try:
        config = client.get_bucket_lifecycle(bucket)
        rules = [rule for rule in (config.rules if config else []) if rule.rule_id != STAGING_RULE_ID]
        rules.append(Rule(ENABLED, rule_filter=Filter(prefix=STAGING_PREFIX), rule_id=STAGING_RULE_ID,
                          expiration=Expiration(days=days)))
        client.set_bucket_lifecycle(bucket, LifecycleConfig(rules))
    except S3Error as exc:
        if exc.code in ("NotImplemented", "MalformedXML"):
            return False
        raise
    return True


def remove_stale_staging(client: Minio, bucket: str, older_than: timedelta = timedelta(days=1)) -> int:
    """Removes staging objects older than `older_than` (for a server that expires nothing by itself);
    returns how many."""
    cutoff = datetime.now(timezone.utc) - older_than
    stale = [item.object_name for item in client.list_objects(bucket, prefix=STAGING_PREFIX, recursive=True)
             if item.last_modified is not None and item.last_modified < cutoff]
    for name in stale:
        client.remove_object(bucket, name)
    return len(stale)
