"""Fitting the per-site re-scoring stage: which proposals of the base detector were true (matched to a label of
the item at IoU >= 0.5), a logistic regression (numpy, L2, Newton's method) on the proposals' features, and per
camera, per class thresholds on its probability calibrated on the validation split for the best F1.

The stage as served (features, probabilities, thresholds, rescoring.json) lives with the detectors
(services/inference/detectors/rescored.py), so inference never imports training; its names are re-exported
here."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from services.datasets.manifest import Item
from services.inference.detectors.base import Detection
from services.inference.detectors.rescored import (  # noqa: F401 (re-exported)
    FeatureSpec, Rescoring, Thresholds, proposal_features,
)
from services.training.evaluation import match_detections

__all__ = ["FeatureSpec", "Proposals", "Rescoring", "Thresholds", "calibrate", "fit", "fit_logistic",
           "labelled_proposals", "proposal_features"]


@dataclass(frozen=True)
class ItemProposals:
    """The base detector's proposals on one item's image, and the frame's embedding (None: the model gives
    none)."""
    item: Item
    detections: tuple[Detection, ...]
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class Proposals:
    """Proposals of many items as rows: features, whether each is true, its class and camera; and the items'
    ground-truth box counts per (camera, class), which recall is measured against."""
    features: np.ndarray
    truth: np.ndarray
    labels: tuple[str, ...]
    cameras: tuple[str, ...]
    ground_truth: Counter
    scores: np.ndarray | None = None  # the base detector's own score of each proposal


def labelled_proposals(proposals: Iterable[ItemProposals], spec: FeatureSpec) -> Proposals:
    rows, truth, labels, cameras, scores, ground_truth = [], [], [], [], [], Counter()
    for p in proposals:
        ground_truth.update((p.item.camera_id, label.label) for label in p.item.labels)
        if not p.detections:
            continue
        rows.append(proposal_features(p.detections, p.item.width, p.item.height, p.item.camera_id, p.embedding,
                                      spec))
        truth.append(match_detections(p.detections, p.item.labels))
        labels.extend(d.label for d in p.detections)
        scores.extend(d.score for d in p.detections)
        cameras.extend([p.item.camera_id] * len(p.detections))
    width = len(spec.names)
    return Proposals(np.concatenate(rows) if rows else np.zeros((0, width)),
                     np.concatenate(truth) if truth else np.zeros(0, bool), tuple(labels), tuple(cameras),
                     ground_truth, np.asarray(scores, np.float64))


def fit_logistic(features: np.ndarray, truth: np.ndarray, l2: float = 1.0, iterations: int = 50
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean, scale, weights, bias) of an L2-penalised logistic regression on standardised features, by Newton's
    method (deterministic; the penalty spares the bias). A constant feature gets scale 1 and weight 0."""
    x = np.asarray(features, np.float64)
    y = np.asarray(truth, np.float64)
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    scale = x.std(axis=0) if len(x) else np.ones(x.shape[1])
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 0.0
    theta = np.zeros(z.shape[1])
    if len(y) and 0 < y.mean() < 1:
        theta[-1] = np.log(y.mean() / (1 - y.mean()))
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ theta, -50, 50)))
        gradient = z.T @ (p - y) + penalty * theta
        hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return mean, scale, theta[:-1], float(theta[-1])


def best_f1_threshold(probabilities: np.ndarray, truth: np.ndarray, ground_truth: int, min_true: int = 0
                      ) -> tuple[float, float]:
    """(threshold, F1) maximising F1 = 2TP / (2TP + FP + FN) over "served iff p >= threshold", FN being the
    ground-truth boxes no served proposal matched, among the thresholds that serve at least `min_true` true
    proposals (the recall not to fall below; the lowest threshold when none does); the threshold lies halfway
    between the last proposal served and the next. With nothing true to find, the threshold serves nothing."""
    if ground_truth <= 0 or not truth.any():
        return 1.0 + 1e-9, 0.0
    order = np.argsort(-probabilities, kind="stable")
    p, t = probabilities[order], truth[order]
    tp, fp = np.cumsum(t), np.cumsum(~t)
    f1 = 2 * tp / (2 * tp + fp + (ground_truth - tp))
    # Only cut between distinct probabilities: a cut inside a run of equal ones is not a threshold.
    last_of_run = np.r_[p[1:] != p[:-1], True]
    allowed = last_of_run & (tp >= min(min_true, int(tp[-1])))
    best = int(np.argmax(np.where(allowed, f1, -1.0)))
    # Cut halfway to the next proposal down (the widest margin on either side), not at the last one served: the
    # same object seen again scores a hair lower as often as higher.
    below = float(p[best + 1]) if best + 1 < len(p) else 0.0
    return (float(p[best]) + below) / 2, float(f1[best])


def calibrate(probabilities: np.ndarray, proposals: Proposals, min_ground_truth: int = 5,
              keep_recall_above: float | None = None, recall_slack: float = 0.0) -> Thresholds:
    """Thresholds for the best F1: per class over all cameras, and per camera and class where that camera holds
    at least `min_ground_truth` boxes of the class (fewer give a threshold of noise); `default` (for classes the
    validation split never holds) is the best over every proposal together.

    `keep_recall_above` (the champion's served score threshold): no threshold may find fewer true boxes than the
    base detector served at that score does, times (1 + `recall_slack`). The best F1 alone trades recall for
    precision, and the gate refuses a class whose recall (or AP, which the lost recall caps) falls below the
    champion's."""
    labels, cameras = np.array(proposals.labels, dtype=object), np.array(proposals.cameras, dtype=object)
    champion_true = (proposals.truth & (proposals.scores >= keep_recall_above)
                     if keep_recall_above is not None and proposals.scores is not None
                     else np.zeros_like(proposals.truth))

    def best(mask: np.ndarray, ground_truth: int) -> float:
        return best_f1_threshold(probabilities[mask], proposals.truth[mask], ground_truth,
                                 int(np.ceil(champion_true[mask].sum() * (1 + recall_slack))))[0]

    per_class = Counter()
    for (camera, label), count in proposals.ground_truth.items():
        per_class[label] += count
    default = best(np.ones(len(labels), bool), sum(per_class.values()))
    classes = {label: best(labels == label, count) for label, count in sorted(per_class.items())}
    by_camera: dict[str, dict[str, float]] = defaultdict(dict)
    for (camera, label), count in sorted(proposals.ground_truth.items()):
        if count >= min_ground_truth:
            by_camera[camera][label] = best((labels == label) & (cameras == camera), count)
    return Thresholds(default, classes, dict(by_camera))


def fit(train: Sequence[ItemProposals], val: Sequence[ItemProposals], spec: FeatureSpec, proposal_threshold: float,
        l2: float = 1.0, min_ground_truth: int = 5, seed: int = 0, keep_recall_above: float | None = None,
        recall_slack: float = 0.0) -> Rescoring:
    """The re-scoring stage fitted on `train`, its thresholds calibrated on `val` (see calibrate for
    `keep_recall_above`). `seed` is recorded (the fit is deterministic: Newton's method from zero)."""
    train_rows = labelled_proposals(train, spec)
    mean, scale, weights, bias = fit_logistic(train_rows.features, train_rows.truth, l2)
    unthresholded = Rescoring(spec, mean, scale, weights, bias, Thresholds(0.0), proposal_threshold)
    val_rows = labelled_proposals(val, spec)
    thresholds = calibrate(unthresholded.probabilities(val_rows.features), val_rows, min_ground_truth,
                           keep_recall_above, recall_slack)
    return Rescoring(spec, mean, scale, weights, bias, thresholds, proposal_threshold, {
        "l2": l2, "seed": seed, "min_ground_truth": min_ground_truth, "keep_recall_above": keep_recall_above,
        "recall_slack": recall_slack,
        "fitted_on": {"proposals": int(len(train_rows.truth)), "true": int(train_rows.truth.sum())},
        "calibrated_on": {"proposals": int(len(val_rows.truth)), "true": int(val_rows.truth.sum()),
                          "ground_truth": int(sum(val_rows.ground_truth.values()))},
    })


def site_classes(items: Iterable[Item]) -> tuple[str, ...]:
    """The classes the site's labels hold, each given a slot of its own in the features."""
    return tuple(sorted({label.label for item in items for label in item.labels}))
