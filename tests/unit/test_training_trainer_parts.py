"""The trainer's parts that need no store nor network: the proposal cache, what the champion serves, the candidate
dir, the F1 threshold."""
from __future__ import annotations

import json

import numpy as np
import pytest

from services.datasets.manifest import Item, Label
from services.inference.detectors.base import Detection
from services.inference.detectors.rescored import FeatureSpec, Rescoring, Thresholds
from services.training.rescoring import ItemProposals, best_f1_threshold
from services.training.trainer import ProposalCache, champion_detections, code_version, write_model_dir

PERSON = Detection("person", 0, 0.6, (10.0, 20.0, 50.0, 120.0))
FAINT = Detection("person", 0, 0.1, (200.0, 20.0, 240.0, 120.0))


def base_dir(tmp_path, **extra):
    d = tmp_path / "base"
    d.mkdir()
    for name in ("model.xml", "model.bin", "labels.txt"):
        (d / name).write_text(name)
    (d / "model.json").write_text(json.dumps({"name": "yolov3-tiny", "version": "1", **extra}))
    return d


def stage(threshold: float) -> Rescoring:
    spec = FeatureSpec(("person",), camera_buckets=1)
    weights = np.zeros(len(spec.names))
    weights[spec.names.index("logit_score")] = 1.0
    return Rescoring(spec, np.zeros(len(spec.names)), np.ones(len(spec.names)), weights, 0.0,
                     Thresholds(threshold), 0.05)


def test_the_proposal_cache_gives_back_what_was_put(tmp_path):
    cache = ProposalCache(tmp_path, "model-a")
    assert cache.get("b" * 64) is None
    cache.put("b" * 64, [PERSON, FAINT], np.arange(4, dtype=np.float32))
    detections, embedding = ProposalCache(tmp_path, "model-a").get("b" * 64)
    assert detections == (PERSON, FAINT) and embedding.tolist() == [0, 1, 2, 3]
    assert ProposalCache(tmp_path, "model-b").get("b" * 64) is None


def test_the_champion_serves_at_its_threshold_or_through_its_own_stage(tmp_path):
    item = Item("i", "b" * 64, 1, 640, 480, camera_id="cam")
    proposals = {"i": ItemProposals(item, (PERSON, FAINT))}
    plain = base_dir(tmp_path)
    assert champion_detections(plain, proposals, 0.25) == {"i": [PERSON]}
    (plain / "rescoring.json").write_text(json.dumps(stage(0.05).to_json()))
    (plain / "model.json").write_text(json.dumps({"name": "m", "version": "1", "rescoring": "rescoring.json"}))
    assert [d.box for d in champion_detections(plain, proposals, 0.25)["i"]] == [PERSON.box, FAINT.box]


def test_the_candidate_dir_holds_the_base_files_and_a_new_stage_and_refuses_a_used_dir(tmp_path):
    base = base_dir(tmp_path, rescoring="rescoring.json")
    (base / "rescoring.json").write_text("the champion's stage")
    out = write_model_dir(base, tmp_path / "out", stage(0.3), {"name": "m", "rescoring": "rescoring.json"}, b"{}")
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "labels.txt", "model.bin", "model.json",
                                                     "model.xml", "rescoring.json"]
    assert Rescoring.read(out / "rescoring.json").thresholds.default == 0.3
    with pytest.raises(FileExistsError):
        write_model_dir(base, out, stage(0.3), {}, b"{}")


def test_the_f1_threshold_cuts_halfway_below_the_last_proposal_served():
    p = np.array([0.9, 0.8, 0.3, 0.2])
    truth = np.array([True, True, False, False])
    threshold, f1 = best_f1_threshold(p, truth, ground_truth=2)
    assert threshold == pytest.approx(0.55) and f1 == 1.0
    assert best_f1_threshold(p, np.zeros(4, bool), ground_truth=0)[0] > 1.0


def test_the_code_version_is_the_git_commit():
    assert len(code_version().removesuffix("-dirty")) == 40
