"""Garbage collection: deletes the blobs no version references and the manifests no ref reaches, once older than a
grace period; never a blob a live version references.

Live versions are those reachable from any branch or tag of any dataset, following every parent. Kept:
- every blob a live version references, however old;
- manifests reachable from no ref but younger than the grace period, and the blobs they reference: a commit in
  progress has written its manifest and not yet moved its branch (a killed or losing commit's manifest is
  collected once the grace period has passed);
- unreferenced blobs younger than the grace period: a commit in progress (or the service batching labels into
  its next commit) has stored them and not yet written the manifest naming them. `DatasetStore.put_blob` writes
  a blob again when it is older than its `blob_refresh_after`, so a blob about to be committed is young.

The grace period must exceed the longest time from storing a commit's blobs to moving its branch (hours by
default, where a commit takes seconds). The order of reading makes it safe with a commit running meanwhile:
blobs are listed first, then manifests, then refs; a commit landing in between has young new blobs and a parent
that is live. A blob is checked again just before it is deleted and kept if it was written since the listing.
A ref naming a manifest that cannot be read stops the collection before anything is deleted."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from services.datasets.store import DatasetStore


@dataclass
class GcReport:
    dry_run: bool
    live_versions: int = 0
    referenced_blobs: int = 0
    deleted_blobs: list[str] = field(default_factory=list)  # sha256 (to be deleted, on a dry run)
    deleted_bytes: int = 0
    young_unreferenced_blobs: list[str] = field(default_factory=list)  # kept by the grace period
    deleted_manifests: list[str] = field(default_factory=list)  # "<dataset>/<version id>"
    young_unreachable_manifests: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def live_versions(store: DatasetStore) -> dict[tuple[str, str], set[str]]:
    """(dataset, version id) -> the blobs it references, for every version reachable from a branch or tag."""
    live: dict[tuple[str, str], set[str]] = {}
    for dataset in store.datasets():
        pending = [*store.branches(dataset).values(), *store.tags(dataset).values()]
        while pending:
            version = pending.pop()
            if (dataset, version) in live:
                continue
            manifest = store.read_manifest(dataset, version)  # UnknownRef stops the collection
            live[(dataset, version)] = manifest.blobs()
            pending.extend(manifest.parents)
    return live


def collect_garbage(store: DatasetStore, grace: timedelta, dry_run: bool = False,
                    now: datetime | None = None) -> GcReport:
    """Deletes (or, with `dry_run`, lists) what no version needs and is older than `grace` at `now`."""
    if grace < timedelta(0):
        raise ValueError("the grace period cannot be negative")
    cutoff = (now or datetime.now(timezone.utc)) - grace
    report = GcReport(dry_run=dry_run)
    blobs = list(store.stored_blobs())  # first: see the module docstring
    manifests = list(store.stored_manifests())
    live = live_versions(store)
    report.live_versions = len(live)
    referenced: set[str] = set().union(*live.values()) if live else set()
    doomed_manifests = []
    for stored in manifests:
        dataset, _, version = stored.name.partition("/")
        if (dataset, version) in live:
            continue
        if stored.last_modified >= cutoff:
            report.young_unreachable_manifests.append(stored.name)
            referenced |= store.read_manifest(dataset, version).blobs()
        else:
            doomed_manifests.append((dataset, version))
    report.referenced_blobs = sum(1 for blob in blobs if blob.name in referenced)
    for blob in blobs:
        if blob.name in referenced:
            continue
        if blob.last_modified >= cutoff:
            report.young_unreferenced_blobs.append(blob.name)
            continue
        if not dry_run:
            current = store.stored_blob(blob.name)
            if current is None:
                continue
            if current.last_modified >= cutoff:  # stored again since the listing: about to be committed
                report.young_unreferenced_blobs.append(blob.name)
                continue
            store.delete_blob(blob.name)
        report.deleted_blobs.append(blob.name)
        report.deleted_bytes += blob.size
    for dataset, version in doomed_manifests:
        if not dry_run:
            store.delete_manifest(dataset, version)
        report.deleted_manifests.append(f"{dataset}/{version}")
    return report
