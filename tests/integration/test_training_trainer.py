"""Training on a real dataset version (tests/integration/site_footage.py: the demo footage on two cameras, one
dimmed, labelled by a stronger reference), committed into a DatasetStore on a real SeaweedFS S3. The
trainer runs the served detector over the items' images, fits the re-scoring stage, evaluates candidate and
champion on the test split and writes a model dir the inference loader serves and the registry imports with its
lineage. The figures are printed (-s); the test asserts the machinery, not an improvement."""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from libs.model_registry.store import ModelRegistry
from services.inference.detectors import detector_loader
from services.inference.detectors.rescored import RescoredDetector
from services.training.evaluation import EvaluationReport
from services.training.trainer import REPORT_FILE, ProposalCache, TrainingParams, model_identity, train_candidate
from tests.integration.site_footage import DATASET, commit_shuffled_labels
from tests.integration.site_footage import base_dir, s3, store, version  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def proposal_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("proposals")


def test_a_candidate_is_trained_evaluated_against_the_champion_and_written_with_lineage(
        store, version, base_dir, tmp_path, s3, proposal_cache):
    started = time.monotonic()
    result = train_candidate(store, DATASET, version, base_dir, tmp_path / "candidate", seed=0,
                             params=TrainingParams(), cache_dir=proposal_cache, name="yolov3-tiny-site")
    first_s = time.monotonic() - started
    manifest = store.version(DATASET, version)
    splits = {s: sum(1 for i in manifest.items if i.split == s) for s in ("train", "val", "test")}
    print(f"\nitems per split {splits}; boxes {manifest.statistics['boxes_per_class']}")
    print(f"trained in {first_s:.1f} s ({ {k: round(v, 1) for k, v in result.timings_s.items()} })")
    for report in (result.champion, result.candidate):
        print(f"{report.model}: mAP@0.5 {report.map50:.4f} on {report.images} test images; " + ", ".join(
            f"{n} AP {c.ap50 if c.ap50 is None else round(c.ap50, 3)} P {c.precision:.3f} R {c.recall:.3f} "
            f"(gt {c.ground_truth}, det {c.detections})" for n, c in sorted(report.classes.items())
            if c.ground_truth >= 5))
    for camera, figures in result.cameras.items():
        print(f"camera {camera}: {figures}")
    print(f"gate: eligible={result.decision.eligible}: {'; '.join(result.decision.reasons)}")

    assert all(splits.values())
    assert result.champion.images == result.candidate.images == splits["test"]
    assert 0.0 < result.champion.map50 <= 1.0 and 0.0 <= result.candidate.map50 <= 1.0

    # The dir: the base network unchanged, the stage, the report, model.json with the lineage.
    model_dir = result.model_dir
    assert (model_dir / "model.bin").read_bytes() == (base_dir / "model.bin").read_bytes()
    metadata = json.loads((model_dir / "model.json").read_text())
    assert metadata["rescoring"] == "rescoring.json" and metadata["name"] == "yolov3-tiny-site"
    lineage = metadata["lineage"]
    assert (lineage["dataset"], lineage["dataset_version"], lineage["seed"]) == (DATASET, version, 0)
    assert len(lineage["code_version"].removesuffix("-dirty")) == 40
    assert lineage["params"]["proposal_threshold"] == 0.05
    assert lineage["metrics"]["candidate_map50"] == result.candidate.map50
    stored = json.loads((model_dir / REPORT_FILE).read_text())
    assert EvaluationReport.from_json(stored["champion"]) == result.champion
    assert stored["decision"]["eligible"] == result.decision.eligible
    assert set(stored["cameras"]) == {"street", "street-dim"}

    # Served as evaluated: the inference loader's model gives a test item what the evaluation counted.
    served = detector_loader("CPU", "f32", 0.25)(model_dir)
    assert isinstance(served, RescoredDetector)
    test_item = next(i for i in manifest.items if i.split == "test" and i.camera_id == "street" and i.labels)
    image = cv2.imdecode(np.frombuffer(store.get_blob(test_item.blob), np.uint8), cv2.IMREAD_COLOR)
    detections = served.detect(image, camera_id=test_item.camera_id)
    assert detections and {d.label for d in detections} <= set(served.rescoring.spec.classes)
    params = TrainingParams()
    cached = ProposalCache(proposal_cache, model_identity(base_dir, params.proposal_threshold,
                                                          params.precision_hint)).get(test_item.blob)
    evaluated = served.rescoring.apply(cached[0], test_item.width, test_item.height, test_item.camera_id, cached[1])
    assert [d.label for d in detections] == [d.label for d in evaluated]
    np.testing.assert_allclose([d.score for d in detections], [d.score for d in evaluated], atol=1e-4)
    np.testing.assert_allclose([d.box for d in detections], [d.box for d in evaluated], atol=1e-2)

    # The registry takes it with its lineage.
    registry = ModelRegistry(s3, "vigil-models")
    imported = registry.import_dir("yolov3-tiny-site", model_dir, by="trainer")
    assert imported["lineage"]["derived_from"]["dataset_version"] == version

    # Again from the proposal cache: no network run, the same numbers (the fit is deterministic).
    started = time.monotonic()
    again = train_candidate(store, DATASET, version, base_dir, tmp_path / "again", seed=0,
                            cache_dir=proposal_cache, name="yolov3-tiny-site")
    print(f"again from the proposal cache in {time.monotonic() - started:.1f} s")
    assert again.candidate == result.candidate and again.champion == result.champion


def test_a_candidate_fitted_on_shuffled_labels_is_stopped_at_the_gate(store, version, base_dir, tmp_path,
                                                                       proposal_cache):
    """Train and val labels moved to other frames (test's kept): the stage learns nothing true of this site."""
    worse = commit_shuffled_labels(store, version)
    result = train_candidate(store, DATASET, worse, base_dir, tmp_path / "worse", seed=0,
                             cache_dir=proposal_cache, name="yolov3-tiny-site")
    print(f"\nshuffled: champion mAP@0.5 {result.champion.map50:.4f}, candidate {result.candidate.map50:.4f}; "
          f"gate: {'; '.join(result.decision.reasons)}")
    assert not result.decision.eligible
