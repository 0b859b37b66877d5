"""The versioned dataset store on S3 (the bucket `vigil-datasets` by default): content-addressed blobs, immutable
content-addressed manifests, and branches and tags moved by compare-and-swap.

Layout (docs: /work/coord/DATASETS.md, kept in this module's constants):
- `blobs/sha256/<hex>`: images, written once (the same image twice is stored once);
- `versions/<dataset>/<version id>.json`: a manifest, written once (services/datasets/manifest.py);
- `refs/<dataset>/branches/<name>`, `refs/<dataset>/tags/<name>`: {"version": id, ...}, moved by
  compare-and-swap on S3 conditional writes (libs/common/objectstore.py); a tag never moves once set.

A commit runs the validation gate, writes the manifest, then moves the branch from the head it read. The ref move
is the commit point: a process killed before it leaves the branch at the previous version, and the manifest it
wrote is reachable from no ref (no branch, tag or log shows it; garbage collection removes it once older than the
grace period). Two committers racing on one branch both write their manifest, and exactly one moves the ref: the
other gets RefConflict, and `append` retries by reading the new head and merging its items again."""
from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Iterator, Sequence

from minio import Minio
from minio.error import S3Error

from libs.common.objectstore import RefConflict, compare_and_swap_ref, get_verified, put_verified, read_ref
from protos import events_pb2
from services.datasets.manifest import (Item, Manifest, build_manifest, canonical_json, check_name, is_version_id,
                                        utc_now_iso)
from services.datasets.splits import DEFAULT_BUCKET_S, DEFAULT_RATIOS, item_split
from services.datasets.validation import CommitRefused, Schema, is_sha256, validation_problems, version_schema

__all__ = ["DatasetStore", "RefConflict", "CommitRefused", "UnknownRef", "TagExists", "StoredObject"]

DEFAULT_BUCKET = "vigil-datasets"
BLOB_PREFIX = "blobs/sha256/"
VERSIONS_PREFIX = "versions/"
REFS_PREFIX = "refs/"
_MISSING = frozenset({"NoSuchKey", "NotFound", "ResourceNotFound"})
# Above this many blobs to check, one listing of the blob prefix is cheaper than a HEAD each.
_LIST_BLOBS_ABOVE = 64


class UnknownRef(KeyError):
    """No branch, tag or version of that name in the dataset."""


class TagExists(RuntimeError):
    """The tag already names another version: tags never move."""


@dataclass(frozen=True)
class StoredObject:
    """A blob or a manifest as listed in the bucket."""
    name: str  # a blob's sha256, or "<dataset>/<version id>" for a manifest
    size: int
    last_modified: datetime


def blob_key(sha256: str) -> str:
    return f"{BLOB_PREFIX}{sha256}"


def manifest_key(dataset: str, version: str) -> str:
    return f"{VERSIONS_PREFIX}{dataset}/{version}.json"


def branch_key(dataset: str, branch: str) -> str:
    return f"{REFS_PREFIX}{dataset}/branches/{check_name(branch, 'branch')}"


def tag_key(dataset: str, tag: str) -> str:
    return f"{REFS_PREFIX}{dataset}/tags/{check_name(tag, 'tag')}"


class DatasetStore:
    """Datasets in one bucket. `schema` gives the label classes the validation gate checks (a SchemaStore, one
    LabelSchema or a set of class names; None leaves classes unchecked). Items committed without a split get the
    stable split of their group (camera + `bucket_s` bucket of capture time, `ratios` train/val/test).

    `on_manifest_written(manifest)` is called between writing a manifest and moving the branch: for tests that
    race two committers or kill one at that point."""

    def __init__(self, client: Minio, bucket: str = DEFAULT_BUCKET, *, schema: Schema = None,
                 ratios: Sequence[float] = DEFAULT_RATIOS, bucket_s: float = DEFAULT_BUCKET_S,
                 blob_refresh_after: timedelta = timedelta(hours=1),
                 on_manifest_written: Callable[[Manifest], None] | None = None, cached_manifests: int = 8):
        self.client = client
        self.bucket = bucket
        self.schema = schema
        self.ratios = tuple(ratios)
        self.bucket_s = bucket_s
        self.blob_refresh_after = blob_refresh_after
        self.on_manifest_written = on_manifest_written
        self._manifests: OrderedDict[tuple[str, str], Manifest] = OrderedDict()
        self._cached_manifests = cached_manifests

    # --- blobs ---------------------------------------------------------------------------------------------------

    def put_blob(self, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Stores `data` under its sha256 (once: a blob already stored is not uploaded again) and returns the
        sha256. A stored blob older than `blob_refresh_after` is written again (the same bytes), so its age
        restarts: garbage collection spares unreferenced blobs younger than its grace period, and this one is
        about to be referenced."""
        sha256 = hashlib.sha256(data).hexdigest()
        stored = self._stat(blob_key(sha256))
        if stored is not None and stored.last_modified > datetime.now(timezone.utc) - self.blob_refresh_after:
            return sha256
        put_verified(self.client, self.bucket, blob_key(sha256), data, content_type=content_type,
                     if_absent=stored is None)
        return sha256

    def get_blob(self, sha256: str) -> bytes:
        """The blob's bytes, checked against its sha256 (ObjectIntegrityError otherwise)."""
        return get_verified(self.client, events_pb2.ObjectRef(bucket=self.bucket, key=blob_key(sha256),
                                                              sha256=sha256))

    def blob_size(self, sha256: str) -> int | None:
        stored = self.stored_blob(sha256)
        return None if stored is None else stored.size

    def stored_blob(self, sha256: str) -> StoredObject | None:
        """The blob's size and time of writing, None when it is not stored."""
        stored = self._stat(blob_key(sha256))
        return None if stored is None else StoredObject(sha256, stored.size, stored.last_modified)

    def blob_ref(self, sha256: str, size: int = 0) -> events_pb2.ObjectRef:
        return events_pb2.ObjectRef(bucket=self.bucket, key=blob_key(sha256), sha256=sha256, size=size)

    def stored_blobs(self) -> Iterator[StoredObject]:
        for entry in self.client.list_objects(self.bucket, prefix=BLOB_PREFIX, recursive=True):
            yield StoredObject(entry.object_name.removeprefix(BLOB_PREFIX), entry.size, entry.last_modified)

    def delete_blob(self, sha256: str) -> None:
        self.client.remove_object(self.bucket, blob_key(sha256))

    def _stat(self, key: str):
        try:
            return self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                return None
            raise

    def _blob_size_lookup(self, items: Sequence[Item], known: dict[str, int]) -> Callable[[str], int | None]:
        """sha256 -> stored size for the validation gate. Blobs of the parent version are known to be stored
        (garbage collection keeps what a version references); the others are looked up, by one listing of the
        blob prefix when there are many."""
        unknown = {item.blob for item in items if is_sha256(item.blob)} - known.keys()
        if len(unknown) > _LIST_BLOBS_ABOVE:
            listed = {blob.name: blob.size for blob in self.stored_blobs()}
            found = {sha: listed.get(sha) for sha in unknown}
        else:
            found = {sha: self.blob_size(sha) for sha in unknown}
        return lambda sha: known[sha] if sha in known else found.get(sha)

    # --- manifests -----------------------------------------------------------------------------------------------

    def manifest_ref(self, manifest: Manifest) -> events_pb2.ObjectRef:
        """Where a version's manifest is, with its size and sha256 (for a DatasetVersion announcement)."""
        data = manifest.to_bytes()
        return events_pb2.ObjectRef(bucket=self.bucket, key=manifest_key(manifest.dataset, manifest.version),
                                    size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def stored_manifests(self) -> Iterator[StoredObject]:
        """Every manifest in the bucket, reachable from a ref or not."""
        for entry in self.client.list_objects(self.bucket, prefix=VERSIONS_PREFIX, recursive=True):
            name = entry.object_name.removeprefix(VERSIONS_PREFIX)
            if name.endswith(".json"):
                yield StoredObject(name.removesuffix(".json"), entry.size, entry.last_modified)

    def delete_manifest(self, dataset: str, version: str) -> None:
        self._manifests.pop((dataset, version), None)
        self.client.remove_object(self.bucket, manifest_key(dataset, version))

    def read_manifest(self, dataset: str, version: str) -> Manifest:
        """The manifest stored under that version id, checked against it; UnknownRef when there is none."""
        held = self._manifests.get((dataset, version))
        if held is not None:
            self._manifests.move_to_end((dataset, version))
            return held
        try:
            data = get_verified(self.client, events_pb2.ObjectRef(bucket=self.bucket,
                                                                  key=manifest_key(dataset, version)))
        except S3Error as exc:
            if exc.code in _MISSING:
                raise UnknownRef(f"dataset {dataset!r} has no version {version}") from None
            raise
        manifest = Manifest.from_bytes(data)
        if (manifest.dataset, manifest.version) != (dataset, version):
            raise UnknownRef(f"{manifest_key(dataset, version)} holds {manifest.dataset}@{manifest.version}")
        self._remember(manifest)
        return manifest

    def _remember(self, manifest: Manifest) -> None:
        self._manifests[(manifest.dataset, manifest.version)] = manifest
        while len(self._manifests) > self._cached_manifests:
            self._manifests.popitem(last=False)

    # --- refs ----------------------------------------------------------------------------------------------------

    def head(self, dataset: str, branch: str = "main") -> tuple[str | None, str | None]:
        """The branch's version id and its ref's ETag (None, None when the branch does not exist)."""
        found = read_ref(self.client, self.bucket, branch_key(check_name(dataset), branch))
        if found is None:
            return None, None
        return json.loads(found[0])["version"], found[1]

    def resolve(self, dataset: str, ref_or_version: str) -> str:
        """The version id a branch, a tag or a version id names (UnknownRef when none)."""
        check_name(dataset)
        if is_version_id(ref_or_version):
            return ref_or_version
        for key in (branch_key(dataset, ref_or_version), tag_key(dataset, ref_or_version)):
            found = read_ref(self.client, self.bucket, key)
            if found is not None:
                return json.loads(found[0])["version"]
        raise UnknownRef(f"dataset {dataset!r} has no branch, tag or version {ref_or_version!r}")

    def version(self, dataset: str, ref_or_version: str = "main") -> Manifest:
        """The manifest a branch ("main"), a tag or a version id names."""
        return self.read_manifest(dataset, self.resolve(dataset, ref_or_version))

    def log(self, dataset: str, ref: str = "main", limit: int | None = None) -> list[Manifest]:
        """The versions from `ref` back to the first, newest first, following first parents."""
        found, version = [], self.resolve(dataset, ref)
        while version is not None and (limit is None or len(found) < limit):
            manifest = self.read_manifest(dataset, version)
            found.append(manifest)
            version = manifest.parent
        return found

    def tag(self, dataset: str, tag: str, ref: str, by: str = "") -> str:
        """Sets `tag` to the version `ref` names and returns its id. Setting it again to the same version changes
        nothing; to another, TagExists: a tag never moves."""
        version = self.resolve(dataset, ref)
        self.read_manifest(dataset, version)  # UnknownRef for a version never committed
        content = canonical_json({"version": version, "created_at": utc_now_iso(), "by": by})
        try:
            compare_and_swap_ref(self.client, self.bucket, tag_key(dataset, tag), content, None)
        except RefConflict:
            existing = self.resolve(dataset, tag)
            if existing != version:
                raise TagExists(f"tag {tag!r} of {dataset!r} names {existing}: tags never move") from None
        return version

    def datasets(self) -> list[str]:
        return sorted(entry.object_name.removeprefix(REFS_PREFIX).strip("/")
                      for entry in self.client.list_objects(self.bucket, prefix=REFS_PREFIX) if entry.is_dir)

    def branches(self, dataset: str) -> dict[str, str]:
        return self._refs(f"{REFS_PREFIX}{check_name(dataset)}/branches/")

    def tags(self, dataset: str) -> dict[str, str]:
        return self._refs(f"{REFS_PREFIX}{check_name(dataset)}/tags/")

    def _refs(self, prefix: str) -> dict[str, str]:
        found = {}
        for entry in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            content = read_ref(self.client, self.bucket, entry.object_name)
            if content is not None:
                found[entry.object_name.removeprefix(prefix)] = json.loads(content[0])["version"]
        return dict(sorted(found.items()))

    # --- commits -------------------------------------------------------------------------------------------------

    def commit(self, dataset: str, items: Iterable[Item], message: str, author: str, branch: str = "main",
               expected_parent=..., schema_version: str = "") -> Manifest:
        """A new version of exactly `items` on `branch`, whose head becomes its parent. Raises CommitRefused
        (naming every problem) before writing anything, and RefConflict when the branch moved since it was read,
        or is not at `expected_parent` (a version id, or None for "the branch does not exist yet")."""
        head, etag = self.head(dataset, branch)
        if expected_parent is not ... and expected_parent != head:
            raise RefConflict(f"{dataset}/{branch} is at {head}, not at {expected_parent}")
        parent = self.read_manifest(dataset, head) if head else None
        return self._commit_on(dataset, branch, list(items), parent, etag, message, author, schema_version)

    def append(self, dataset: str, items: Iterable[Item], message: str, author: str, branch: str = "main",
               retries: int = 5, schema_version: str = "") -> Manifest:
        """The branch's items with `items` merged in by item_id (a new one replaces an old one), committed; on a
        conflict the head is read again and the merge redone, up to `retries` times. Appending what the head
        already holds commits nothing and returns the head (a redelivered batch is no new version)."""
        new_items = [self._with_split(item) for item in items]
        for attempt in range(retries + 1):
            head, etag = self.head(dataset, branch)
            parent = self.read_manifest(dataset, head) if head else None
            merged = dict(parent.items_by_id()) if parent else {}
            if parent is not None and all(merged.get(item.item_id) == item for item in new_items):
                return parent
            merged.update((item.item_id, item) for item in new_items)
            try:
                return self._commit_on(dataset, branch, list(merged.values()), parent, etag, message, author,
                                       schema_version or (parent.schema_version if parent else ""))
            except RefConflict:
                if attempt == retries:
                    raise
                time.sleep(random.uniform(0, 0.02 * 2 ** attempt))  # jitter, so racing writers fall apart
        raise AssertionError("unreachable")

    def _with_split(self, item: Item) -> Item:
        return item if item.split else item.with_split(item_split(item, self.ratios, self.bucket_s))

    def _commit_on(self, dataset: str, branch: str, items: list[Item], parent: Manifest | None,
                   etag: str | None, message: str, author: str, schema_version: str) -> Manifest:
        items = sorted((self._with_split(item) for item in items), key=lambda item: item.item_id)
        schema_version, _ = version_schema(items, schema_version)
        known = {item.blob: item.size for item in parent.items} if parent else {}
        problems = validation_problems(items, schema_version, self.schema, self._blob_size_lookup(items, known))
        if problems:
            raise CommitRefused(problems)
        manifest = build_manifest(dataset, items, parents=[parent.version] if parent else [], message=message,
                                  author=author, schema_version=schema_version)
        put_verified(self.client, self.bucket, manifest_key(dataset, manifest.version), manifest.to_bytes(),
                     content_type="application/json", if_absent=True)
        self._remember(manifest)
        if self.on_manifest_written is not None:
            self.on_manifest_written(manifest)
        nonce = uuid.uuid4().hex
        ref = canonical_json({"version": manifest.version, "updated_at": utc_now_iso(), "by": author,
                              "nonce": nonce})
        try:
            compare_and_swap_ref(self.client, self.bucket, branch_key(dataset, branch), ref, etag)
        except RefConflict:
            # The SDK retries a PUT that failed with a 5xx: the first attempt may have been ours (see
            # compare_and_swap_ref). The nonce tells.
            found = read_ref(self.client, self.bucket, branch_key(dataset, branch))
            if found is None or json.loads(found[0]).get("nonce") != nonce:
                raise
        return manifest
