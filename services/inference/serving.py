"""The serving core shared by every transport: which models are loaded, whether the server is ready, and
running a detector on a request's inputs. The gRPC servicer only converts wire types and calls this."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from services.inference.detector import YoloDetector

SERVER_NAME = "vigil-inference"
SERVER_VERSION = "0.1.0"


class ModelNotFound(LookupError):
    pass


class InvalidRequest(ValueError):
    """The inputs do not fit the model; the message names the offending input."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size


DETECTOR_INPUTS = (TensorSpec("image", "UINT8", (-1, -1, 3)),)
DETECTOR_OUTPUTS = (
    TensorSpec("boxes", "FP32", (-1, 4)),
    TensorSpec("scores", "FP32", (-1,)),
    TensorSpec("classes", "BYTES", (-1,)),
)


class ModelServer:
    def __init__(self, default_model: YoloDetector) -> None:
        self.default_model = default_model
        self.models = {default_model.name: default_model}
        self.ready = threading.Event()

    def warm_up(self) -> None:
        """One inference through each model before declaring ready, so the first request is not the slow one."""
        for model in self.models.values():
            model.detect(np.zeros((model.input_size[1], model.input_size[0], 3), np.uint8))
        self.ready.set()

    def model(self, name: str, version: str = "") -> YoloDetector:
        model = self.models.get(name)
        if model is None or (version and version != model.version):
            raise ModelNotFound(f"model '{name}'{' version ' + version if version else ''} is not loaded; "
                                f"loaded: {', '.join(f'{m.name}:{m.version}' for m in self.models.values())}")
        return model

    def detect(self, name: str, version: str, inputs: dict[str, tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """inputs: name -> (datatype, array). Returns boxes [N,4] f32, scores [N] f32, classes [N] bytes."""
        model = self.model(name, version)
        if "image" not in inputs:
            raise InvalidRequest(f"missing input 'image' (given: {', '.join(inputs) or 'none'})")
        datatype, image = inputs["image"]
        if datatype != "UINT8":
            raise InvalidRequest(f"input 'image' must be UINT8, got {datatype}")
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise InvalidRequest(f"input 'image' must have shape [H, W, 3] (BGR), got {list(image.shape)}")
        detections = model.detect(np.ascontiguousarray(image))
        return {
            "boxes": np.array([d.box for d in detections], np.float32).reshape(-1, 4),
            "scores": np.array([d.score for d in detections], np.float32),
            "classes": np.array([d.label.encode() for d in detections], dtype=object),
        }
