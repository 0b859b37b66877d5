"""Label schemas: the rules enforced on a submission (each violation named, with its box), the default schema from
the labels the default model serves, and the stored form."""
from __future__ import annotations

import json

import pytest

from protos import events_pb2
from services.annotation.schemas import (
    DEFAULT_RULES_SHOWN, InvalidSchema, LabelSchema, default_schema, model_dir_labels)

SCHEMA = LabelSchema(version="3", classes=("person", "car", "forklift"), site_classes=("forklift",), min_box_px=4)


def det(label: str, x1: float, y1: float, x2: float, y2: float) -> events_pb2.Detection:
    return events_pb2.Detection(label=label, box=events_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))


def test_a_good_labelled_submission_has_no_violation():
    boxes = [det("person", 10, 10, 50, 90), det("forklift", 0, 0, 640, 480)]
    assert SCHEMA.violations("labelled", boxes, 640, 480) == []
    assert SCHEMA.violations("nothing_to_label", [], 640, 480) == []
    assert SCHEMA.violations("unusable", [], 640, 480) == []


def test_half_a_pixel_past_the_edge_is_rounding_not_a_violation():
    assert SCHEMA.violations("labelled", [det("car", -0.4, 0, 640.5, 480.2)], 640, 480) == []


def test_every_violation_is_named_with_its_box():
    boxes = [
        det("person", 10, 10, 50, 90),      # 1: fine
        det("dog", 10, 10, 50, 90),         # 2: unknown class
        det("car", 600, 10, 700, 90),       # 3: outside the 640 px width
        det("car", 10, 10, 12, 90),         # 4: 2 px wide
        det("car", 50, 10, 50, 90),         # 5: degenerate (no width)
        det("", -20, 10, 3, 90),            # 6: no class, outside, 23x80 fine in size
    ]
    assert SCHEMA.violations("labelled", boxes, 640, 480) == [
        "box 2: class 'dog' is not in schema 3",
        "box 3: (600,10)-(700,90) is not inside the 640x480 image",
        "box 4: 2x80 px is smaller than the minimum 4 px a side",
        "box 5: is degenerate (50,10)-(50,90): x2 must exceed x1 and y2 exceed y1",
        "box 6: has no class",
        "box 6: (-20,10)-(3,90) is not inside the 640x480 image",
    ]


def test_a_box_without_coordinates_or_with_nan_is_named():
    no_box = events_pb2.Detection(label="car")
    assert SCHEMA.violations("labelled", [no_box, det("car", float("nan"), 0, 10, 10)], 640, 480) == [
        "box 1: has no valid coordinates", "box 2: has no valid coordinates"]


def test_verdicts_and_their_boxes():
    assert SCHEMA.violations("labelled", [], 640, 480) == [
        "verdict 'labelled' needs at least one box (or mark 'nothing_to_label')"]
    assert SCHEMA.violations("nothing_to_label", [det("car", 0, 0, 10, 10)], 640, 480) == [
        "verdict 'nothing_to_label' takes no boxes, got 1"]
    assert SCHEMA.violations("maybe", [], 640, 480) == [
        "verdict 'maybe' is not one of labelled, nothing_to_label, unusable"]


def test_a_broken_box_under_a_wrong_verdict_gets_both_named():
    assert SCHEMA.violations("unusable", [det("cat", 0, 0, 10, 10)], 640, 480) == [
        "verdict 'unusable' takes no boxes, got 1", "box 1: class 'cat' is not in schema 3"]


def test_the_default_schema_is_the_default_models_labels_in_class_id_order(tmp_path):
    # A model dir as the converter writes it: model.json naming labels.txt.
    (tmp_path / "model.json").write_text(json.dumps({"name": "yolov3-tiny", "labels": "labels.txt"}))
    (tmp_path / "labels.txt").write_text("person\nbicycle\ncar\n")
    labels = model_dir_labels(tmp_path)
    schema = default_schema(labels, site_classes=["forklift", "car"], source_model="yolov3-tiny@1")
    assert schema.version == "1"
    assert schema.classes == ("person", "bicycle", "car", "forklift")
    assert [schema.class_id(c) for c in ("person", "car", "forklift")] == [0, 2, 3]
    assert schema.rules_shown == DEFAULT_RULES_SHOWN and schema.min_box_px > 0


def test_the_stored_form_reads_back_the_same():
    stored = json.loads(json.dumps(SCHEMA.to_json()))
    assert "_index" not in stored
    assert LabelSchema.from_json(stored) == SCHEMA
    assert LabelSchema.from_json(stored).class_id("forklift") == 2


@pytest.mark.parametrize("fields, problem", [
    ({"version": "", "classes": ("a",)}, "schema version"),
    ({"version": "../x", "classes": ("a",)}, "schema version"),
    ({"version": "current", "classes": ("a",)}, "schema version"),
    ({"version": "1", "classes": ()}, "at least one class"),
    ({"version": "1", "classes": ("a", "b", "a")}, "listed twice: a"),
    ({"version": "1", "classes": ("a",), "site_classes": ("b",)}, "site classes"),
    ({"version": "1", "classes": ("a",), "min_box_px": -1}, "min_box_px"),
])
def test_an_unusable_schema_is_refused(fields, problem):
    with pytest.raises(InvalidSchema, match=problem):
        LabelSchema(**fields)
