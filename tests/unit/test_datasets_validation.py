"""The validation gate names every problem of a version: boxes inside the image, classes in the schema (a provider
of schema versions, one schema, or a set of classes), one schema version per version, verdicts, splits, duplicate
ids, and blobs missing or of another size."""
from __future__ import annotations

import math

from services.annotation.schemas import LabelSchema, UnknownSchemaVersion
from services.datasets.manifest import Item, Label
from services.datasets.validation import CommitRefused, validation_problems
from tests.dataset_items import item

SCHEMA_1 = LabelSchema(version="1", classes=("person", "car"))
SCHEMA_2 = LabelSchema(version="2", classes=("person", "car", "forklift"))


class Schemas:
    """What SchemaStore offers the gate: get(version), UnknownSchemaVersion for one never published."""

    def get(self, version: str) -> LabelSchema:
        try:
            return {"1": SCHEMA_1, "2": SCHEMA_2}[version]
        except KeyError:
            raise UnknownSchemaVersion(version) from None


def test_a_good_version_has_no_problem():
    items = [item("a", ("person", 0, 0, 640, 480)), item("b", ("car", -0.4, 1, 640.5, 480.2), split="test"),
             item("c")]
    assert validation_problems(items, "1", Schemas(), blob_size=lambda sha: 100) == []
    assert validation_problems(items, "", {"person", "car"}) == []
    assert validation_problems(items, "1", SCHEMA_1) == []


def test_every_problem_is_named_item_by_item():
    items = [
        item("ok", ("person", 1, 1, 20, 20)),
        item("outside", ("person", 600, 10, 700, 90), ("car", 1, 1, 5, 5)),
        item("unknown", ("forklift", 1, 1, 20, 20)),
        item("flat", ("car", 50, 10, 50, 90)),
        item("nan", ("car", math.nan, 1, 5, 5)),
        item("no-box", verdict="labelled"),
        item("boxes-but-nothing", ("car", 1, 1, 5, 5), verdict="nothing_to_label"),
        item("odd-split", split="holdout"),
        item("odd-verdict", verdict="unusable"),
        item("other-schema", ("car", 1, 1, 5, 5), schema_version="2"),
        item("no-size", width=0),
        item("twice"), item("twice"),
        item("missing", blob="e" * 64),
        item("smaller", blob="f" * 64),
        Item(item_id="bad-blob", blob="not-a-hash", size=1, width=10, height=10, verdict="nothing_to_label",
             split="val", labels=(Label("", (1.0, 1.0, 4.0, 4.0)),)),
    ]
    sizes = {"e" * 64: None, "f" * 64: 99}
    problems = validation_problems(items, "1", Schemas(), blob_size=lambda sha: sizes.get(sha, 100))
    assert problems == [
        "item id 'twice' appears 2 times",
        "item outside: box 2 (600,10)-(700,90) is not inside the 640x480 image",
        "item unknown: box 1: class 'forklift' is not in schema 1",
        "item flat: box 1 is degenerate (50,10)-(50,90): x2 must exceed x1 and y2 y1",
        "item nan: box 1 has no valid coordinates ((nan, 1.0, 5.0, 5.0))",
        "item no-box: verdict 'labelled' needs at least one box",
        "item boxes-but-nothing: verdict 'nothing_to_label' takes no boxes, has 1",
        "item odd-split: split 'holdout' is not one of train, val, test",
        "item odd-verdict: verdict 'unusable' is not one of labelled, nothing_to_label",
        "item other-schema is labelled under schema 2, the version under 1: one schema version per version",
        "item no-size: width and height must be positive, not 0x480",
        "item bad-blob: verdict 'nothing_to_label' takes no boxes, has 1",
        "item bad-blob: blob 'not-a-hash' is not a sha256 (64 lowercase hex)",
        "item bad-blob: box 1 has no class",
        "item missing: blob eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee is not stored",
        "item smaller: blob ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff is 99 bytes, the item "
        "says 100",
    ]
    refused = CommitRefused(problems, shown=2)
    assert refused.problems == problems and str(refused).endswith(f"and {len(problems) - 2} more")


def test_items_under_two_schema_versions_are_refused_when_none_is_given():
    items = [item("a", ("car", 1, 1, 5, 5), schema_version="1"), item("b", ("car", 1, 1, 5, 5),
                                                                      schema_version="2")]
    assert validation_problems(items, "", Schemas()) == [
        "items are labelled under 2 schema versions (1, 2): one schema version per version",
        "no schema version: the classes cannot be checked against a schema"]
    # One shared version is the version's: checked against its classes.
    same = [item("a", ("forklift", 1, 1, 5, 5), schema_version="2")]
    assert validation_problems(same, "", Schemas()) == []
    assert validation_problems(same, "", {"car"}) == ["item a: box 1: class 'forklift' is not in schema 2"]


def test_an_unpublished_schema_version_is_a_problem():
    assert validation_problems([item("a")], "7", Schemas()) == ["schema version '7' is not published"]
    assert validation_problems([item("a")], "2", SCHEMA_1) == [
        "the schema given is version 1, the version's is 2"]
