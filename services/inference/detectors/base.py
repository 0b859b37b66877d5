"""What every detector backend shares: the `Detector` interface serving and the frame pipeline use, the
`Detection` it returns, and the common parts of a backend (compiling a model dir, with the pooled feature map of
its embedding when the dir has a projection; a pool of infer requests; frames fed to the compiled graph as BGR
uint8; non-maximum suppression)."""
from __future__ import annotations

import json
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import cv2
import numpy as np
import openvino as ov
from openvino.preprocess import ColorFormat, PrePostProcessor

from services.inference.detectors.embedding import (
    POOLED_FEATURE_OUTPUT, EmbeddingProjection, pooled_feature_output, read_projection,
)


@dataclass(frozen=True)
class Detection:
    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the original frame


class FrameInfo(Protocol):
    """What preprocess tells postprocess about the frame; results carry its size."""
    width: int
    height: int


@dataclass(frozen=True)
class ResizeInfo:
    """The original frame size. The frame is stretched onto the network input (no letterbox), so normalized
    box coordinates map back by these two factors alone."""
    width: int
    height: int


class Detector(Protocol):
    """What serving (gRPC: `detect`) and the frame pipeline (the stages, through an AsyncInferQueue) need of a
    model. Every backend in this package has it."""
    name: str
    version: str
    input_size: tuple[int, int]  # (width, height) of the network input; warm-up runs a frame of this size

    @property
    def inference_precision(self) -> str: ...

    def detect(self, bgr: np.ndarray) -> list[Detection]: ...

    def preprocess(self, bgr: np.ndarray) -> tuple[np.ndarray, FrameInfo]: ...

    def make_infer_queue(self, jobs: int = 0) -> Any: ...

    def infer_request_outputs(self, request: Any) -> dict[str, np.ndarray]: ...

    def postprocess(self, outputs: dict[str, np.ndarray], info: Any) -> list[Detection]: ...

    def embedding(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        """The frame's unit-norm embedding (at most 64 floats) from the same outputs, or None if the model
        has none (its dir has no projection, or embeddings are switched off)."""
        ...


def compile_config(precision_hint: str | None, performance_hint: str) -> dict:
    """precision_hint: e.g. "f32" to rule out bf16/f16 execution (which CPUs with BF16 pick by default)."""
    config = {"PERFORMANCE_HINT": performance_hint}
    if precision_hint:
        config["INFERENCE_PRECISION_HINT"] = precision_hint
    return config


def check_bgr(bgr: np.ndarray) -> None:
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ValueError(f"expected a BGR uint8 frame [H, W, 3], got {bgr.dtype} {bgr.shape}")


def read_model_json(model_dir: Path, kind: str) -> dict:
    """The dir's model.json, which must name `kind` (a dir naming none is a "yolo" one, the converter's)."""
    metadata = json.loads((Path(model_dir) / "model.json").read_text())
    if metadata.get("kind", "yolo") != kind:
        raise ValueError(f"{model_dir} is a model of kind {metadata.get('kind', 'yolo')!r}, not {kind!r}")
    return metadata


def bgr_frame_input(model: ov.Model, scale: float | None = None) -> ov.Model:
    """The network behind an input of frames as they come, [1, H, W, 3] BGR uint8: the conversion to its RGB
    float NCHW (divided by `scale` when given) becomes part of the compiled graph, where it costs next to
    nothing; done by OpenCV (blobFromImage) it took 2.4 ms of CPU per 768x576 frame, a fifth of YOLO's
    inference."""
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")) \
        .set_color_format(ColorFormat.BGR)
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    steps = ppp.input().preprocess().convert_element_type(ov.Type.f32).convert_color(ColorFormat.RGB)
    if scale is not None:
        steps.scale(scale)
    return ppp.build()


def non_max_suppression(boxes_xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float,
                        class_ids: np.ndarray | None = None) -> np.ndarray:
    """Indices of the boxes that survive suppression (within their own class when class_ids are given), best
    score first. Scores are taken as already thresholded."""
    if len(boxes_xyxy) == 0:
        return np.zeros(0, np.int64)
    xywh = np.concatenate([boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]], axis=1).tolist()
    if class_ids is None:
        kept = cv2.dnn.NMSBoxes(xywh, scores.tolist(), 0.0, iou_threshold)
    else:
        kept = cv2.dnn.NMSBoxesBatched(xywh, scores.tolist(), class_ids.tolist(), 0.0, iou_threshold)
    kept = np.asarray(kept, np.int64).reshape(-1)
    return kept[np.argsort(-scores[kept], kind="stable")]


class RequestPool:
    """Infer requests of one compiled model, one per caller at a time, so `detect` is safe from many threads:
    up to the number of requests the device runs best in parallel (its streams under the THROUGHPUT hint)."""

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


class StagedDetector:
    """A compiled model of a fixed input size, run either frame by frame (`detect`, safe from many threads) or
    in stages (`preprocess`, an AsyncInferQueue from `make_infer_queue`, `infer_request_outputs`,
    `postprocess`) by the frame pipeline. A backend sets `kind` and `outputs` and writes the two stages; the
    embedding (see embedding.py) comes with any dir that has a projection, whatever the backend."""
    kind = ""
    outputs: tuple[str, ...] = ()
    input_size: tuple[int, int]  # (width, height) of the network input

    def __init__(self, compiled_model: ov.CompiledModel, name: str, version: str, score_threshold: float,
                 projection: EmbeddingProjection | None = None):
        self.compiled_model = compiled_model
        self.name = name
        self.version = version
        self.score_threshold = score_threshold
        # Set only when the compiled graph has the pooled feature as an output (see _compile_dir).
        self.projection = projection
        self._requests = RequestPool(compiled_model)

    @classmethod
    def _compile_dir(cls, model_dir: Path, device: str, precision_hint: str | None, performance_hint: str,
                     core: ov.Core | None, adapt: Callable[[ov.Model], ov.Model] = lambda model: model,
                     embeddings: bool = True) -> tuple[ov.CompiledModel, dict, EmbeddingProjection | None]:
        """The compiled model, its model.json and, if `embeddings` and the dir has a projection whose feature
        the graph has, that projection (the pooled feature then being an extra output of the graph)."""
        metadata = read_model_json(model_dir, cls.kind)
        core = core or ov.Core()
        model = adapt(core.read_model(Path(model_dir) / "model.xml"))
        projection = read_projection(model_dir, metadata) if embeddings else None
        if projection is not None and not pooled_feature_output(model, projection):
            projection = None
        compiled = core.compile_model(model, device, compile_config(precision_hint, performance_hint))
        return compiled, metadata, projection

    @property
    def _fetched(self) -> tuple[str, ...]:
        """The outputs copied out of a finished request: the backend's, and the pooled feature if any."""
        return self.outputs + ((POOLED_FEATURE_OUTPUT,) if self.projection is not None else ())

    @property
    def inference_precision(self) -> str:
        """What the device really computes in, e.g. "bf16" on CPUs with BF16 unless "f32" was asked for."""
        return self.compiled_model.get_property("INFERENCE_PRECISION_HINT").to_string()

    def make_infer_queue(self, jobs: int = 0) -> ov.AsyncInferQueue:
        """jobs=0 lets OpenVINO pick the number of parallel requests the device runs best with."""
        return ov.AsyncInferQueue(self.compiled_model, jobs)

    def infer_request_outputs(self, request: ov.InferRequest) -> dict[str, np.ndarray]:
        """Copies the outputs out of a finished request, which may be reused for the next frame at once."""
        return {name: request.get_tensor(name).data.copy() for name in self._fetched}

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """Runs one preprocessed tensor; blocks while every request is busy. Safe from many threads."""
        return self._requests.infer(tensor, self._fetched)

    def embedding(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        if self.projection is None:
            return None
        return self.projection.embed(outputs[POOLED_FEATURE_OUTPUT])

    def embed(self, bgr: np.ndarray) -> np.ndarray | None:
        """One frame's embedding (None if the model has none), run alone. Safe from many threads."""
        return self.embedding(self.infer(self.preprocess(bgr)[0]))

    def preprocess(self, bgr: np.ndarray) -> tuple[np.ndarray, FrameInfo]:
        raise NotImplementedError

    def postprocess(self, outputs: dict[str, np.ndarray], info) -> list[Detection]:
        raise NotImplementedError

    def detect(self, bgr: np.ndarray) -> list[Detection]:
        tensor, info = self.preprocess(bgr)
        return self.postprocess(self.infer(tensor), info)
