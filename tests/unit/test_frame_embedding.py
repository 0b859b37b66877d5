"""The serving model's frame embedding (for embedding drift), on the real default model and real footage: its
shape, that it is fixed by the model version's stored projection, that it tells a changed scene from the next
frame, and that a model dir without a projection serves on without one."""
import json
import shutil

import cv2
import numpy as np
import pytest

from services.inference.detectors import detector_loader
from services.inference.detectors.embedding import MAX_DIMENSIONS
from services.inference.detectors.yolo import YoloDetector
from tools.darknet_converter import ensure_default_model
from tools.embedding_projection import PROJECTION_FILE


@pytest.fixture(scope="module")
def detector(yolov3_tiny_model_dir):
    return YoloDetector.load(yolov3_tiny_model_dir)  # as the service runs it: default precision, THROUGHPUT


@pytest.fixture(scope="module")
def footage(opencv_samples_dir):
    capture = cv2.VideoCapture(str(opencv_samples_dir / "vtest.avi"))
    frames = [capture.read()[1] for _ in range(302)]
    capture.release()
    return frames


def distance(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


def without_projection(model_dir, target):
    """A copy of the model dir as it was built before embeddings: no projection, no "embedding" in model.json."""
    shutil.copytree(model_dir, target)
    (target / PROJECTION_FILE).unlink()
    metadata = json.loads((target / "model.json").read_text())
    del metadata["embedding"]
    (target / "model.json").write_text(json.dumps(metadata))
    return target


def test_the_embedding_has_the_stated_dimensions_and_unit_norm(detector, footage, yolov3_tiny_model_dir):
    metadata = json.loads((yolov3_tiny_model_dir / "model.json").read_text())
    assert metadata["embedding"]["dimensions"] == MAX_DIMENSIONS
    embedding = detector.embed(footage[0])
    assert embedding.shape == (MAX_DIMENSIONS,) and embedding.dtype == np.float32
    assert abs(np.linalg.norm(embedding) - 1.0) < 1e-5


def test_the_same_frame_gives_the_same_embedding_from_two_loads(detector, footage, yolov3_tiny_model_dir):
    again = YoloDetector.load(yolov3_tiny_model_dir)
    for frame in (footage[0], footage[150]):
        np.testing.assert_allclose(again.embed(frame), detector.embed(frame), atol=1e-6)


def test_a_darkened_or_blurred_view_moves_the_embedding_more_than_the_next_frame(detector, footage):
    for index in (0, 150, 300):
        frame, following = footage[index], footage[index + 1]
        reference = detector.embed(frame)
        next_frame = distance(reference, detector.embed(following))
        dusk = distance(reference, detector.embed((frame * 0.3).astype(np.uint8)))  # darkened by 70%
        defocus = distance(reference, detector.embed(cv2.GaussianBlur(frame, (0, 0), 3)))
        assert dusk > 2 * next_frame and defocus > 2 * next_frame, (index, next_frame, dusk, defocus)


def test_a_model_dir_without_a_projection_serves_without_embedding(yolov3_tiny_model_dir, footage, tmp_path):
    bare = without_projection(yolov3_tiny_model_dir, tmp_path / "bare")
    detector = detector_loader("CPU", None, 0.25)(bare)
    assert detector.embed(footage[0]) is None
    assert any(d.label == "person" for d in detector.detect(footage[0]))


def test_a_projection_that_is_missing_or_does_not_fit_gives_no_embedding_and_no_error(
        yolov3_tiny_model_dir, footage, tmp_path):
    missing = tmp_path / "missing"
    shutil.copytree(yolov3_tiny_model_dir, missing)
    (missing / PROJECTION_FILE).unlink()  # model.json still names it
    wrong_feature = tmp_path / "wrong-feature"
    shutil.copytree(yolov3_tiny_model_dir, wrong_feature)
    metadata = json.loads((wrong_feature / "model.json").read_text())
    metadata["embedding"]["feature"] = "no such op"
    (wrong_feature / "model.json").write_text(json.dumps(metadata))
    wrong_shape = tmp_path / "wrong-shape"
    shutil.copytree(yolov3_tiny_model_dir, wrong_shape)
    np.save(wrong_shape / PROJECTION_FILE, np.ones((7, 64), np.float32))
    for model_dir in (missing, wrong_feature, wrong_shape):
        detector = YoloDetector.load(model_dir)
        assert detector.embed(footage[0]) is None, model_dir
        assert detector.detect(footage[0]), model_dir


def test_embeddings_switched_off_compile_no_extra_output(yolov3_tiny_model_dir, footage):
    detector = detector_loader("CPU", None, 0.25, embeddings=False)(yolov3_tiny_model_dir)
    assert detector.embed(footage[0]) is None
    assert {o.get_any_name() for o in detector.compiled_model.outputs} == {"yolo_13", "yolo_26"}


def test_a_cache_built_before_embeddings_gets_the_same_projection_on_install(yolov3_tiny_model_dir, footage,
                                                                            tmp_path):
    cached = without_projection(yolov3_tiny_model_dir, tmp_path / "models" / "yolov3-tiny" / "1")
    assert ensure_default_model(tmp_path) == cached
    np.testing.assert_array_equal(np.load(cached / PROJECTION_FILE), np.load(yolov3_tiny_model_dir / PROJECTION_FILE))
    np.testing.assert_allclose(YoloDetector.load(cached).embed(footage[0]),
                               YoloDetector.load(yolov3_tiny_model_dir).embed(footage[0]), atol=1e-6)
