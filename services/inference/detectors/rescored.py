"""The second stage of a re-scored model: the base detector proposes boxes at a low score threshold, and a
logistic regression fitted on this site's labels (services/training/rescoring.py) gives each proposal the
probability that it is a true object of its class; per camera and class, a threshold calibrated on the
validation split decides what is served. Detections keep their box and class; their score becomes that
probability.

A model dir is re-scored when its model.json names the file: `"rescoring": "rescoring.json"`. The rest of the dir
is the base model's, loaded by its own backend. The camera a frame comes from picks the thresholds; without one
(a gRPC request naming none) the class's thresholds over all cameras apply."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from services.inference.detectors.base import Detection, Detector

SCHEMA = 1
OTHER_CLASS = "<other>"  # the one-hot slot of every class the site's labels never held


@dataclass(frozen=True)
class FeatureSpec:
    """What a proposal's features are made of: the classes given a slot of their own, how many buckets camera ids
    are hashed into, and how many dimensions of the frame's embedding are used (0: none)."""
    classes: tuple[str, ...]
    camera_buckets: int = 8
    embedding_dims: int = 0

    @property
    def names(self) -> list[str]:
        slots = [*self.classes, OTHER_CLASS]
        return (["score", "logit_score"] + [f"class={c}" for c in slots] + [f"score*class={c}" for c in slots]
                + ["area", "sqrt_area", "log_aspect", "center_x", "center_y", "width", "height"]
                + [f"camera_bucket={b}" for b in range(self.camera_buckets)]
                + [f"embedding_{i}" for i in range(self.embedding_dims)])

    def to_json(self) -> dict:
        return {"classes": list(self.classes), "camera_buckets": self.camera_buckets,
                "embedding_dims": self.embedding_dims}

    @classmethod
    def from_json(cls, content: Mapping) -> "FeatureSpec":
        return cls(tuple(content["classes"]), int(content["camera_buckets"]), int(content["embedding_dims"]))


def camera_bucket(camera_id: str, buckets: int) -> int:
    """A stable bucket of the camera id (sha256, so the same in every process and release)."""
    return int.from_bytes(hashlib.sha256(camera_id.encode()).digest()[:4], "big") % buckets


def proposal_features(detections: Sequence[Detection], width: int, height: int, camera_id: str,
                      embedding: np.ndarray | None, spec: FeatureSpec) -> np.ndarray:
    """[N, len(spec.names)] float64: score and its logit, the class one-hot and its product with the score, the
    box's area (and its root), log aspect ratio, centre, width and height as shares of the frame, the camera's
    bucket one-hot, and the frame's embedding (zeros when the model gave none)."""
    n, slots = len(detections), len(spec.classes) + 1
    out = np.zeros((n, len(spec.names)), np.float64)
    if n == 0:
        return out
    index = {c: i for i, c in enumerate(spec.classes)}
    scores = np.clip(np.array([d.score for d in detections], np.float64), 1e-6, 1 - 1e-6)
    boxes = np.array([d.box for d in detections], np.float64)
    w = np.clip(boxes[:, 2] - boxes[:, 0], 1e-3, None) / max(width, 1)
    h = np.clip(boxes[:, 3] - boxes[:, 1], 1e-3, None) / max(height, 1)
    out[:, 0], out[:, 1] = scores, np.log(scores / (1 - scores))
    rows = np.arange(n)
    slot = np.array([index.get(d.label, slots - 1) for d in detections])
    out[rows, 2 + slot] = 1.0
    out[rows, 2 + slots + slot] = scores
    at = 2 + 2 * slots
    out[:, at:at + 7] = np.stack([w * h, np.sqrt(w * h), np.log(w / h),
                                  (boxes[:, 0] + boxes[:, 2]) / 2 / max(width, 1),
                                  (boxes[:, 1] + boxes[:, 3]) / 2 / max(height, 1), w, h], axis=1)
    at += 7
    if spec.camera_buckets:
        out[:, at + camera_bucket(camera_id, spec.camera_buckets)] = 1.0
    at += spec.camera_buckets
    if spec.embedding_dims and embedding is not None:
        vector = np.asarray(embedding, np.float64).reshape(-1)[:spec.embedding_dims]
        out[:, at:at + len(vector)] = vector
    return out


@dataclass(frozen=True)
class Thresholds:
    """Served iff the re-scored probability >= the threshold of (camera, class), else of the class over all
    cameras, else `default`."""
    default: float
    classes: dict[str, float] = field(default_factory=dict)
    cameras: dict[str, dict[str, float]] = field(default_factory=dict)

    def of(self, camera_id: str, label: str) -> float:
        camera = self.cameras.get(camera_id)
        if camera is not None and label in camera:
            return camera[label]
        return self.classes.get(label, self.default)

    def to_json(self) -> dict:
        return {"default": self.default, "classes": dict(sorted(self.classes.items())),
                "cameras": {c: dict(sorted(t.items())) for c, t in sorted(self.cameras.items())}}

    @classmethod
    def from_json(cls, content: Mapping) -> "Thresholds":
        return cls(float(content["default"]), {k: float(v) for k, v in content.get("classes", {}).items()},
                   {c: {k: float(v) for k, v in t.items()} for c, t in content.get("cameras", {}).items()})


@dataclass(frozen=True)
class Rescoring:
    """A fitted re-scoring stage: standardised features -> logistic regression -> per-camera, per-class
    thresholds. `proposal_threshold` is the base detector's score threshold it was fitted on."""
    spec: FeatureSpec
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    thresholds: Thresholds
    proposal_threshold: float
    extra: dict = field(default_factory=dict)  # what training records beside (l2, seed, sample counts...)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        z = ((features - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def rescore(self, detections: Sequence[Detection], width: int, height: int, camera_id: str = "",
                embedding: np.ndarray | None = None) -> list[Detection]:
        """Every proposal with its re-scored probability as its score (none dropped)."""
        features = proposal_features(detections, width, height, camera_id, embedding, self.spec)
        return [replace(d, score=float(p)) for d, p in zip(detections, self.probabilities(features))]

    def apply(self, detections: Sequence[Detection], width: int, height: int, camera_id: str = "",
              embedding: np.ndarray | None = None) -> list[Detection]:
        """What is served: the re-scored proposals at or above their camera's and class's threshold, best
        first."""
        kept = [d for d in self.rescore(detections, width, height, camera_id, embedding)
                if d.score >= self.thresholds.of(camera_id, d.label)]
        return sorted(kept, key=lambda d: -d.score)

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "kind": "logistic regression on standardised proposal features",
                "features": self.spec.to_json(), "feature_names": self.spec.names,
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), "weights": self.weights.tolist(),
                "bias": self.bias, "thresholds": self.thresholds.to_json(),
                "proposal_threshold": self.proposal_threshold, **self.extra}

    @classmethod
    def from_json(cls, content: Mapping) -> "Rescoring":
        if content.get("schema") != SCHEMA:
            raise ValueError(f"rescoring schema {content.get('schema')!r} is not {SCHEMA}")
        spec = FeatureSpec.from_json(content["features"])
        arrays = [np.asarray(content[k], np.float64) for k in ("mean", "scale", "weights")]
        if any(a.shape != (len(spec.names),) for a in arrays):
            raise ValueError(f"rescoring: mean, scale and weights must each have {len(spec.names)} values")
        known = {"schema", "kind", "features", "feature_names", "mean", "scale", "weights", "bias", "thresholds",
                 "proposal_threshold"}
        return cls(spec, *arrays, float(content["bias"]), Thresholds.from_json(content["thresholds"]),
                   float(content["proposal_threshold"]), {k: v for k, v in content.items() if k not in known})

    @classmethod
    def read(cls, path: Path) -> "Rescoring":
        return cls.from_json(json.loads(Path(path).read_text()))


class RescoredDetector:
    """A base detector (any backend) with the re-scoring stage after its postprocess. Everything else (input
    size, preprocess, the infer queue, the embedding) is the base's, so the frame pipeline runs it as any model.
    `embeddings` says whether frames get the embedding in results; the base may compute one for the features
    alone."""

    def __init__(self, base: Any, rescoring: Rescoring, embeddings: bool = True):
        self.base = base
        self.rescoring = rescoring
        self.name, self.version, self.input_size = base.name, base.version, base.input_size
        self.stretches_frame = getattr(base, "stretches_frame", False)
        self._embeddings = embeddings

    @property
    def inference_precision(self) -> str:
        return self.base.inference_precision

    def preprocess(self, bgr: np.ndarray):
        return self.base.preprocess(bgr)

    def make_infer_queue(self, jobs: int = 0):
        return self.base.make_infer_queue(jobs)

    def infer_request_outputs(self, request) -> dict[str, np.ndarray]:
        return self.base.infer_request_outputs(request)

    def embedding(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        return self.base.embedding(outputs) if self._embeddings else None

    def embed(self, bgr: np.ndarray) -> np.ndarray | None:
        return self.base.embed(bgr) if self._embeddings else None

    def postprocess(self, outputs: dict[str, np.ndarray], info, camera_id: str = "") -> list[Detection]:
        proposals = self.base.postprocess(outputs, info)
        embedding = self.base.embedding(outputs) if self.rescoring.spec.embedding_dims else None
        return self.rescoring.apply(proposals, info.width, info.height, camera_id, embedding)

    def detect(self, bgr: np.ndarray, camera_id: str = "") -> list[Detection]:
        tensor, info = self.preprocess(bgr)
        return self.postprocess(self.base.infer(tensor), info, camera_id)


def postprocess_for_camera(detector: Detector, outputs: dict[str, np.ndarray], info, camera_id: str
                           ) -> list[Detection]:
    """The detector's postprocess, told the frame's camera when it is one whose output depends on it."""
    if isinstance(detector, RescoredDetector):
        return detector.postprocess(outputs, info, camera_id)
    return detector.postprocess(outputs, info)


def detect_for_camera(detector: Detector, bgr: np.ndarray, camera_id: str) -> list[Detection]:
    if isinstance(detector, RescoredDetector):
        return detector.detect(bgr, camera_id)
    return detector.detect(bgr)


def rescoring_file(metadata: Mapping) -> str | None:
    """The re-scoring file a model.json names, if any."""
    name = metadata.get("rescoring") if isinstance(metadata, Mapping) else None
    return str(name) if name else None


def load_rescored(load_base: Callable[..., Any], model_dir: Path, device: str, precision_hint: str | None,
                  rescoring_name: str, embeddings: bool = True) -> RescoredDetector:
    """The base model of the dir, loaded by `load_base` (its backend's load) at the re-scoring's proposal
    threshold, with its embedding when the features use it, behind the re-scoring stage."""
    rescoring = Rescoring.read(Path(model_dir) / rescoring_name)
    base = load_base(Path(model_dir), device, precision_hint, rescoring.proposal_threshold,
                     embeddings=embeddings or rescoring.spec.embedding_dims > 0)
    if rescoring.spec.embedding_dims and getattr(base, "projection", None) is None:
        raise ValueError(f"{model_dir}: the re-scoring uses the embedding, which the base model does not give")
    return RescoredDetector(base, rescoring, embeddings)
