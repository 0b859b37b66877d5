"""The model registry in the object store: numbered, immutable versions of converted model directories
(`NAME/VERSION/` + a manifest of sha256, sizes and metadata) and a promotion pointer per model with its history.

Layout in the bucket: `NAME/VERSION/<files>`, `NAME/VERSION/manifest.json` (written last: a version without it
is an unfinished import, never listed nor reused), `NAME/promotion.json` (every promote and rollback, and every
rollout stage of a candidate version: history.py)."""
from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from minio import Minio
from minio.error import S3Error

from libs.common.objectstore import RefConflict, compare_and_swap_ref, read_ref
from libs.model_registry.history import (
    Rollout, current_primary, current_rollout, end_rollout_entry, rollback_target, rollout_entry,
)
from libs.model_registry.manifest import (
    CHUNK, MANIFEST, CorruptArtifact, RegistryError, UnknownModel, UnknownVersion, VersionExists,
    build_manifest, check_name, checked_file_paths, file_digest, next_version, parent_from_lineage,
)
from protos import events_pb2

BUCKET = "vigil-models"
PROMOTION = "promotion.json"
HISTORY_ATTEMPTS = 50  # racing writers each win in turn: enough for dozens at once


class ModelRegistry:
    def __init__(self, client: Minio, bucket: str = BUCKET) -> None:
        self.client = client
        self.bucket = bucket

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)

    # reading

    def _get(self, key: str) -> bytes | None:
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                return None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def _version_numbers(self, name: str) -> tuple[set[int], set[int]]:
        """(every version number with any object, the complete ones: those with a manifest)."""
        used, complete = set(), set()
        for obj in self.client.list_objects(self.bucket, prefix=f"{name}/", recursive=True):
            parts = obj.object_name.split("/")
            if len(parts) == 3 and parts[1].isdigit():
                used.add(int(parts[1]))
                if parts[2] == MANIFEST:
                    complete.add(int(parts[1]))
        return used, complete

    def models(self) -> list[str]:
        if not self.client.bucket_exists(self.bucket):
            return []
        return sorted(o.object_name.rstrip("/") for o in self.client.list_objects(self.bucket) if o.is_dir)

    def versions(self, name: str) -> list[int]:
        return sorted(self._version_numbers(name)[1])

    def manifest_bytes(self, name: str, version: int | None = None) -> tuple[int, bytes]:
        if version is None:
            versions = self.versions(name)
            if not versions:
                raise UnknownModel(f"no model {name!r} in the registry")
            version = versions[-1]
        data = self._get(f"{name}/{version}/{MANIFEST}")
        if data is None:
            if not self.versions(name):
                raise UnknownModel(f"no model {name!r} in the registry")
            raise UnknownVersion(f"model {name!r} has no version {version} (versions: "
                                 f"{', '.join(map(str, self.versions(name)))})")
        return version, data

    def manifest(self, name: str, version: int | None = None) -> dict:
        return checked_file_paths(json.loads(self.manifest_bytes(name, version)[1]))

    def artifact_ref(self, name: str, version: int) -> events_pb2.ObjectRef:
        _, data = self.manifest_bytes(name, version)
        return events_pb2.ObjectRef(bucket=self.bucket, key=f"{name}/{version}/{MANIFEST}", size=len(data),
                                    sha256=hashlib.sha256(data).hexdigest())

    def history(self, name: str) -> list[dict]:
        data = self._get(f"{name}/{PROMOTION}")
        return json.loads(data)["history"] if data else []

    def primary(self, name: str) -> int | None:
        return current_primary(self.history(name))

    def rollout(self, name: str) -> Rollout | None:
        """The candidate version rolled out now (shadow or canary), if any."""
        return current_rollout(self.history(name))

    # writing

    def import_dir(self, name: str, model_dir: Path, by: str, parent_version: int | None = None) -> dict:
        """Uploads `model_dir` as the next version of `name`; returns its manifest. Never overwrites."""
        check_name(name)
        self.ensure_bucket()
        used, complete = self._version_numbers(name)
        if parent_version is not None and parent_version not in complete:
            raise UnknownVersion(f"parent version {parent_version} of {name!r} is not in the registry")
        version = next_version(used)
        manifest = build_manifest(name, version, model_dir, by, datetime.now(timezone.utc), parent_version)
        if parent_version is None:
            lineage = manifest["lineage"]
            lineage["parent_version"] = parent_from_lineage(
                lineage["derived_from"], name, [self.manifest(name, v) for v in sorted(complete)])
        prefix = f"{name}/{version}/"
        if any(True for _ in self.client.list_objects(self.bucket, prefix=prefix)):
            raise VersionExists(f"{name} version {version} already exists; it is never overwritten")
        for entry in manifest["files"]:
            self.client.fput_object(self.bucket, prefix + entry["path"], str(Path(model_dir) / entry["path"]),
                                    metadata={"sha256": entry["sha256"]})
        # Another importer may have raced us to this number: the first manifest wins, ours is refused.
        if self._get(prefix + MANIFEST) is not None:
            raise VersionExists(f"{name} version {version} was completed by another import meanwhile")
        data = json.dumps(manifest, indent=2).encode()
        self.client.put_object(self.bucket, prefix + MANIFEST, io.BytesIO(data), len(data),
                               content_type="application/json")
        return manifest

    def _change_history(self, name: str, change: Callable[[list[dict]], dict]) -> list[dict]:
        """Appends the entry `change(history)` returns to the model's promotion history, by compare-and-swap of
        promotion.json: a writer that raced us makes us read again and decide again on the newer history, so no
        entry is ever lost. `change` may raise RegistryError to refuse. Returns the history it was appended to."""
        key = f"{name}/{PROMOTION}"
        entry_id = uuid.uuid4().hex  # recognises our own write if the SDK's retry of it reads as a conflict
        for attempt in range(HISTORY_ATTEMPTS):
            current = read_ref(self.client, self.bucket, key)
            history = json.loads(current[0])["history"] if current else []
            if any(e.get("id") == entry_id for e in history):
                return history[:next(i for i, e in enumerate(history) if e.get("id") == entry_id)]
            entry = {**change(history), "id": entry_id, "at": datetime.now(timezone.utc).isoformat()}
            data = json.dumps({"name": name, "history": history + [entry]}, indent=2).encode()
            try:
                compare_and_swap_ref(self.client, self.bucket, key, data, current[1] if current else None)
                return history
            except RefConflict:
                time.sleep(random.uniform(0, 0.05 * (attempt + 1)))  # spread the racers out
        raise RegistryError(f"{name}: the promotion history kept changing under {HISTORY_ATTEMPTS} attempts; "
                            f"try again")

    def promote(self, name: str, version: int, by: str) -> int | None:
        """Makes `version` the primary; returns the previous primary (None if there was none)."""
        self.manifest_bytes(name, version)  # unknown model or version: a clear error, nothing written

        def promotion(history: list[dict]) -> dict:
            if current_primary(history) == version:
                raise RegistryError(f"{name} version {version} is already the primary")
            return {"action": "promote", "version": version, "by": by}

        return current_primary(self._change_history(name, promotion))

    def rollback(self, name: str, by: str) -> tuple[int, int]:
        """Makes the previously promoted version the primary again; returns (retired, restored)."""
        if not self.versions(name):
            raise UnknownModel(f"no model {name!r} in the registry")
        history = self._change_history(name, lambda history: {
            "action": "rollback", "version": rollback_target(history), "by": by})
        return current_primary(history), rollback_target(history)

    def set_rollout(self, name: str, version: int, stage: str, by: str, share: float = 0.0,
                    reason: str = "") -> Rollout | None:
        """Runs `version` beside the primary: stage "shadow" (share 0: every camera) or "canary" (on `share`,
        in (0, 1], of the cameras). Replaces the rollout in progress, if any, and returns it. Refuses an unknown
        version and the primary itself."""
        self.manifest_bytes(name, version)  # unknown model or version: a clear error, nothing written
        history = self._change_history(name, lambda history: rollout_entry(
            history, name, version, stage, share, by, reason))
        return current_rollout(history)

    def end_rollout(self, name: str, by: str, reason: str = "") -> Rollout:
        """Stops the rollout in progress (the candidate no longer runs); returns it. NoRollout if none is."""
        if not self.versions(name):
            raise UnknownModel(f"no model {name!r} in the registry")
        return current_rollout(self._change_history(name, lambda history: end_rollout_entry(
            history, name, by, reason)))

    def download(self, name: str, version: int, dest: Path) -> Path:
        """Writes the version's files into `dest` (created; must not exist), each checked against its sha256
        and size. A mismatch raises CorruptArtifact and leaves nothing at `dest`."""
        dest = Path(dest)
        _, manifest_bytes = self.manifest_bytes(name, version)
        manifest = checked_file_paths(json.loads(manifest_bytes))
        if dest.exists():
            raise RegistryError(f"{dest} exists: download into a new directory")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            for entry in manifest["files"]:
                key = f"{name}/{version}/{entry['path']}"
                try:
                    response = self.client.get_object(self.bucket, key)
                except S3Error as exc:
                    raise CorruptArtifact(f"s3://{self.bucket}/{key}: {exc.code}") from exc
                digest, size = hashlib.sha256(), 0
                try:
                    with open(staging / entry["path"], "wb") as out:
                        for chunk in response.stream(CHUNK):
                            digest.update(chunk)
                            size += len(chunk)
                            out.write(chunk)
                finally:
                    response.close()
                    response.release_conn()
                if digest.hexdigest() != entry["sha256"] or size != entry["size"]:
                    raise CorruptArtifact(f"s3://{self.bucket}/{key} does not match its manifest (sha256 "
                                          f"{digest.hexdigest()[:12]}..., {size} bytes; expected "
                                          f"{entry['sha256'][:12]}..., {entry['size']} bytes): refused")
            # As stored: its sha256 is the one announcements name (artifact_ref), so a cached copy is recognised.
            (staging / MANIFEST).write_bytes(manifest_bytes)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest
