"""Where reference profiles live: the profile (JSON) as a content-addressed object in the drift bucket, and an
announcement (DriftReference) per subject on the compacted vigil.drift.references, which the drift service follows
and `vigil drift reference set|show` writes and reads. Who set a reference, when, and from which windows is in both."""
from __future__ import annotations

import hashlib
import re

from minio import Minio

from libs.common.compacted import CompactedTable
from libs.common.objectstore import ensure_bucket, get_verified, put_verified
from libs.common.topics import DRIFT_REFERENCES
from protos import events_pb2
from services.drift.profiles import ReferenceProfile


def references_table(client_config: dict[str, str], client_id: str) -> CompactedTable[events_pb2.DriftReference]:
    return CompactedTable(client_config, DRIFT_REFERENCES, client_id=client_id)


class ReferenceStore:
    def __init__(self, client: Minio, bucket: str) -> None:
        self.client, self.bucket = client, bucket

    def ensure_bucket(self) -> None:
        ensure_bucket(self.client, self.bucket)

    def put(self, profile: ReferenceProfile) -> events_pb2.ObjectRef:
        """Stores the profile once under its content's hash (a replayed window stores nothing new)."""
        data = profile.to_json_bytes()
        digest = hashlib.sha256(data).hexdigest()
        subject = re.sub(r"[^A-Za-z0-9._-]+", "_", str(profile.key).rstrip("|"))
        return put_verified(self.client, self.bucket, f"references/{subject}/{digest}.json", data,
                            content_type="application/json", if_absent=True)

    def get(self, announcement: events_pb2.DriftReference) -> ReferenceProfile:
        return ReferenceProfile.from_json_bytes(get_verified(self.client, announcement.profile))
