"""Agreement between two labels of one frame, on cases computed by hand (boxes 10 px tall, so an IoU is a ratio of
widths)."""
from __future__ import annotations

import pytest

from protos import events_pb2
from libs.common.box_agreement import box_agreement, box_iou


def det(label: str, x1: float, x2: float, y1: float = 0, y2: float = 10) -> events_pb2.Detection:
    return events_pb2.Detection(label=label, box=events_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))


def test_iou_of_boxes_overlapping_disjoint_and_degenerate():
    assert box_iou(det("a", 0, 10).box, det("a", 0, 10).box) == 1.0
    assert box_iou(det("a", 0, 10).box, det("a", 2, 12).box) == pytest.approx(80 / 120)
    assert box_iou(det("a", 0, 10).box, det("a", 10, 20).box) == 0.0  # touching edges share no area
    assert box_iou(det("a", 5, 5).box, det("a", 0, 10).box) == 0.0    # no width


def test_two_empty_labels_agree_fully():
    agreement = box_agreement([], [])
    assert (agreement.f1, agreement.class_agreement, agreement.matched) == (1.0, 1.0, ())
    assert agreement.agrees()


def test_boxes_against_nothing_is_no_agreement():
    agreement = box_agreement([], [det("person", 0, 10), det("car", 20, 30)])
    assert (agreement.f1, agreement.unmatched_a, agreement.unmatched_b) == (0.0, 0, 2)
    assert not agreement.agrees()


def test_same_boxes_same_classes_agree():
    boxes = [det("person", 0, 10), det("car", 20, 30)]
    agreement = box_agreement(boxes, list(reversed(boxes)))
    assert (agreement.f1, agreement.class_agreement, agreement.same_class_matches) == (1.0, 1.0, 2)
    assert {(m.a, m.b) for m in agreement.matched} == {(0, 1), (1, 0)}


def test_a_shifted_box_matches_and_a_changed_class_counts_against_f1_and_classes():
    # person: IoU 8/12 = 0.667, same class; car vs truck: IoU 1, classes differ.
    a = [det("person", 0, 10), det("car", 20, 30)]
    b = [det("person", 2, 12), det("truck", 20, 30)]
    agreement = box_agreement(a, b)
    assert agreement.f1 == pytest.approx(2 * 1 / 4)
    assert agreement.class_agreement == pytest.approx(0.5)
    assert len(agreement.matched) == 2 and (agreement.unmatched_a, agreement.unmatched_b) == (0, 0)
    assert sorted((m.a, m.b, round(m.iou, 3), m.same_class) for m in agreement.matched) == [
        (0, 0, 0.667, True), (1, 1, 1.0, False)]
    assert not agreement.agrees()


def test_iou_below_the_threshold_is_no_match():
    # IoU 5/15 = 0.333
    a, b = [det("person", 0, 10)], [det("person", 5, 15)]
    assert box_agreement(a, b).f1 == 0.0
    assert box_agreement(a, b).unmatched_a == 1
    assert box_agreement(a, b, iou_threshold=0.3).f1 == 1.0


def test_matching_is_optimal_where_greedy_would_lose_a_pair():
    # a1-b1 IoU 9/11 = 0.818 is the best pair, but taking it leaves a2-b2 at 3/17; the optimal pairing is
    # a1-b2 (7/13) and a2-b1 (7/13): two matches.
    a = [det("person", 0, 10), det("person", 4, 14)]
    b = [det("person", 1, 11), det("person", -3, 7)]
    agreement = box_agreement(a, b)
    assert agreement.f1 == 1.0
    assert sorted((m.a, m.b) for m in agreement.matched) == [(0, 1), (1, 0)]


def test_one_extra_box_lowers_f1_not_class_agreement():
    a = [det("person", 0, 10), det("car", 20, 30)]
    b = [det("person", 0, 10), det("car", 20, 30), det("dog", 40, 50)]
    agreement = box_agreement(a, b)
    assert agreement.f1 == pytest.approx(2 * 2 / 5)
    assert (agreement.class_agreement, agreement.unmatched_b) == (1.0, 1)
    assert agreement.agrees(min_f1=0.8) and not agreement.agrees(min_f1=0.9)


def test_class_agreement_takes_the_same_class_partner_when_one_overlaps():
    # One person box in a; b drew a car box exactly on it and a person box 9/11 over it: the person pairs.
    a = [det("person", 0, 10)]
    b = [det("car", 0, 10), det("person", 1, 11)]
    agreement = box_agreement(a, b)
    assert agreement.f1 == pytest.approx(2 / 3)
    assert agreement.class_agreement == 1.0
    assert [(m.a, m.b) for m in agreement.matched] == [(0, 1)]
