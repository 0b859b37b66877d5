"""The Darknet -> OpenVINO conversion of yolov3-tiny and the detector that runs it, checked against OpenCV's own
Darknet importer on real photos and CCTV footage."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import pytest

from services.inference.detectors.base import Detection, ResizeInfo, non_max_suppression
from services.inference.detectors.embedding import POOLED_FEATURE_OUTPUT
from services.inference.detectors.yolo import YoloDetector, YoloHeadSpec, decode_yolo_head
from tools.darknet_converter import convert

SCORE_THRESHOLD = 0.25
NMS_IOU = 0.45


@pytest.fixture(scope="module")
def freshly_converted_yolov3_tiny(yolov3_tiny_darknet_dir: Path, tmp_path_factory) -> Path:
    # Converted here rather than taken from the cache, so the test always checks the converter as it is now.
    d = yolov3_tiny_darknet_dir
    return convert(d / "yolov3-tiny.cfg", d / "yolov3-tiny.weights", d / "coco.names",
                   tmp_path_factory.mktemp("yolov3-tiny"))


@pytest.fixture(scope="module")
def f32_detector(freshly_converted_yolov3_tiny: Path) -> YoloDetector:
    # f32 everywhere, so a difference from OpenCV means a conversion bug, not bf16 rounding.
    return YoloDetector.load(freshly_converted_yolov3_tiny, precision_hint="f32",
                             score_threshold=SCORE_THRESHOLD, nms_iou=NMS_IOU)


def _vtest_frame(samples: Path, index: int) -> np.ndarray:
    capture = cv2.VideoCapture(str(samples / "vtest.avi"))
    capture.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = capture.read()
    capture.release()
    assert ok, f"could not read frame {index} of vtest.avi"
    return frame


def _opencv_darknet_reference(darknet_dir: Path, bgr: np.ndarray) -> list[Detection]:
    """Detections from cv2.dnn's Darknet importer: its [yolo] outputs are already decoded rows of
    (cx, cy, w, h normalized, objectness, objectness * class probability for each class)."""
    net = cv2.dnn.readNetFromDarknet(str(darknet_dir / "yolov3-tiny.cfg"), str(darknet_dir / "yolov3-tiny.weights"))
    net.setInput(cv2.dnn.blobFromImage(bgr, 1 / 255.0, (416, 416), swapRB=True, crop=False))
    rows = np.concatenate(net.forward(net.getUnconnectedOutLayersNames()))
    class_ids = rows[:, 5:].argmax(axis=1)
    scores = rows[np.arange(len(rows)), 5 + class_ids]
    keep = scores > SCORE_THRESHOLD
    rows, class_ids, scores = rows[keep], class_ids[keep], scores[keep]
    height, width = bgr.shape[:2]
    scale = np.array([width, height, width, height], np.float32)
    xyxy = np.concatenate([rows[:, :2] - rows[:, 2:4] / 2, rows[:, :2] + rows[:, 2:4] / 2], axis=1) * scale
    labels = (darknet_dir / "coco.names").read_text().split()
    return [Detection(labels[class_ids[k]], int(class_ids[k]), float(scores[k]),
                      tuple(np.clip(xyxy[k], 0, scale).tolist()))
            for k in non_max_suppression(xyxy, scores, NMS_IOU, class_ids)]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _best_same_class_match(wanted: Detection, candidates: list[Detection]) -> tuple[Detection | None, float]:
    same_class = [c for c in candidates if c.class_id == wanted.class_id]
    if not same_class:
        return None, 0.0
    best = max(same_class, key=lambda c: _iou(c.box, wanted.box))
    return best, _iou(best.box, wanted.box)


@pytest.mark.parametrize("image", ["messi5.jpg", "basketball1.png", "vtest.avi#100", "vtest.avi#200"])
def test_converted_yolov3_tiny_matches_opencv_darknet_reference(
        image: str, f32_detector: YoloDetector, yolov3_tiny_darknet_dir: Path, opencv_samples_dir: Path):
    name, _, frame = image.partition("#")
    bgr = _vtest_frame(opencv_samples_dir, int(frame)) if frame else cv2.imread(str(opencv_samples_dir / name))
    reference = _opencv_darknet_reference(yolov3_tiny_darknet_dir, bgr)
    detections = f32_detector.detect(bgr)

    assert reference, "the reference finds nothing: the comparison would prove nothing"
    # Both ways round: nothing of the reference is missing, and nothing is invented.
    for wanted, found in [(r, detections) for r in reference] + [(d, reference) for d in detections]:
        match, iou = _best_same_class_match(wanted, found)
        assert match is not None, f"{wanted} has no counterpart of class {wanted.label}"
        assert iou >= 0.9, f"{wanted} vs {match}: IoU {iou:.3f}"
        assert abs(match.score - wanted.score) <= 0.01, f"{wanted} vs {match}"


def test_converted_model_exposes_raw_yolo_heads_and_its_metadata(freshly_converted_yolov3_tiny: Path,
                                                                  f32_detector: YoloDetector):
    compiled = f32_detector.compiled_model
    # Served, the network takes resized frames as they are (BGR uint8, NHWC) and converts them in its graph.
    assert compiled.input(0).get_any_name() == "image"
    assert list(compiled.input(0).get_shape()) == [1, 416, 416, 3]
    assert compiled.input(0).get_element_type() == ov.Type.u8
    network = ov.Core().read_model(freshly_converted_yolov3_tiny / "model.xml")
    assert list(network.input(0).get_shape()) == [1, 3, 416, 416]
    # The raw heads, and the embedding's pooled backbone feature (the converter writes its projection).
    assert {o.get_any_name(): list(o.get_shape()) for o in compiled.outputs} == {
        "yolo_13": [1, 255, 13, 13], "yolo_26": [1, 255, 26, 26], POOLED_FEATURE_OUTPUT: [1, 1024]}

    metadata = json.loads((freshly_converted_yolov3_tiny / "model.json").read_text())
    heads = {o["name"]: o for o in metadata["outputs"]}
    # The coarse grid predicts the large anchors, the fine grid the small ones.
    assert heads["yolo_13"]["anchors"] == [[81, 82], [135, 169], [344, 319]]
    assert heads["yolo_26"]["anchors"] == [[10, 14], [23, 27], [37, 58]]
    assert len(metadata["source"]["weights_sha256"]) == 64
    # The end of the backbone (cfg layer 12: 1024 channels at the 13x13 grid), by a name the converter gives it.
    assert metadata["embedding"]["feature"] == "layer_12_convolutional"
    assert np.load(freshly_converted_yolov3_tiny / metadata["embedding"]["projection"]).shape == (1024, 64)
    assert f32_detector.labels[0] == "person" and len(f32_detector.labels) == 80
    assert (f32_detector.name, f32_detector.input_size) == ("yolov3-tiny", (416, 416))
    assert f32_detector.inference_precision == "f32"


def test_a_fresh_conversion_gives_the_embedding_of_the_cached_default_model(f32_detector: YoloDetector,
                                                                           yolov3_tiny_model_dir: Path,
                                                                           opencv_samples_dir: Path):
    # Whether the cache was converted now or given its projection later, one model version embeds alike, so
    # replicas that each build their own cache give comparable embeddings.
    cached = YoloDetector.load(yolov3_tiny_model_dir, precision_hint="f32")
    frame = _vtest_frame(opencv_samples_dir, 200)
    np.testing.assert_allclose(f32_detector.embed(frame), cached.embed(frame), atol=1e-5)


def test_default_detector_finds_pedestrians_in_cctv_frame(yolov3_tiny_model_dir: Path, opencv_samples_dir: Path):
    detector = YoloDetector.load(yolov3_tiny_model_dir)  # default precision and THROUGHPUT, as the service runs
    frame = _vtest_frame(opencv_samples_dir, 200)
    height, width = frame.shape[:2]

    detections = detector.detect(frame)

    persons = [d for d in detections if d.label == "person" and d.score >= 0.5]
    assert len(persons) >= 3, detections
    for d in detections:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, d
    assert [d.score for d in detections] == sorted((d.score for d in detections), reverse=True)


def test_async_infer_queue_results_equal_sync_detect(yolov3_tiny_model_dir: Path, opencv_samples_dir: Path):
    detector = YoloDetector.load(yolov3_tiny_model_dir)
    frames = [_vtest_frame(opencv_samples_dir, i) for i in (0, 200)]
    infos: dict[int, ResizeInfo] = {}
    results: dict[int, list[Detection]] = {}

    def on_done(request, index):
        results[index] = detector.postprocess(detector.infer_request_outputs(request), infos[index])

    queue = detector.make_infer_queue()
    queue.set_callback(on_done)
    for index, frame in enumerate(frames):
        tensor, infos[index] = detector.preprocess(frame)
        queue.start_async({0: tensor}, index)
    queue.wait_all()

    assert [results[i] for i in range(len(frames))] == [detector.detect(f) for f in frames]


def test_decode_keeps_confident_anchor_and_nms_suppresses_same_class_duplicates():
    # A 2x2 grid with 2 anchors and 3 classes, every logit strongly "no" except where set below.
    head = YoloHeadSpec(output="yolo_2", anchors=np.array([[10, 20], [40, 30]], np.float32), classes=3)
    raw = np.full((2, 5 + 3, 2, 2), -20.0, np.float32)
    raw[:, :4] = 0.0  # x, y offsets at the cell centre, w, h equal to the anchor
    # Anchor 1 in row 1, column 0: certain object of class 2, twice its anchor's width.
    raw[1, 4, 1, 0], raw[1, 5 + 2, 1, 0], raw[1, 2, 1, 0] = 10.0, 10.0, np.log(2.0)
    # Anchor 0 in row 0, column 1: an object, but no class is likely, so its score stays below the threshold.
    raw[0, 4, 0, 1] = 10.0

    boxes, scores, class_ids = decode_yolo_head(raw.reshape(1, 16, 2, 2), head, (100, 100), 0.25)

    assert class_ids.tolist() == [2]
    np.testing.assert_allclose(boxes[0], [0.25, 0.75, 0.8, 0.3], atol=1e-6)  # cx, cy, w, h of the 100x100 input
    assert scores[0] == pytest.approx(1.0, abs=1e-3)

    xyxy = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    kept = non_max_suppression(xyxy, np.array([0.6, 0.9, 0.5, 0.3], np.float32), 0.45, np.array([0, 0, 1, 0]))
    # Box 0 overlaps the better box 1 of its class; box 2 is another class; box 3 overlaps nothing.
    assert kept.tolist() == [1, 2, 3]


def test_postprocess_maps_boxes_to_original_frame_pixels_and_clips_them(yolov3_tiny_model_dir: Path):
    detector = YoloDetector.load(yolov3_tiny_model_dir)
    outputs = {"yolo_13": np.full((1, 255, 13, 13), -20.0, np.float32),
               "yolo_26": np.full((1, 255, 26, 26), -20.0, np.float32)}
    coarse = outputs["yolo_13"].reshape(3, 85, 13, 13)  # a view: writes land in outputs["yolo_13"]
    # Anchor 0 (81x82 px at 416) in the centre cell (6, 6): a person centred in the frame.
    coarse[0, 0:4, 6, 6] = 0.0
    coarse[0, 4, 6, 6], coarse[0, 5 + 0, 6, 6] = 10.0, 10.0
    # Anchor 2 (344x319) in the corner cell (0, 0): a car sticking out of the frame, to be clipped.
    coarse[2, 0:4, 0, 0] = 0.0
    coarse[2, 4, 0, 0], coarse[2, 5 + 2, 0, 0] = 10.0, 10.0

    detections = detector.postprocess(outputs, ResizeInfo(width=832, height=416))

    by_label = {d.label: d for d in detections}
    assert set(by_label) == {"person", "car"}
    # 832x416 is the 416x416 input stretched twice as wide: x coordinates and widths double.
    np.testing.assert_allclose(by_label["person"].box, [416 - 81, 208 - 41, 416 + 81, 208 + 41], atol=1e-3)
    car_x2, car_y2 = 2 * (0.5 / 13 * 416 + 344 / 2), 0.5 / 13 * 416 + 319 / 2
    np.testing.assert_allclose(by_label["car"].box, [0, 0, car_x2, car_y2], atol=1e-3)
