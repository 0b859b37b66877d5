"""The dataset audit event: a DatasetVersion (protos/events.proto) on vigil.datasets, keyed by dataset name, for
every commit, import, tag, export and garbage collection, built here once for the service and the CLI.

`dataset_event(manifest, action, actor, ...)` makes the event about a version; `gc_event(...)` the one about a
collection (no version). Statistics are flattened as the proto documents: "items", "boxes", "split.<name>",
"class.<name>", "camera.<id>" (an item without a camera counts under "camera."). A commit's and a tag's event id is
a pure function of what they record (dataset, version, tag), so announcing one again (a retry after a lost
acknowledgement) is the same event and dedupes in the metrics store; an export, an import or a collection is a new
act each time and gets a fresh id."""
from __future__ import annotations

import time
import uuid
from datetime import datetime

from libs.common.envelope import new_envelope
from protos import events_pb2
from services.datasets.manifest import Manifest

ACTIONS = ("commit", "import", "tag", "export", "gc")
PRODUCER = "vigil-datasets"
_EVENT_ID_NAMESPACE = uuid.UUID("8d3f1a52-6c0e-4b7d-9a61-2f5e7c4b9d18")


def flat_statistics(statistics: dict) -> dict[str, int]:
    """A manifest's statistics as the event's flat map of counts."""
    flat = {"items": int(statistics.get("items", 0)),
            "boxes": int(sum(statistics.get("boxes_per_class", {}).values()))}
    for prefix, key in (("split", "items_per_split"), ("class", "boxes_per_class"),
                        ("camera", "items_per_camera")):
        for name, count in statistics.get(key, {}).items():
            flat[f"{prefix}.{name}"] = int(count)
    return flat


def _created_ns(manifest: Manifest) -> int:
    try:
        return int(datetime.fromisoformat(manifest.created_at.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return time.time_ns()


def dataset_event(manifest: Manifest, action: str, actor: str, message: str | None = None, *, branch: str = "",
                  tag: str = "", manifest_ref: events_pb2.ObjectRef | None = None,
                  producer: str = PRODUCER) -> events_pb2.DatasetVersion:
    """The DatasetVersion recording `action` on the version `manifest` by `actor` (a person, "cli/<user>", or a
    service). `message` defaults to the version's commit message; `manifest_ref` is where the manifest is stored
    (DatasetStore.manifest_ref). A commit's event time is the version's creation; any other's is now."""
    if action not in ACTIONS:
        raise ValueError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    deterministic = action in ("commit", "tag")
    event_id = (str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"{manifest.dataset}/{manifest.version}/{action}/{tag}"))
                if deterministic else None)
    event = events_pb2.DatasetVersion(
        envelope=new_envelope(source=f"datasets/{manifest.dataset}", producer=producer, event_id=event_id,
                              event_time_ns=_created_ns(manifest) if action == "commit" else None),
        dataset=manifest.dataset, version=manifest.version, item_count=len(manifest.items),
        parent_versions=list(manifest.parents), action=action, actor=actor,
        message=manifest.message if message is None else message, branch=branch, tag=tag,
        statistics=flat_statistics(manifest.statistics), schema_version=manifest.schema_version)
    if manifest_ref is not None:
        event.manifest.CopyFrom(manifest_ref)
    return event


def gc_event(actor: str, message: str, statistics: dict[str, int], dataset: str = "",
             producer: str = PRODUCER) -> events_pb2.DatasetVersion:
    """The DatasetVersion recording a garbage collection (of the whole bucket: `dataset` empty), what it deleted
    in `message` and counted in `statistics` (e.g. "deleted_blobs", "deleted_bytes")."""
    return events_pb2.DatasetVersion(
        envelope=new_envelope(source=f"datasets/{dataset or '*'}", producer=producer),
        dataset=dataset, action="gc", actor=actor, message=message,
        statistics={k: int(v) for k, v in statistics.items()})
