"""Agreement between two sets of boxes on one frame (two people's labels of a task; a candidate model's detections
and its champion's): IoU-matched F1 (a match counts only between boxes of the same class) and agreement on classes
(over the boxes that overlap, whatever their classes). Pure: no Kafka, no S3.

Matching is one-to-one and optimal (scipy's Hungarian solver): it first maximises the number of pairs whose IoU
reaches the threshold, then (class ignored) the number of them with the same class, then their total IoU, so a
greedy pick of one high-IoU pair never costs two matches, nor a class disagreement that another pairing avoids."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from protos import events_pb2

# The IoU two boxes need to be the same object, as in PASCAL VOC and COCO's AP50.
DEFAULT_IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class Match:
    """Box `a` of the first label and box `b` of the second are the same object."""
    a: int
    b: int
    iou: float
    same_class: bool


@dataclass(frozen=True)
class Agreement:
    """`f1`: 2 x (pairs matched by IoU with the same class) / (boxes in a + boxes in b); 1.0 when both are empty.
    `class_agreement`: the share of IoU-matched pairs (class ignored) whose classes are the same; 1.0 when no
    pair overlaps (nothing to disagree on: `f1` tells whether the boxes agree).
    `matched`: the IoU-matched pairs, class ignored; `unmatched_a`, `unmatched_b`: boxes of each side left out."""
    f1: float
    class_agreement: float
    matched: tuple[Match, ...]
    same_class_matches: int
    unmatched_a: int
    unmatched_b: int
    boxes_a: int
    boxes_b: int

    def agrees(self, min_f1: float = 0.8, min_class_agreement: float = 1.0) -> bool:
        """Two labels agree when their boxes match (F1 at least `min_f1`) and so do the classes of the boxes
        that overlap (the queue's rule for a task labelled twice: F1 >= 0.8 and classes agree)."""
        return self.f1 >= min_f1 and self.class_agreement >= min_class_agreement


def box_iou(a: events_pb2.Box, b: events_pb2.Box) -> float:
    """Intersection over union of two boxes in pixels; 0 when either has no area."""
    width = min(a.x2, b.x2) - max(a.x1, b.x1)
    height = min(a.y2, b.y2) - max(a.y1, b.y1)
    if width <= 0 or height <= 0:
        return 0.0
    intersection = width * height
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - intersection
    return float(intersection / union) if union > 0 else 0.0


def iou_matrix(a: Sequence[events_pb2.Detection], b: Sequence[events_pb2.Detection]) -> np.ndarray:
    return np.array([[box_iou(da.box, db.box) for db in b] for da in a], dtype=np.float64).reshape(len(a), len(b))


def match_boxes(ious: np.ndarray, allowed: np.ndarray, preferred: np.ndarray | None = None) -> list[tuple[int, int]]:
    """The one-to-one pairing of rows and columns among the `allowed` cells with the most pairs; among those, the
    most `preferred` pairs; among those, the highest total IoU."""
    if ious.size == 0 or not allowed.any():
        return []
    # Weights in base B (more than any pairing's count of pairs or total IoU): a pair is worth B^2, a preferred
    # one B more, so the count of pairs comes first, the preferred ones second and the IoU last.
    base = min(ious.shape) + 1.0
    bonus = 0.0 if preferred is None else np.where(preferred, base, 0.0)
    weights = np.where(allowed, base * base + bonus + ious, 0.0)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if allowed[r, c]]


def box_agreement(a: Sequence[events_pb2.Detection], b: Sequence[events_pb2.Detection],
                  iou_threshold: float = DEFAULT_IOU_THRESHOLD) -> Agreement:
    """How far two labels of one frame agree (see Agreement). Both empty is full agreement."""
    ious = iou_matrix(a, b)
    overlapping = ious >= iou_threshold
    same = np.array([[da.label == db.label for db in b] for da in a], dtype=bool).reshape(ious.shape)
    same_class_matches = len(match_boxes(ious, overlapping & same))
    pairs = match_boxes(ious, overlapping, preferred=same)
    matched = tuple(Match(r, c, float(ious[r, c]), bool(same[r, c])) for r, c in pairs)
    total = len(a) + len(b)
    return Agreement(
        f1=1.0 if total == 0 else 2.0 * same_class_matches / total,
        class_agreement=1.0 if not matched else sum(m.same_class for m in matched) / len(matched),
        matched=matched, same_class_matches=same_class_matches,
        unmatched_a=len(a) - len(matched), unmatched_b=len(b) - len(matched),
        boxes_a=len(a), boxes_b=len(b),
    )
