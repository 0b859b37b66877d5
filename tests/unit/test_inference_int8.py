"""INT8 through NNCF on the real default model: calibrated on 64 footage frames, accepted only when it keeps
at least 95% of the FP32 detections (same label, IoU-matched) on held-out frames; the figure is recorded."""
from __future__ import annotations

import json

import openvino as ov
import pytest

from services.inference.detectors.base import Detection
from services.inference.detectors.yolo import YoloDetector
from tools.quantize import (
    CALIBRATION_FRAMES, HELD_OUT_FRAMES, QuantizationRejected, footage_frames, kept_detections, quantize_detector,
)


def det(label: str, box, score: float = 0.9) -> Detection:
    return Detection(label=label, class_id=0, score=score, box=tuple(float(v) for v in box))


def test_a_detection_is_kept_only_by_a_same_label_box_that_overlaps_enough_and_only_once():
    reference = [det("person", (0, 0, 10, 20)), det("person", (1, 0, 11, 20), 0.8), det("car", (50, 50, 90, 80))]
    candidate = [det("person", (0, 1, 10, 21)), det("truck", (50, 50, 90, 80)), det("person", (100, 100, 110, 120))]
    # One person matched (the second reference person cannot reuse it), the car is a truck now.
    assert kept_detections(reference, candidate) == 1
    assert kept_detections(reference, reference) == 3
    assert kept_detections([], candidate) == 0


@pytest.fixture(scope="module")
def vtest(opencv_samples_dir):
    return opencv_samples_dir / "vtest.avi"


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory, yolov3_tiny_model_dir, vtest):
    out = tmp_path_factory.mktemp("int8") / "1-int8"
    quantize_detector(yolov3_tiny_model_dir, footage_frames(vtest, CALIBRATION_FRAMES),
                      footage_frames(vtest, HELD_OUT_FRAMES), out, calibration_source="vtest.avi")
    return out


def test_the_int8_variant_keeps_95_percent_of_fp32_detections_on_held_out_frames_and_says_so(int8_dir):
    assert not set(CALIBRATION_FRAMES) & set(HELD_OUT_FRAMES)
    metadata = json.loads((int8_dir / "model.json").read_text())
    assert metadata["name"] == "yolov3-tiny" and metadata["version"] == "1-int8" and metadata["precision"] == "int8"
    assert metadata["lineage"]["parent"] == "yolov3-tiny:1"
    assert metadata["calibration"]["frames"] == 64
    metrics = metadata["metrics"]
    assert metrics["held_out_frames"] == len(HELD_OUT_FRAMES) and metrics["fp32_detections"] > 100
    assert metrics["kept_share"] >= 0.95
    assert metrics["kept_share"] == round(metrics["kept_detections"] / metrics["fp32_detections"], 4)


def test_the_int8_model_really_runs_in_int8_and_finds_the_persons(int8_dir, vtest):
    detector = YoloDetector.load(int8_dir)
    runtime = detector.compiled_model.get_runtime_model()
    convolutions = [op.get_rt_info()["runtimePrecision"].astype(str) for op in runtime.get_ops()
                    if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
    assert convolutions and all(p in ("u8", "i8") for p in convolutions), convolutions
    frame = footage_frames(vtest, [HELD_OUT_FRAMES[0]])[0]
    assert sum(1 for d in detector.detect(frame) if d.label == "person") >= 3


def test_a_variant_below_the_threshold_is_rejected_and_nothing_is_written(yolov3_tiny_model_dir, vtest, tmp_path):
    frames = footage_frames(vtest, [0, 100, 200, 300])
    with pytest.raises(QuantizationRejected, match="keeps"):
        quantize_detector(yolov3_tiny_model_dir, frames[:2], frames[2:], tmp_path / "rejected", min_kept_share=1.01)
    assert not (tmp_path / "rejected").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_openvino_reads_the_saved_int8_ir(int8_dir):
    model = ov.Core().read_model(int8_dir / "model.xml")
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
