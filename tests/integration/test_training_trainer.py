"""Training on a real dataset version: frames of the demo footage, on two cameras (as filmed, and darkened as a
dimmed camera would see them), labelled by a stronger reference (the same network at the frame's full 768x576
instead of 416x416, at 0.3, on the undimmed frame; the site's classes only), committed into a DatasetStore on a real SeaweedFS S3. The
trainer runs the served detector over the items' images, fits the re-scoring stage, evaluates candidate and
champion on the test split and writes a model dir the inference loader serves and the registry imports with its
lineage. The figures are printed (-s); the test asserts the machinery, not an improvement."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import pytest

from libs.common.cache_dir import default_cache_dir
from libs.common.objectstore import ensure_bucket
from libs.model_registry.store import ModelRegistry
from services.datasets.manifest import Item, Label
from services.datasets.store import DatasetStore
from services.inference.detectors import detector_loader
from services.inference.detectors.rescored import RescoredDetector
from services.inference.detectors.yolo import YoloDetector
from services.training.evaluation import EvaluationReport
from services.training.trainer import REPORT_FILE, ProposalCache, TrainingParams, model_identity, train_candidate
from tests.integration.infrastructure import object_store

pytestmark = pytest.mark.integration

BUCKET = "vigil-datasets"
DATASET = "site-street"
FRAME_STEP = 6  # every 6th of the footage's 795 frames (0.6 s apart)
REFERENCE_THRESHOLD = 0.3
DIM = 0.12  # the dimmed camera's gain: dark enough that the detector's scores on it fall
SITE_CLASSES = ("person", "car", "bicycle")  # the site's label schema: the reference's other classes are not labelled


def reference_model_dir(base_dir: Path, out: Path, size: tuple[int, int]) -> Path:
    """The base YOLO dir with its network reshaped to `size` (width, height): the same weights seeing the frame
    at a higher resolution (the heads' grids follow the input)."""
    width, height = size
    out.mkdir(parents=True)
    model = ov.Core().read_model(base_dir / "model.xml")
    model.reshape({model.input(0).get_any_name(): [1, 3, height, width]})
    ov.save_model(model, out / "model.xml", compress_to_fp16=False)
    for name in ("labels.txt", "embedding_projection.npy"):
        (out / name).write_bytes((base_dir / name).read_bytes())
    metadata = json.loads((base_dir / "model.json").read_text())
    metadata["input"]["shape"] = [1, 3, height, width]
    (out / "model.json").write_text(json.dumps({**metadata, "name": "reference"}))
    return out


@pytest.fixture(scope="module")
def base_dir() -> Path:
    from tools.darknet_converter import ensure_default_model
    return ensure_default_model(default_cache_dir())


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with object_store(tmp_path_factory.mktemp("training")) as client:
        ensure_bucket(client, BUCKET)
        yield client


@pytest.fixture(scope="module")
def store(s3) -> DatasetStore:
    # 3-second groups split 60/20/20: neighbouring frames stay in one split.
    return DatasetStore(s3, BUCKET, ratios=(0.6, 0.2, 0.2), bucket_s=3.0)


@pytest.fixture(scope="module")
def version(store, base_dir, tmp_path_factory) -> str:
    from cli.stack.camera import fetch_footage

    reference = YoloDetector.load(reference_model_dir(base_dir, tmp_path_factory.mktemp("ref") / "reference",
                                                      (768, 576)), precision_hint="f32",
                                  score_threshold=REFERENCE_THRESHOLD, embeddings=False)
    capture = cv2.VideoCapture(str(fetch_footage(default_cache_dir())))
    items, index, start = [], 0, 1_800_000_000.0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index % FRAME_STEP == 0:
            labels = tuple(Label(d.label, d.box) for d in reference.detect(frame) if d.label in SITE_CLASSES)
            for camera, image in (("street", frame), ("street-dim", cv2.convertScaleAbs(frame, alpha=DIM))):
                jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
                items.append(Item(f"{camera}-{index:04d}", store.put_blob(jpeg, "image/jpeg"), len(jpeg),
                                  image.shape[1], image.shape[0], camera_id=camera,
                                  captured_at=start + index / 10.0, labels=labels))
        index += 1
    capture.release()
    manifest = store.commit(DATASET, items, message="demo footage labelled by yolov3-tiny at 768x576",
                            author="test")
    return manifest.version


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
    manifest = store.version(DATASET, version)
    fitted = [item for item in manifest.items if item.split in ("train", "val")]
    moved = np.random.default_rng(0).permutation(len(fitted))
    shuffled = {item.item_id: replace(item, labels=fitted[j].labels) for item, j in zip(fitted, moved)}
    items = [shuffled.get(item.item_id, item) for item in manifest.items]
    worse = store.commit(DATASET, items, message="train and val labels shuffled", author="test", branch="shuffled")
    result = train_candidate(store, DATASET, worse.version, base_dir, tmp_path / "worse", seed=0,
                             cache_dir=proposal_cache, name="yolov3-tiny-site")
    print(f"\nshuffled: champion mAP@0.5 {result.champion.map50:.4f}, candidate {result.candidate.map50:.4f}; "
          f"gate: {'; '.join(result.decision.reasons)}")
    assert not result.decision.eligible
