"""Claim-check for frames: a frame too large for a comfortable Kafka message is written to the object store
and the event carries a reference (ObjectRef) instead of the bytes. `frame_bytes` gives every consumer the
image bytes whichever form the event has, and checks them against the recorded sha256."""
from __future__ import annotations

from datetime import datetime, timezone

from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.error import S3Error
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from libs.common.objectstore import ObjectIntegrityError, ensure_bucket, get_verified, put_verified
from protos import events_pb2

DEFAULT_THRESHOLD_BYTES = 512 * 1024


class ClaimCheckError(RuntimeError):
    """The referenced bytes could not be fetched, or are not the bytes the event names."""


class ClaimCheckStore:
    def __init__(self, client: Minio, bucket: str, expiry_days: int = 1) -> None:
        self.client = client
        self.bucket = bucket
        self.expiry_days = expiry_days

    def ensure_bucket(self) -> None:
        """Creates the bucket with an expiry rule: claim-checked frames live as long as their events do."""
        ensure_bucket(self.client, self.bucket)
        rule = Rule(ENABLED, rule_filter=Filter(prefix=""), rule_id="expire-frames",
                    expiration=Expiration(days=self.expiry_days))
        try:
            self.client.set_bucket_lifecycle(self.bucket, LifecycleConfig([rule]))
        except S3Error as exc:
            # An S3 server without lifecycle support still stores and serves frames; expiry is then the
            # operator's (a TTL on the bucket). Refusing to ingest over it would help nobody.
            if exc.code not in ("NotImplemented", "MalformedXML"):
                raise

    def put(self, key: str, data: bytes) -> events_pb2.ObjectRef:
        return put_verified(self.client, self.bucket, key, data, content_type="image/jpeg")

    def get(self, ref: events_pb2.ObjectRef) -> bytes:
        try:
            return get_verified(self.client, ref)
        except S3Error as exc:
            raise ClaimCheckError(f"s3://{ref.bucket}/{ref.key}: {exc.code}") from exc
        except ObjectIntegrityError as exc:
            raise ClaimCheckError(str(exc)) from exc


def frame_key(camera_id: str, event_id: str, now: datetime | None = None) -> str:
    # Date first, so an operator can list or expire a day of frames with a prefix.
    day = (now or datetime.now(timezone.utc)).strftime("%Y/%m/%d")
    return f"frames/{day}/{camera_id}/{event_id}.jpg"


def frame_bytes(frame: events_pb2.Frame, store: ClaimCheckStore | None) -> bytes:
    """The frame's encoded image, inline or from the object store."""
    if frame.WhichOneof("payload") == "ref":
        if store is None:
            raise ClaimCheckError("the frame is a claim-check reference and no object store is configured")
        return store.get(frame.ref)
    return frame.data
