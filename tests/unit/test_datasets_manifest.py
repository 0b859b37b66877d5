"""Dataset manifests: the version id is the hash of the canonical content (without the id), the same for the same
content whatever order items, boxes or keys came in, and a stored manifest that does not hash to its id is refused."""
from __future__ import annotations

import hashlib
import json

import pytest

from services.datasets.manifest import (CorruptManifest, InvalidName, Manifest, build_manifest, canonical_json,
                                        check_name, statistics, version_id)
from tests.dataset_items import item

WHEN = "2026-11-29T09:00:00.000000Z"


def two_items():
    return [item("b", ("car", 1, 2, 30, 40), ("person", 5, 5, 20, 60), camera_id="cam-2", split="val"),
            item("a", ("person", 10, 10, 50, 90))]


def test_the_version_id_is_the_hash_of_the_canonical_json_without_the_id():
    manifest = build_manifest("people", two_items(), message="m", author="ann", created_at=WHEN)
    content = manifest.to_json()
    without = {k: v for k, v in content.items() if k != "version"}
    expected = hashlib.sha256(json.dumps(without, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert manifest.version == expected == version_id(content)
    assert manifest.to_bytes() == canonical_json(content)  # the stored form is canonical, id included


def test_the_same_content_in_another_order_has_the_same_id():
    first = build_manifest("people", two_items(), created_at=WHEN)
    b, a = two_items()
    shuffled_boxes = item("b", ("person", 5, 5, 20, 60), ("car", 1, 2, 30, 40), camera_id="cam-2", split="val")
    second = build_manifest("people", [a, shuffled_boxes], created_at=WHEN)
    assert second.version == first.version and second.to_bytes() == first.to_bytes()
    assert [i.item_id for i in second.items] == ["a", "b"]


@pytest.mark.parametrize("change", [
    {"message": "other"}, {"author": "bob"}, {"parents": ["0123456789abcdef"]}, {"schema_version": "2"},
    {"created_at": "2026-11-29T09:00:00.000001Z"},
])
def test_any_change_of_content_changes_the_id(change):
    base = dict(message="m", author="ann", created_at=WHEN)
    assert (build_manifest("people", two_items(), **{**base, **change}).version
            != build_manifest("people", two_items(), **base).version)


def test_a_moved_box_changes_the_id():
    a, b = two_items()
    moved = item("a", ("person", 11, 10, 50, 90))
    assert build_manifest("p", [a, b], created_at=WHEN).version != build_manifest("p", [a, moved],
                                                                                     created_at=WHEN).version


def test_a_manifest_round_trips_through_its_stored_bytes():
    manifest = build_manifest("people", two_items(), parents=["0123456789abcdef"], message="m", author="ann",
                              schema_version="1", created_at=WHEN)
    again = Manifest.from_bytes(manifest.to_bytes())
    assert again == manifest and again.items == manifest.items and again.statistics == manifest.statistics
    pretty = json.dumps(manifest.to_json(), indent=2).encode()  # not canonical: checked the long way
    assert Manifest.from_bytes(pretty) == manifest


def test_a_tampered_manifest_is_refused():
    content = build_manifest("people", two_items(), created_at=WHEN).to_json()
    content["items"][0]["labels"][0]["label"] = "dog"
    with pytest.raises(CorruptManifest, match="hashes to"):
        Manifest.from_bytes(canonical_json(content))
    with pytest.raises(CorruptManifest):
        Manifest.from_bytes(b'{"dataset": "x"}')
    with pytest.raises(CorruptManifest):
        Manifest.from_bytes(b"[1]")


def test_statistics_count_items_boxes_per_class_cameras_and_splits():
    assert statistics(two_items()) == {"items": 2, "boxes_per_class": {"car": 1, "person": 2},
                                       "items_per_camera": {"cam-1": 1, "cam-2": 1},
                                       "items_per_split": {"train": 1, "val": 1}}


def test_names_that_cannot_be_object_keys_are_refused():
    assert check_name("people.v2_a-b") == "people.v2_a-b"
    for bad in ("", "../x", "a/b", "-x", "a" * 129):
        with pytest.raises(InvalidName):
            check_name(bad)
