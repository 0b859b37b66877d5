"""Detector backends as plugins: a model dir's model.json names its `kind` ("yolo" when it names none), and
`DETECTOR_KINDS` maps each kind to the backend that loads such a dir. Adding a backend is adding a module
(a `StagedDetector` with `load`) and one line here."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from services.inference.detectors import centerface, rescored, ssdlite_person, yolo
from services.inference.detectors.base import Detection, Detector

__all__ = ["DETECTOR_KINDS", "Detection", "Detector", "UnknownModelKind", "detector_loader", "model_kind"]

# model.json "kind" -> the loader of such a dir: (dir, device, precision hint, default score threshold, and by
# keyword whether to compile in the embedding when the dir has a projection).
DETECTOR_KINDS: dict[str, Callable[..., Detector]] = {
    yolo.KIND: yolo.YoloDetector.load,
    ssdlite_person.KIND: ssdlite_person.PersonDetectorSSDLite.load,
    centerface.KIND: centerface.FaceDetectorCenterFace.load,
}


class UnknownModelKind(ValueError):
    """A model dir whose model.json names a kind no backend exists for."""


class UnreadableModelDir(ValueError):
    """A model dir without a readable model.json."""


def model_kind(model_dir: Path) -> str:
    """The kind named by the dir's model.json ("yolo" when it names none)."""
    try:
        metadata = json.loads((Path(model_dir) / "model.json").read_text())
    except (OSError, ValueError) as exc:
        raise UnreadableModelDir(f"{model_dir}: cannot read model.json: {exc}") from exc
    kind = metadata.get("kind", yolo.KIND) if isinstance(metadata, dict) else None
    if kind not in DETECTOR_KINDS:
        raise UnknownModelKind(f"{model_dir}: model.json names kind {kind!r}, which this server cannot load "
                               f"(known kinds: {', '.join(DETECTOR_KINDS)})")
    return kind


def detector_loader(device: str, precision_hint: str | None, score_threshold: float, embeddings: bool = True
                    ) -> Callable[[Path], Detector]:
    """Loads a model dir with the backend its model.json's `kind` names (behind its re-scoring stage when
    model.json names one, see rescored.py). score_threshold is the default for models whose model.json states
    none of its own; embeddings: give each frame the model's embedding where the dir has a projection (see
    embedding.py)."""
    def load(model_dir: Path) -> Detector:
        backend = DETECTOR_KINDS[model_kind(model_dir)]
        rescoring = rescored.rescoring_file(json.loads((Path(model_dir) / "model.json").read_text()))
        if rescoring:
            return rescored.load_rescored(backend, Path(model_dir), device, precision_hint, rescoring, embeddings)
        return backend(Path(model_dir), device, precision_hint, score_threshold, embeddings=embeddings)

    return load
