"""A site's dataset version for the training tests: frames of the demo footage on two cameras (as filmed, and
darkened as a dimmed camera would see them), labelled by a stronger reference (the same network at the frame's full
768x576 instead of 416x416, at 0.3, on the undimmed frame; the site's classes only), committed into a
DatasetStore; and the same version with its train and val labels shuffled among frames. The module's fixtures
(import them into a test module: each module gets its own S3 and version) give the base detector's dir, a lone
SeaweedFS S3, the store on it and the version."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from cli.demo.reference import reference_model_dir
from cli.stack.objectstore import ReadOnlyIdentity
from libs.common.cache_dir import default_cache_dir
from libs.common.objectstore import ensure_bucket
from services.datasets.manifest import Item, Label
from services.datasets.store import DatasetStore
from services.inference.detectors.yolo import YoloDetector
from tests.integration.infrastructure import object_store

DATASET = "site-street"
FRAME_STEP = 6  # every 6th of the footage's 795 frames (0.6 s apart)
REFERENCE_THRESHOLD = 0.3
DIM = 0.12  # the dimmed camera's gain: dark enough that the detector's scores on it fall
SITE_CLASSES = ("person", "car", "bicycle")  # the site's label schema: the reference's other classes are not labelled
# The S3's read-only identity of the dataset bucket, as the local stack gives the store's readers (training).
READER = ReadOnlyIdentity("vigil-datasets-reader", "site-reader", "site-reader-secret", ("vigil-datasets",))
CAPTURED_FROM = 1_800_000_000.0  # the first frame's capture time; frames follow at the footage's 10 fps


def site_store(client) -> DatasetStore:
    # 3-second groups split 60/20/20: neighbouring frames stay in one split.
    return DatasetStore(client, "vigil-datasets", ratios=(0.6, 0.2, 0.2), bucket_s=3.0)


def commit_site_footage(store: DatasetStore, base_dir: Path, work: Path) -> str:
    """Commits the labelled frames of both cameras as a version of DATASET on main; returns its id."""
    from cli.stack.camera import fetch_footage

    reference = YoloDetector.load(reference_model_dir(base_dir, work / "reference", (768, 576)),
                                  precision_hint="f32", score_threshold=REFERENCE_THRESHOLD, embeddings=False)
    capture = cv2.VideoCapture(str(fetch_footage(default_cache_dir())))
    items, index = [], 0
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
                                  captured_at=CAPTURED_FROM + index / 10.0, labels=labels))
        index += 1
    capture.release()
    manifest = store.commit(DATASET, items, message="demo footage labelled by yolov3-tiny at 768x576",
                            author="test")
    return manifest.version


def commit_shuffled_labels(store: DatasetStore, version: str, branch: str = "shuffled") -> str:
    """`version` with its train and val labels moved to other frames (test's kept), committed on `branch`: a
    candidate fitted on it learns nothing true of the site."""
    manifest = store.version(DATASET, version)
    fitted = [item for item in manifest.items if item.split in ("train", "val")]
    moved = np.random.default_rng(0).permutation(len(fitted))
    shuffled = {item.item_id: replace(item, labels=fitted[j].labels) for item, j in zip(fitted, moved)}
    items = [shuffled.get(item.item_id, item) for item in manifest.items]
    return store.commit(DATASET, items, message="train and val labels shuffled", author="test",
                        branch=branch).version


@pytest.fixture(scope="module")
def base_dir() -> Path:
    from tools.darknet_converter import ensure_default_model
    return ensure_default_model(default_cache_dir())


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with object_store(tmp_path_factory.mktemp("training"), readers=(READER,)) as client:
        ensure_bucket(client, "vigil-datasets")
        yield client


@pytest.fixture(scope="module")
def store(s3) -> DatasetStore:
    return site_store(s3)


@pytest.fixture(scope="module")
def version(store, base_dir, tmp_path_factory) -> str:
    return commit_site_footage(store, base_dir, tmp_path_factory.mktemp("ref"))
