"""The dataset audit event built from a manifest: flattened statistics, the version's lineage, and ids that are the
same for the same commit or tag (a re-announcement dedupes) and fresh for each export."""
from __future__ import annotations

import pytest

from protos import events_pb2
from services.datasets.events import dataset_event, flat_statistics, gc_event
from services.datasets.manifest import build_manifest
from tests.dataset_items import item


def manifest():
    return build_manifest("lobby", [item("a", ("person", 1, 1, 40, 80), camera_id="cam-1", split="train"),
                                    item("b", ("car", 5, 5, 60, 60), ("car", 1, 1, 9, 9), camera_id="cam-2",
                                         split="val")],
                          parents=["0123456789abcdef"], message="first", author="ann", schema_version="3")


def test_statistics_are_flattened_as_the_proto_documents():
    assert flat_statistics(manifest().statistics) == {
        "items": 2, "boxes": 3, "split.train": 1, "split.val": 1, "class.car": 2, "class.person": 1,
        "camera.cam-1": 1, "camera.cam-2": 1}


def test_a_commit_event_carries_the_version_and_the_same_commit_gives_the_same_event_id():
    m = manifest()
    ref = events_pb2.ObjectRef(bucket="vigil-datasets", key=f"versions/lobby/{m.version}.json", size=10)
    event = dataset_event(m, "commit", "cli/ann", branch="main", manifest_ref=ref)
    assert (event.dataset, event.version, event.action, event.actor, event.message) == (
        "lobby", m.version, "commit", "cli/ann", "first")
    assert list(event.parent_versions) == ["0123456789abcdef"] and event.item_count == 2
    assert event.statistics["boxes"] == 3 and event.schema_version == "3" and event.manifest.key == ref.key
    again = dataset_event(m, "commit", "cli/ann", branch="main", manifest_ref=ref)
    assert again.envelope.event_id == event.envelope.event_id
    assert dataset_event(m, "tag", "cli/ann", tag="v1").envelope.event_id != event.envelope.event_id


def test_each_export_is_its_own_event_and_unknown_actions_are_refused():
    m = manifest()
    first = dataset_event(m, "export", "cli/ann", "exported as coco to /tmp/x")
    second = dataset_event(m, "export", "cli/ann", "exported as coco to /tmp/x")
    assert first.envelope.event_id != second.envelope.event_id and first.message == "exported as coco to /tmp/x"
    with pytest.raises(ValueError):
        dataset_event(m, "delete", "cli/ann")


def test_a_collection_event_names_no_version():
    event = gc_event("cli/ann", "deleted 2 blobs", {"deleted_blobs": 2, "deleted_bytes": 300})
    assert event.action == "gc" and not event.version and event.statistics["deleted_bytes"] == 300
