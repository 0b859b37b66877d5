"""INT8 variants of a detector through NNCF post-training quantization, accepted only if they keep the
FP32 model's detections.

Calibration runs on sample frames; acceptance is measured on other (held-out) frames: the share of the FP32
model's detections that the INT8 model also finds (same label, IoU >= 0.5, one-to-one). Below the threshold
the variant is rejected and nothing is written.

    python -m tools.quantize --model DIR --footage vtest.avi --out DIR
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import openvino as ov

from services.inference.detectors.base import Detection
from services.inference.detectors.yolo import YoloDetector

ACCEPT_KEPT_SHARE = 0.95
MATCH_IOU = 0.5


def network_input(bgr: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """The converted network's own input for a BGR frame: [1, 3, h, w] RGB float32 in 0..1, resized plainly
    (no letterbox), the very call darknet-trained models are usually run with in OpenCV. Calibration works on
    the network itself; served models take frames through the detector's compiled-in conversion."""
    return cv2.dnn.blobFromImage(bgr, 1 / 255.0, input_size, swapRB=True, crop=False)


class QuantizationRejected(RuntimeError):
    pass


@dataclass(frozen=True)
class Agreement:
    reference: int  # detections of the FP32 model on the held-out frames
    kept: int       # of those, found by the candidate too

    @property
    def kept_share(self) -> float:
        return self.kept / self.reference if self.reference else 1.0


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def kept_detections(reference: Sequence[Detection], candidate: Sequence[Detection], min_iou: float = MATCH_IOU) -> int:
    """How many reference detections have a candidate of the same label at IoU >= min_iou (greedy, best
    reference score first, each candidate used once)."""
    unused = list(candidate)
    kept = 0
    for ref in sorted(reference, key=lambda d: -d.score):
        best, best_iou = None, min_iou
        for cand in unused:
            if cand.label == ref.label and (overlap := iou(ref.box, cand.box)) >= best_iou:
                best, best_iou = cand, overlap
        if best is not None:
            unused.remove(best)
            kept += 1
    return kept


def agreement(reference: YoloDetector, candidate: YoloDetector, frames: Sequence[np.ndarray]) -> Agreement:
    total = kept = 0
    for frame in frames:
        ref = reference.detect(frame)
        total += len(ref)
        kept += kept_detections(ref, candidate.detect(frame))
    return Agreement(total, kept)


def footage_frames(path: Path, indices: Sequence[int]) -> list[np.ndarray]:
    wanted, frames = set(indices), []
    capture = cv2.VideoCapture(str(path))
    for index in range(max(indices) + 1):
        ok, image = capture.read()
        if not ok:
            raise ValueError(f"{path} has only {index} frames; frame {max(indices)} was asked for")
        if index in wanted:
            frames.append(image)
    return frames


# vtest.avi has 795 frames: calibrate on the first half, judge on the second.
CALIBRATION_FRAMES = tuple(range(0, 384, 6))       # 64 frames
HELD_OUT_FRAMES = tuple(range(400, 795, 10))        # 40 frames


def quantize_detector(model_dir: Path, calibration: Sequence[np.ndarray], held_out: Sequence[np.ndarray],
                      out: Path, calibration_source: str = "", min_kept_share: float = ACCEPT_KEPT_SHARE) -> dict:
    """Writes the INT8 model dir `out` (model.xml/.bin, labels, model.json with lineage and the measured
    agreement) and returns its metadata; raises QuantizationRejected if it loses too many detections."""
    import nncf  # imported here: only building a variant needs it (it is slow to import)

    model_dir, out = Path(model_dir), Path(out)
    fp32 = YoloDetector.load(model_dir, precision_hint="f32", performance_hint="LATENCY")
    model = ov.Core().read_model(model_dir / "model.xml")
    dataset = nncf.Dataset(list(calibration), lambda frame: network_input(frame, fp32.input_size))
    quantized = nncf.quantize(model, dataset, subset_size=len(calibration),
                              model_type=None, preset=nncf.QuantizationPreset.PERFORMANCE)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        ov.save_model(quantized, staging / "model.xml", compress_to_fp16=False)
        metadata = json.loads((model_dir / "model.json").read_text())
        labels = metadata.get("labels", "labels.txt")
        shutil.copyfile(model_dir / labels, staging / labels)
        if (projection := metadata.get("embedding", {}).get("projection")) and (model_dir / projection).is_file():
            shutil.copyfile(model_dir / projection, staging / projection)  # the same feature, the same embedding
        parent_version = str(metadata["version"])
        metadata.update({"version": f"{parent_version}-int8", "precision": "int8"})
        (staging / "model.json").write_text(json.dumps(metadata))
        # Both in f32 arithmetic, so the comparison measures the quantization alone.
        int8 = YoloDetector.load(staging, precision_hint="f32", performance_hint="LATENCY")
        measured = agreement(fp32, int8, held_out)
        metadata.update({
            "lineage": {"parent": f"{metadata['name']}:{parent_version}", "method": f"nncf {nncf.__version__} "
                        "post-training quantization, preset performance"},
            "calibration": {"source": calibration_source, "frames": len(calibration)},
            "metrics": {"held_out_frames": len(held_out), "fp32_detections": measured.reference,
                        "kept_detections": measured.kept, "kept_share": round(measured.kept_share, 4),
                        "match": f"same label, IoU >= {MATCH_IOU}"},
        })
        if measured.kept_share < min_kept_share:
            raise QuantizationRejected(f"INT8 keeps {measured.kept_share:.1%} of the FP32 detections "
                                       f"({measured.kept}/{measured.reference}) < {min_kept_share:.0%}")
        (staging / "model.json").write_text(json.dumps(metadata, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return metadata


def ensure_int8_model(model_dir: Path, footage: Path) -> Path:
    """The INT8 variant beside `model_dir` (`<version>-int8`), built once from the footage if missing."""
    out = Path(model_dir).parent / f"{Path(model_dir).name}-int8"
    if not (out / "model.json").is_file():
        quantize_detector(model_dir, footage_frames(footage, CALIBRATION_FRAMES),
                          footage_frames(footage, HELD_OUT_FRAMES), out,
                          calibration_source=f"{footage.name} frames {CALIBRATION_FRAMES[0]}.."
                                             f"{CALIBRATION_FRAMES[-1]} every {CALIBRATION_FRAMES[1]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the FP32 model dir")
    parser.add_argument("--footage", type=Path, required=True, help="video to calibrate on and judge with")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        metadata = quantize_detector(args.model, footage_frames(args.footage, CALIBRATION_FRAMES),
                                     footage_frames(args.footage, HELD_OUT_FRAMES), args.out,
                                     calibration_source=str(args.footage.name))
    except QuantizationRejected as exc:
        print(f"rejected: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(metadata["metrics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
