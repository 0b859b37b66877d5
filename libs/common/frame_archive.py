"""The durable frame archive: frames that annotation tasks and dataset items point at, kept in a bucket with no
expiry rule (events on vigil.frames live 2 h and claim-checked frames a day). Content-addressed: a frame's key is
the sha256 of its JPEG bytes, so archiving the same frame twice writes it once and a reference never goes stale."""
from __future__ import annotations

import hashlib

from minio import Minio
from minio.error import S3Error

from libs.common.claimcheck import ClaimCheckStore, frame_bytes
from libs.common.objectstore import ensure_bucket, put_verified
from protos import events_pb2

ARCHIVE_BUCKET = "vigil-archive"
CONTENT_TYPES = {"jpeg": "image/jpeg"}


def archive_key(sha256: str) -> str:
    return f"frames/sha256/{sha256}.jpg"


class FrameArchive:
    def __init__(self, client: Minio, bucket: str = ARCHIVE_BUCKET, claim_check: ClaimCheckStore | None = None) -> None:
        self.client = client
        self.bucket = bucket
        # Where claim-checked frames are fetched from (None: only inline frames can be archived).
        self.claim_check = claim_check

    def ensure_bucket(self) -> None:
        """Creates the bucket. It gets no lifecycle rule: archived frames are kept until deleted on purpose."""
        ensure_bucket(self.client, self.bucket)

    def archive_frame(self, frame: events_pb2.Frame) -> events_pb2.ObjectRef:
        """A durable reference to the frame's image, inline or claim-checked (whose bytes are checked against
        their sha256 on the way)."""
        if frame.WhichOneof("payload") == "ref" and frame.ref.sha256:
            # A claim-checked frame names its sha256: one already archived costs a stat, not a download.
            existing = self._archived(frame.ref.sha256)
            if existing is not None:
                return existing
        data = frame_bytes(frame, self.claim_check)
        sha256 = hashlib.sha256(data).hexdigest()
        existing = self._archived(sha256)
        if existing is not None:
            return existing
        # If-None-Match: a concurrent archiver of the same frame writes it once, and neither of them fails.
        content_type = CONTENT_TYPES.get(frame.encoding or "jpeg", "application/octet-stream")
        return put_verified(self.client, self.bucket, archive_key(sha256), data, content_type=content_type,
                            if_absent=True)

    def _archived(self, sha256: str) -> events_pb2.ObjectRef | None:
        key = archive_key(sha256)
        try:
            stat = self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NotFound"):
                return None
            raise
        return events_pb2.ObjectRef(bucket=self.bucket, key=key, size=stat.size, sha256=sha256)

