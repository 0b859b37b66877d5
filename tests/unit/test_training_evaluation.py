"""Evaluation: mAP@0.5 as COCO's own evaluation computes it, precision/recall at the served output, the gate."""
from __future__ import annotations

import contextlib
import io

import pytest

from services.datasets.manifest import Item, Label
from services.training.evaluation import (
    EvaluationReport, Scored, coco_detections, coco_ground_truth, evaluate, gate, match_detections,
)


def item(item_id: str, *labels: Label) -> Item:
    return Item(item_id=item_id, blob="0" * 64, size=1, width=640, height=480, camera_id="cam", labels=labels)


PERSON_A = Label("person", (10.0, 10.0, 60.0, 160.0))
PERSON_B = Label("person", (300.0, 50.0, 360.0, 200.0))
CAR = Label("car", (100.0, 300.0, 300.0, 420.0))
ITEMS = [item("a", PERSON_A, CAR), item("b", PERSON_B)]


def pycocotools_ap50(items, detections, classes) -> float:
    """stats[1] of COCOeval.summarize(): AP at IoU 0.5, all areas, 100 detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = coco_ground_truth(items, classes)
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(coco_detections(detections, classes)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[1])


def test_a_perfect_detector_scores_map_one_and_full_precision_and_recall():
    detections = {i.item_id: [Scored(l.label, 0.9, l.box) for l in i.labels] for i in ITEMS}
    report = evaluate("perfect", ITEMS, detections)
    assert report.map50 == pytest.approx(1.0)
    assert report.classes["person"].precision == report.classes["person"].recall == 1.0
    assert report.classes["car"].ap50 == pytest.approx(1.0)


def test_a_detector_finding_half_the_people_has_the_ap_cocoeval_gives():
    items = [item("a", PERSON_A), item("b", PERSON_B)]
    detections = {"a": [Scored("person", 0.8, PERSON_A.box)]}
    report = evaluate("half", items, detections)
    # 101 recall points, precision 1 up to recall 0.5 (51 points), then nothing: 51/101.
    assert report.map50 == pytest.approx(51 / 101)
    assert report.map50 == pytest.approx(pycocotools_ap50(items, [detections["a"], []], ["person"]))
    person = report.classes["person"]
    assert (person.precision, person.recall, person.true_positives) == (1.0, 0.5, 1)


def test_a_false_alarm_ranked_first_and_a_class_missed_match_cocoeval():
    detections = {"a": [Scored("person", 0.9, (400.0, 400.0, 450.0, 470.0)), Scored("person", 0.7, PERSON_A.box)],
                  "b": [Scored("person", 0.6, (302.0, 52.0, 362.0, 203.0))]}
    report = evaluate("mixed", ITEMS, detections, classes=["person", "car"])
    expected = pycocotools_ap50(ITEMS, [detections["a"], detections["b"]], ["person", "car"])
    assert report.map50 == pytest.approx(expected)
    assert report.classes["car"].ap50 == 0.0 and report.classes["car"].recall == 0.0
    assert report.classes["person"].precision == pytest.approx(2 / 3)
    assert report.map50 == pytest.approx((report.classes["person"].ap50 + 0.0) / 2)


def test_nothing_found_is_map_zero():
    assert evaluate("blind", ITEMS, {}).map50 == 0.0


def test_a_second_box_on_one_object_is_false():
    detections = [Scored("person", 0.9, PERSON_A.box), Scored("person", 0.8, (12.0, 11.0, 61.0, 158.0)),
                  Scored("car", 0.7, PERSON_A.box)]
    assert match_detections(detections, [PERSON_A]).tolist() == [True, False, False]


def report(map50: float, **classes: tuple[float, float]) -> EvaluationReport:
    from services.training.evaluation import ClassReport
    return EvaluationReport("m", 10, map50, {n: ClassReport(10, 10, 5, ap, 0.5, recall)
                                            for n, (ap, recall) in classes.items()})


def test_gate_passes_a_candidate_that_beats_the_margin_without_regressing():
    decision = gate(report(0.60, person=(0.7, 0.8), car=(0.5, 0.6)), report(0.55, person=(0.6, 0.7), car=(0.5, 0.6)),
                    margin=0.02, tolerance=0.02)
    assert decision.eligible and decision.reasons


def test_gate_refuses_a_candidate_within_the_margin_or_regressing_a_class():
    champion = report(0.55, person=(0.6, 0.7), car=(0.5, 0.6))
    small = gate(report(0.56, person=(0.62, 0.7), car=(0.5, 0.6)), champion, margin=0.02, tolerance=0.02)
    assert not small.eligible and "margin" in small.reasons[0]
    regressed = gate(report(0.70, person=(0.9, 0.9), car=(0.45, 0.5)), champion, margin=0.02, tolerance=0.02)
    assert not regressed.eligible
    assert any("class car: AP@0.5" in r for r in regressed.reasons)
    assert any("class car: recall" in r for r in regressed.reasons)


def test_report_round_trips_through_json():
    original = evaluate("m", ITEMS, {"a": [Scored("person", 0.8, PERSON_A.box)]})
    assert EvaluationReport.from_json(original.to_json()) == original
