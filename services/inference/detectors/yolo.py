"""YOLO (darknet-converted, see tools/darknet_converter.py) on OpenVINO: frames in, `Detection`s out.

Model dirs of kind "yolo" (the default; model.json naming no kind is one): model.xml/.bin with the raw heads
as outputs, model.json naming each head's anchors and classes, labels.txt; and, from the converter, the
embedding's projection (embedding_projection.npy, see embedding.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import openvino as ov

from services.inference.detectors.base import (
    Detection, ResizeInfo, StagedDetector, bgr_frame_input, check_bgr, non_max_suppression,
)
from services.inference.detectors.embedding import EmbeddingProjection

KIND = "yolo"


@dataclass(frozen=True)
class YoloHeadSpec:
    output: str          # output tensor name, e.g. "yolo_13"
    anchors: np.ndarray  # [num_anchors, 2] (w, h) in network-input pixels
    classes: int


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



class YoloDetector(StagedDetector):
    """A converted YOLO model dir compiled for one device. The frame is stretched onto the network input (no
    letterbox, as darknet and cv2.dnn do for yolov3-tiny)."""
    kind = KIND
    stretches_frame = True  # boxes map back by the frame's size alone (see ResizeInfo)

    def __init__(self, compiled_model: ov.CompiledModel, metadata: dict, labels: list[str],
                 score_threshold: float = 0.25, nms_iou: float = 0.45,
                 projection: EmbeddingProjection | None = None):
        super().__init__(compiled_model, metadata["name"], str(metadata["version"]), score_threshold, projection)
        self.labels = labels
        _, _, height, width = metadata["input"]["shape"]
        self.input_size: tuple[int, int] = (width, height)
        self.heads = [YoloHeadSpec(o["name"], np.asarray(o["anchors"], np.float32), o["classes"])
                      for o in metadata["outputs"]]
        self.outputs = tuple(head.output for head in self.heads)
        self.nms_iou = nms_iou

    @classmethod
    def load(cls, model_dir: Path, device: str = "CPU", precision_hint: str | None = None,
             score_threshold: float = 0.25, nms_iou: float = 0.45,
             performance_hint: str = "THROUGHPUT", core: ov.Core | None = None,
             embeddings: bool = True) -> YoloDetector:
        """precision_hint: e.g. "f32" to rule out bf16/f16 execution (which CPUs with BF16 pick by default).
        The network takes RGB float in 0..1; the frames' conversion to it is compiled into the graph.
        embeddings: compile in the embedding's pooled feature when the dir has a projection."""
        model_dir = Path(model_dir)
        compiled, metadata, projection = cls._compile_dir(model_dir, device, precision_hint, performance_hint,
                                                          core, lambda model: bgr_frame_input(model, scale=255.0),
                                                          embeddings)
        labels = (model_dir / metadata.get("labels", "labels.txt")).read_text().split("\n")
        return cls(compiled, metadata, [label for label in labels if label], score_threshold, nms_iou, projection)

    def preprocess(self, bgr: np.ndarray) -> tuple[np.ndarray, ResizeInfo]:
        """BGR uint8 frame [H, W, 3] -> the compiled model's input: the frame resized to the network's size,
        [1, h, w, 3] BGR uint8 (see `bgr_frame_input`), plus how to map boxes back."""
        check_bgr(bgr)
        resized = cv2.resize(bgr, self.input_size, interpolation=cv2.INTER_LINEAR)
        return resized[np.newaxis], ResizeInfo(width=bgr.shape[1], height=bgr.shape[0])

    def postprocess(self, outputs: dict[str, np.ndarray], info: ResizeInfo) -> list[Detection]:
        decoded = [decode_yolo_head(outputs[head.output], head, self.input_size, self.score_threshold)
                   for head in self.heads]
        cxcywh = np.concatenate([d[0] for d in decoded])
        scores = np.concatenate([d[1] for d in decoded])
        class_ids = np.concatenate([d[2] for d in decoded])

        scale = np.array([info.width, info.height, info.width, info.height], np.float32)
        xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], axis=1)
        xyxy *= scale
        kept = non_max_suppression(xyxy, scores, self.nms_iou, class_ids)
        # Clip after NMS, as darknet does: suppression compares the boxes the network predicted.
        xyxy = np.clip(xyxy, 0, scale)
        return [
            Detection(label=self.labels[class_ids[k]], class_id=int(class_ids[k]), score=float(scores[k]),
                      box=tuple(float(v) for v in xyxy[k]))
            for k in kept
        ]
