"""The stronger reference that labels the site's frames in place of a person: the served YOLO network (yolov3-tiny,
416x416) with the same weights reshaped to the frame's full 768x576, at score 0.3, the site's classes only
(person, car, bicycle). Used by the scripted annotator (annotator.py) and the training tests' site dataset
(tests/integration/site_footage.py).

A dark frame (mean luma below TARGET_LUMA / DARK_GAIN) is brightened before the reference sees it: every channel
times the gain that brings its mean luma to TARGET_LUMA (the footage's own daytime level, ~120 of 255, gain capped at
MAX_GAIN), then CLAHE on the L channel; a frame lit normally is left as it is. `python -m cli.demo.reference`
measures how close the reference's answers on the /dusk camera's frames come to its answers on the same frames as
filmed: IoU-matched F1 (IoU 0.5, same class; libs/common/box_agreement.py), over 53 frames of the footage (every
15th), each as the camera serves it and ingest stores it (x0.12, H.264, JPEG 85). Measured 2026-11-29:

    brightening                       micro F1   mean F1 per frame   boxes (as filmed: 410)
    none                                0.89          0.89              358
    gain to mean luma 120               0.93          0.93              404
    CLAHE alone                         0.92          0.93              387
    gain, then CLAHE (used)             0.94          0.94              400
    (also tried: gamma 0.45: 0.86; gain to 100 or 140: 0.93, 0.92; the true 1/0.12: 0.93; 99.5th percentile
    to 240: 0.93; gain then CLAHE at clip 2: 0.93)

For scale, the served detector (416x416, score 0.25) agrees with the reference at F1 0.70 on the frames as filmed
and 0.45 on the dusk frames: the reference is the stronger labeller, and the dimming costs the served model most.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REFERENCE_SIZE = (768, 576)  # width, height: vtest.avi's frame
REFERENCE_THRESHOLD = 0.3
SITE_CLASSES = ("person", "car", "bicycle")  # the site's label schema: the reference's other classes are not labelled
TARGET_LUMA = 120.0  # mean grey level of the demo footage as filmed
MAX_GAIN = 12.0
DARK_GAIN = 1.5  # a frame whose luma needs more gain than this is dark, and brightened
BRIGHTEN = "gain+clahe"


def reference_model_dir(base_dir: Path, out: Path, size: tuple[int, int]) -> Path:
    """The base YOLO dir with its network reshaped to `size` (width, height): the same weights seeing the frame
    at a higher resolution (the heads' grids follow the input)."""
    import openvino as ov

    width, height = size
    out.mkdir(parents=True)
    model = ov.Core().read_model(base_dir / "model.xml")
    model.reshape({model.input(0).get_any_name(): [1, 3, height, width]})
    ov.save_model(model, out / "model.xml", compress_to_fp16=False)
    for name in ("labels.txt", "embedding_projection.npy"):
        (out / name).write_bytes((base_dir / name).read_bytes())
    metadata = json.loads((base_dir / "model.json").read_text())
    metadata["input"]["shape"] = [1, 3, height, width]
    (out / "model.json").write_text(json.dumps({**metadata, "name": "reference"}))
    return out


# --- brightening ------------------------------------------------------------------------------------------------

def luma_gain(bgr: np.ndarray, target: float = TARGET_LUMA, max_gain: float = MAX_GAIN) -> float:
    """The gain that brings the frame's mean luma to `target` (never below 1: a bright frame is left alone)."""
    mean = float(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).mean())
    return float(np.clip(target / max(mean, 1e-3), 1.0, max_gain))


def _gain(bgr: np.ndarray) -> np.ndarray:
    return cv2.convertScaleAbs(bgr, alpha=luma_gain(bgr))


def _clahe(bgr: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)


BRIGHTENINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda bgr: bgr,
    "gain": _gain,
    "clahe": _clahe,
    "gain+clahe": lambda bgr: _clahe(_gain(bgr)),
}


# --- the reference ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Box:
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    score: float

    def json(self) -> dict:
        return {"label": self.label, "x1": round(self.x1, 1), "y1": round(self.y1, 1), "x2": round(self.x2, 1),
                "y2": round(self.y2, 1)}


class Reference:
    """The reference detector; `boxes(bgr)` answers for one frame (brightened first, see BRIGHTENINGS)."""

    def __init__(self, detector, classes: tuple[str, ...] = SITE_CLASSES, brighten: str = BRIGHTEN) -> None:
        self.detector = detector
        self.classes = classes
        self.brighten = BRIGHTENINGS[brighten]
        self.brightening = brighten

    @classmethod
    def load(cls, base_dir: Path | None = None, classes: tuple[str, ...] = SITE_CLASSES,
             brighten: str = BRIGHTEN, size: tuple[int, int] = REFERENCE_SIZE,
             threshold: float = REFERENCE_THRESHOLD) -> "Reference":
        """The served detector's dir (the cache's default model when None) reshaped to `size`, compiled in f32."""
        from services.inference.detectors.yolo import YoloDetector

        if base_dir is None:
            from tools.darknet_converter import ensure_default_model
            base_dir = ensure_default_model()
        with tempfile.TemporaryDirectory(prefix="vigil-reference-") as work:
            detector = YoloDetector.load(reference_model_dir(Path(base_dir), Path(work) / "reference", size),
                                         precision_hint="f32", score_threshold=threshold, embeddings=False)
        return cls(detector, classes, brighten)

    def boxes(self, bgr: np.ndarray, brighten: bool = True) -> list[Box]:
        """The site's objects the reference finds in the frame, brightened first when it is dark."""
        seen = self.brighten(bgr) if brighten and luma_gain(bgr) > DARK_GAIN else bgr
        height, width = bgr.shape[:2]
        out = []
        for d in self.detector.detect(seen):
            if d.label not in self.classes:
                continue
            x1, y1, x2, y2 = (float(v) for v in d.box)
            out.append(Box(d.label, max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2),
                           float(d.score)))
        return out

    def boxes_of_jpeg(self, jpeg: bytes) -> list[Box]:
        bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError("the image is not a JPEG OpenCV decodes")
        return self.boxes(bgr)


def as_detections(boxes: list[Box]) -> list:
    from protos import events_pb2

    return [events_pb2.Detection(label=b.label, score=b.score, box=events_pb2.Box(x1=b.x1, y1=b.y1, x2=b.x2, y2=b.y2))
            for b in boxes]


def agreement(a: list[Box], b: list[Box]):
    """IoU-matched F1 (0.5, same class) of two answers for one frame: the queue's own measure."""
    from libs.common.box_agreement import box_agreement

    return box_agreement(as_detections(a), as_detections(b))


# --- measuring the brightenings on the dusk camera's frames --------------------------------------------------------

def dusk_frame_pairs(cache: Path, step: int = 15, jpeg_quality: int = 85) -> Iterator[tuple[int, np.ndarray,
                                                                                              np.ndarray]]:
    """(index, the frame as filmed, the same frame as the /dusk camera serves it and ingest stores it)."""
    from cli.stack.camera import dusk_footage_path, encode_footage, fetch_footage

    encode_footage(cache)
    filmed, dusk = cv2.VideoCapture(str(fetch_footage(cache))), cv2.VideoCapture(str(dusk_footage_path(cache)))
    try:
        index = 0
        while True:
            ok_filmed, frame = filmed.read()
            ok_dusk, dark = dusk.read()
            if not (ok_filmed and ok_dusk):
                return
            if index % step == 0:
                jpeg = cv2.imencode(".jpg", dark, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])[1]
                yield index, frame, cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
            index += 1
    finally:
        filmed.release()
        dusk.release()


def measure(reference: Reference, cache: Path, methods: tuple[str, ...] = tuple(BRIGHTENINGS)) -> dict[str, dict]:
    """For each brightening: the reference's answers on the dusk frames against its answers on the same frames as
    filmed (micro F1 over all boxes, mean F1 per frame, boxes found)."""
    matched = {m: 0 for m in methods}
    total = {m: 0 for m in methods}
    found = {m: 0 for m in methods}
    per_frame: dict[str, list[float]] = {m: [] for m in methods}
    truth_boxes = frames = 0
    for _index, frame, dark in dusk_frame_pairs(cache):
        truth = reference.boxes(frame, brighten=False)
        truth_boxes += len(truth)
        frames += 1
        for method in methods:
            answer = reference.boxes(BRIGHTENINGS[method](dark), brighten=False)
            measured = agreement(truth, answer)
            matched[method] += measured.same_class_matches
            total[method] += len(truth) + len(answer)
            found[method] += len(answer)
            per_frame[method].append(measured.f1)
    return {m: {"micro_f1": 2 * matched[m] / total[m] if total[m] else 1.0,
                "mean_f1": float(np.mean(per_frame[m])), "boxes": found[m], "undimmed_boxes": truth_boxes,
                "frames": frames} for m in methods}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="How close the reference's answers on the /dusk camera's frames, "
                                                 "brightened each way, come to its answers on the frames as filmed")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    from libs.common.cache_dir import default_cache_dir

    cache = args.cache_dir or default_cache_dir()
    from tools.darknet_converter import ensure_default_model

    reference = Reference.load(ensure_default_model(cache))
    for method, figures in measure(reference, cache).items():
        print(f"{method:12s} micro F1 {figures['micro_f1']:.2f}  mean F1 {figures['mean_f1']:.2f}  "
              f"boxes {figures['boxes']} (undimmed {figures['undimmed_boxes']}, {figures['frames']} frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
