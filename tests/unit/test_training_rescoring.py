"""Re-scoring: a feature the raw score misses (here the box's shape) is learnt from the train split, thresholds
come from the validation split, and the stage round-trips through rescoring.json."""
from __future__ import annotations

import json

import numpy as np

from services.datasets.manifest import Item, Label
from services.inference.detectors.base import Detection
from services.training.rescoring import FeatureSpec, ItemProposals, Rescoring, fit, labelled_proposals

W, H = 640, 480


def synthetic(n_items: int, seed: int, camera: str = "cam-1") -> list[ItemProposals]:
    """Per item: two people (tall boxes) proposed with a random score, and two wide false alarms proposed with
    a random score as well: the raw score says nothing, the aspect ratio everything."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_items):
        labels, detections = [], []
        for k in range(2):
            x, y = 50 + 150 * k + rng.uniform(0, 20), 40 + rng.uniform(0, 20)
            box = (x, y, x + 40, y + 110)
            labels.append(Label("person", box))
            detections.append(Detection("person", 0, float(rng.uniform(0.05, 0.9)), box))
            fx, fy = 350 + 120 * k, 300 + rng.uniform(0, 50)
            detections.append(Detection("person", 0, float(rng.uniform(0.05, 0.9)), (fx, fy, fx + 110, fy + 40)))
        item = Item(f"{camera}-{seed}-{i}", "0" * 64, 1, W, H, camera_id=camera, labels=tuple(labels))
        out.append(ItemProposals(item, tuple(detections)))
    return out


def precision_at_recall(scores: np.ndarray, truth: np.ndarray, recall: float) -> float:
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(truth[order])
    k = int(np.searchsorted(tp, recall * truth.sum()))
    return float(tp[k] / (k + 1))


def test_rescored_precision_at_equal_recall_beats_the_raw_score():
    spec = FeatureSpec(("person",), camera_buckets=4)
    model = fit(synthetic(60, seed=1), synthetic(30, seed=2), spec, proposal_threshold=0.05, l2=1.0)
    test = labelled_proposals(synthetic(40, seed=3), spec)
    rescored = model.probabilities(test.features)
    raw = test.features[:, 0]
    for recall in (0.5, 0.8, 0.95):
        assert precision_at_recall(rescored, test.truth, recall) > precision_at_recall(raw, test.truth, recall) + 0.3
    assert precision_at_recall(rescored, test.truth, 0.95) > 0.95


def test_served_detections_are_the_true_ones_above_the_calibrated_threshold():
    spec = FeatureSpec(("person",), camera_buckets=4)
    model = fit(synthetic(60, seed=1), synthetic(30, seed=2), spec, proposal_threshold=0.05)
    sample = synthetic(1, seed=9)[0]
    served = model.apply(sample.detections, W, H, "cam-1")
    assert sorted(d.box for d in served) == sorted(label.box for label in sample.item.labels)
    assert all(d.score >= model.thresholds.of("cam-1", "person") for d in served)
    assert "cam-1" in model.thresholds.cameras  # 60 people on its val items: enough for a threshold of its own


def test_a_class_the_site_never_labels_is_dropped():
    spec = FeatureSpec(("person",), camera_buckets=4)
    proposals = synthetic(60, seed=1)
    noisy = [ItemProposals(p.item, p.detections + (Detection("kite", 33, 0.9, (5.0, 5.0, 50.0, 50.0)),))
             for p in proposals]
    model = fit(noisy, synthetic(30, seed=2), spec, proposal_threshold=0.05)
    kite = Detection("kite", 33, 0.95, (5.0, 5.0, 50.0, 50.0))
    assert model.apply([kite], W, H, "cam-1") == []


def test_rescoring_round_trips_through_its_json():
    spec = FeatureSpec(("person", "car"), camera_buckets=4, embedding_dims=0)
    model = fit(synthetic(20, seed=1), synthetic(10, seed=2), spec, proposal_threshold=0.05, seed=7)
    again = Rescoring.from_json(json.loads(json.dumps(model.to_json())))
    sample = synthetic(1, seed=5)[0]
    assert again.apply(sample.detections, W, H, "cam-1") == model.apply(sample.detections, W, H, "cam-1")
    assert again.extra["seed"] == 7 and again.thresholds == model.thresholds


def test_a_camera_without_thresholds_of_its_own_gets_the_class_threshold():
    spec = FeatureSpec(("person",), camera_buckets=4)
    model = fit(synthetic(60, seed=1), synthetic(30, seed=2), spec, proposal_threshold=0.05)
    assert model.thresholds.of("unknown-camera", "person") == model.thresholds.classes["person"]
    assert model.thresholds.of("", "bicycle") == model.thresholds.default


def test_a_threshold_never_finds_fewer_true_boxes_than_the_champion_serves():
    from services.training.rescoring import best_f1_threshold
    # Ten boxes to find: the best F1 serves only the 4 proposals on top (the next 4 true ones sit among 20 false
    # alarms); the champion served 8 true ones: the threshold must serve at least 8.
    probabilities = np.array([0.99, 0.98, 0.97, 0.96] + [0.5] * 24)
    truth = np.array([True] * 4 + [True, False, False, False, False, False] * 4)
    f1_only, _ = best_f1_threshold(probabilities, truth, ground_truth=10)
    floored, _ = best_f1_threshold(probabilities, truth, ground_truth=10, min_true=8)
    assert (probabilities[truth] >= f1_only).sum() == 4
    assert (probabilities[truth] >= floored).sum() >= 8
