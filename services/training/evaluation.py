"""How good a detector's output is on a dataset version's test items: mAP@0.5 by COCO's own evaluation
(pycocotools COCOeval), AP and precision/recall per class at the threshold the model serves at, and the gate a
candidate must pass against the champion. Pure: items and detections in, a report out.

Detections are anything with `label`, `score` and `box` (x1, y1, x2, y2 in pixels of the item's image): the
inference `Detection`, or `Scored`. A model is evaluated on what it serves: its output, as given."""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from services.datasets.manifest import Item

IOU_MATCH = 0.5  # a detection is true when it overlaps an unmatched ground-truth box of its class this much


class Boxed(Protocol):
    label: str
    score: float
    box: tuple[float, float, float, float]


class Scored(NamedTuple):
    label: str
    score: float
    box: tuple[float, float, float, float]


def box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of every box [N, 4] with every other box [M, 4] (x1, y1, x2, y2) -> [N, M]."""
    boxes, others = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(others, np.float64).reshape(-1, 4)
    x1 = np.maximum(boxes[:, None, 0], others[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], others[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], others[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], others[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
    union = area(boxes)[:, None] + area(others)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_detections(detections: Sequence[Boxed], truth: Sequence[Boxed]) -> np.ndarray:
    """Per detection (in the order given), whether it is true: greedily, best score first, each one takes the
    unmatched ground-truth box of its class it overlaps most, if by IoU >= 0.5 (COCO's matching at 0.5), so a
    second box on one object is false."""
    matched = np.zeros(len(detections), bool)
    if not detections or not truth:
        return matched
    iou = box_iou(np.array([d.box for d in detections]), np.array([t.box for t in truth]))
    same_class = np.array([[d.label == t.label for t in truth] for d in detections])
    iou = np.where(same_class, iou, 0.0)
    taken = np.zeros(len(truth), bool)
    for i in np.argsort([-d.score for d in detections], kind="stable"):
        candidates = np.where(taken, -1.0, iou[i])
        best = int(np.argmax(candidates))
        if candidates[best] >= IOU_MATCH:
            taken[best] = matched[i] = True
    return matched


@dataclass(frozen=True)
class ClassReport:
    ground_truth: int
    detections: int
    true_positives: int
    ap50: float | None  # None: no ground-truth box of the class in the items (COCO leaves it out of the mean)
    precision: float
    recall: float


@dataclass(frozen=True)
class EvaluationReport:
    model: str
    images: int
    map50: float
    classes: dict[str, ClassReport] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, content: Mapping) -> "EvaluationReport":
        return cls(content["model"], int(content["images"]), float(content["map50"]),
                   {name: ClassReport(**c) for name, c in content.get("classes", {}).items()})


def coco_ground_truth(items: Sequence[Item], classes: Sequence[str]) -> dict:
    """The items as a COCO detection file (image ids 1.. in the order given, category id = class index + 1), the
    layout annotation's `to_coco` exports."""
    category_of = {name: i + 1 for i, name in enumerate(classes)}
    images, annotations = [], []
    for image_id, item in enumerate(items, start=1):
        images.append({"id": image_id, "file_name": item.blob, "width": item.width, "height": item.height,
                       "vigil_item_id": item.item_id, "camera_id": item.camera_id})
        for label in item.labels:
            x1, y1, x2, y2 = label.box
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category_of[label.label], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return {"info": {"description": "Vigil dataset items"}, "licenses": [], "images": images,
            "categories": [{"id": i, "name": name} for name, i in category_of.items()], "annotations": annotations}


def coco_detections(detections: Sequence[Sequence[Boxed]], classes: Sequence[str]) -> list[dict]:
    """The detections of each image (image ids 1.. as in `coco_ground_truth`) as COCO results."""
    category_of = {name: i + 1 for i, name in enumerate(classes)}
    return [{"image_id": image_id, "category_id": category_of[d.label],
             "bbox": [d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]], "score": float(d.score)}
            for image_id, found in enumerate(detections, start=1) for d in found]


def coco_ap50(ground_truth: dict, results: list[dict]) -> dict[int, float | None]:
    """COCOeval's AP at IoU 0.5 (all areas, up to 100 detections an image) per category id; None for a category
    without ground truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = ground_truth
        truth.createIndex()
        category_ids = [c["id"] for c in ground_truth["categories"]]
        with_truth = {a["category_id"] for a in ground_truth["annotations"]}
        if not results:  # loadRes refuses an empty list; nothing found is AP 0 wherever there was something
            return {c: (0.0 if c in with_truth else None) for c in category_ids}
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.params.imgIds = [image["id"] for image in ground_truth["images"]]
        evaluation.evaluate()
        evaluation.accumulate()
    # precision: [T iou thresholds, R recall points, K categories, A areas, M max dets]; T=0 is IoU 0.5, A=0 all
    # areas, M=2 100 detections. -1 marks a category with no ground truth.
    precision = evaluation.eval["precision"][0, :, :, 0, 2]
    ap = {}
    for k, category_id in enumerate(evaluation.params.catIds):
        column = precision[:, k]
        ap[category_id] = float(np.mean(column)) if category_id in with_truth and (column > -1).all() else (
            0.0 if category_id in with_truth else None)
    return ap


def evaluate(model: str, items: Sequence[Item], detections: Mapping[str, Sequence[Boxed]],
             classes: Sequence[str] | None = None) -> EvaluationReport:
    """`detections`: item id -> what the model served for that item's image (an item missing is one where it
    found nothing). mAP@0.5 is the mean AP over the classes with ground truth in the items (COCO's mean); a
    class the model reports that the items never hold counts in precision, not in the mAP."""
    found = [list(detections.get(item.item_id, ())) for item in items]
    names = list(classes or ())
    for label in sorted({l.label for item in items for l in item.labels} | {d.label for f in found for d in f}):
        if label not in names:
            names.append(label)
    ap = coco_ap50(coco_ground_truth(items, names), coco_detections(found, names))
    counts = {name: [0, 0, 0] for name in names}  # ground truth, detections, true
    for item, served in zip(items, found):
        for label in item.labels:
            counts[label.label][0] += 1
        for d, true in zip(served, match_detections(served, item.labels)):
            counts[d.label][1] += 1
            counts[d.label][2] += int(true)
    reports = {}
    for i, name in enumerate(names):
        gt, dets, tp = counts[name]
        if gt == 0 and dets == 0:
            continue
        reports[name] = ClassReport(gt, dets, tp, ap[i + 1], tp / dets if dets else 0.0, tp / gt if gt else 0.0)
    with_ap = [r.ap50 for r in reports.values() if r.ap50 is not None]
    return EvaluationReport(model, len(items), float(np.mean(with_ap)) if with_ap else 0.0, reports)


@dataclass(frozen=True)
class GateDecision:
    eligible: bool
    reasons: tuple[str, ...]  # why not (empty when eligible), or, when eligible, what it won by

    def to_json(self) -> dict:
        return {"eligible": self.eligible, "reasons": list(self.reasons)}


def gate(candidate: EvaluationReport, champion: EvaluationReport, margin: float, tolerance: float) -> GateDecision:
    """Eligible iff the candidate's mAP@0.5 beats the champion's by at least `margin` and no class with ground
    truth loses more than `tolerance` of AP or of recall (absolute, 0..1)."""
    refusals = []
    if candidate.map50 < champion.map50 + margin:
        refusals.append(f"mAP@0.5 {candidate.map50:.4f} does not beat the champion's {champion.map50:.4f} "
                        f"by the margin {margin:.4f}")
    for name, theirs in sorted(champion.classes.items()):
        if theirs.ap50 is None:
            continue
        ours = candidate.classes.get(name, ClassReport(theirs.ground_truth, 0, 0, 0.0, 0.0, 0.0))
        if (ours.ap50 or 0.0) < theirs.ap50 - tolerance:
            refusals.append(f"class {name}: AP@0.5 {ours.ap50 or 0.0:.4f} regresses from {theirs.ap50:.4f} "
                            f"beyond the tolerance {tolerance:.4f}")
        if ours.recall < theirs.recall - tolerance:
            refusals.append(f"class {name}: recall {ours.recall:.4f} regresses from {theirs.recall:.4f} "
                            f"beyond the tolerance {tolerance:.4f}")
    if refusals:
        return GateDecision(False, tuple(refusals))
    return GateDecision(True, (f"mAP@0.5 {candidate.map50:.4f} against the champion's {champion.map50:.4f} "
                               f"(margin {margin:.4f}, tolerance {tolerance:.4f})",))


def gate_report(candidate: EvaluationReport, champion: EvaluationReport, decision: GateDecision,
                margin: float, tolerance: float, **context) -> bytes:
    """The JSON stored with the version: both reports, the gate's settings and its decision, and `context`
    (dataset, version, split...)."""
    return json.dumps({**context, "margin": margin, "tolerance": tolerance, "decision": decision.to_json(),
                       "candidate": candidate.to_json(), "champion": champion.to_json()}, indent=2,
                      sort_keys=True).encode()


def detections_above(detections: Iterable[Boxed], threshold: float) -> list[Boxed]:
    return [d for d in detections if d.score >= threshold]
