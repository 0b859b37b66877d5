"""The diff of two dataset versions is exact: every added, removed, relabelled, moved and otherwise changed item,
and nothing else (boxes listed in another order are no change)."""
from __future__ import annotations

from services.datasets.diff import diff
from services.datasets.manifest import build_manifest
from tests.dataset_items import item


def test_the_diff_of_two_known_versions_is_exact():
    a = build_manifest("d", [
        item("keep", ("person", 1, 1, 20, 40), ("car", 50, 50, 90, 80)),
        item("gone", ("car", 1, 1, 20, 20)),
        item("relabel", ("person", 1, 1, 20, 40)),
        item("move", ("car", 1, 1, 20, 20), split="train"),
        item("both", ("car", 1, 1, 20, 20), split="train"),
        item("empty-now", ("dog", 1, 1, 20, 20)),
        item("new-image", ("car", 1, 1, 20, 20), blob="a" * 64),
    ])
    b = build_manifest("d", [
        item("keep", ("car", 50, 50, 90, 80), ("person", 1, 1, 20, 40)),  # same boxes, other order
        item("relabel", ("cyclist", 1, 1, 20, 40)),
        item("move", ("car", 1, 1, 20, 20), split="test"),
        item("both", ("car", 2, 1, 20, 20), split="val"),
        item("empty-now"),
        item("new-image", ("car", 1, 1, 20, 20), blob="b" * 64),
        item("fresh", ("person", 3, 3, 30, 30)),
    ])
    d = diff(a, b)
    assert (d.a, d.b) == (a.version, b.version)
    assert d.added == ["fresh"] and d.removed == ["gone"]
    assert d.relabelled == ["both", "empty-now", "relabel"]
    assert d.moved == [("both", "train", "val"), ("move", "train", "test")]
    assert d.changed == {"new-image": ["blob"]}
    assert d.unchanged == 1
    assert d.relabel_details["empty-now"] == (
        {"verdict": "labelled", "labels": [{"label": "dog", "box": [1.0, 1.0, 20.0, 20.0]}]},
        {"verdict": "nothing_to_label", "labels": []})
    assert d.summary().endswith("1 added, 1 removed, 3 relabelled, 2 moved split, 1 changed, 1 unchanged")
    as_json = d.to_json()
    assert [r["item_id"] for r in as_json["relabelled"]] == ["both", "empty-now", "relabel"]
    assert as_json["moved"][0] == {"item_id": "both", "from": "train", "to": "val"}


def test_a_version_against_itself_is_an_empty_diff():
    a = build_manifest("d", [item(f"i{n}", ("car", 1, 1, 9, 9)) for n in range(50)])
    d = diff(a, a)
    assert d.empty and d.unchanged == 50
    assert diff(build_manifest("d", []), a).added == sorted(f"i{n}" for n in range(50))
