"""The work every peer runtime does per request, shared so the peers differ only in their serving layer: load the
model dir as Vigil's service does (YoloDetector.load: THROUGHPUT hint, the device's default precision, the same
graph with its embedding output), decode an "image" UINT8 [H, W, 3] BGR frame or an "image_bytes" JPEG, detect,
and return Vigil's three outputs (boxes FP32 [N, 4], scores FP32 [N], classes BYTES [N])."""
from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np

from services.inference.detectors.yolo import YoloDetector

MODEL_NAME = "yolov3-tiny"


def load_detector(model_dir: str | Path) -> YoloDetector:
    detector = YoloDetector.load(Path(model_dir))
    width, height = detector.input_size
    detector.detect(np.zeros((height, width, 3), np.uint8))  # warm-up, as Vigil's service does
    return detector


def image_from_jpeg(encoded: bytes | str) -> np.ndarray:
    """A JPEG as sent in JSON (base64 text, the Kafka path) or as raw bytes (gRPC)."""
    raw = base64.b64decode(encoded) if isinstance(encoded, str) or not encoded[:2] == b"\xff\xd8" else encoded
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("'image_bytes' is not a decodable image")
    return image


def detections_as_arrays(detector: YoloDetector, bgr: np.ndarray) -> dict[str, np.ndarray]:
    detections = detector.detect(bgr)
    return {
        "boxes": np.asarray([d.box for d in detections], np.float32).reshape(-1, 4),
        "scores": np.asarray([d.score for d in detections], np.float32),
        "classes": np.asarray([d.label.encode() for d in detections], dtype=object),
    }
