"""Output-statistics features of an inference result, the label-free performance estimate, primary-vs-shadow
disagreement, and the cost per event."""
from __future__ import annotations

import time

import numpy as np
import pytest

from services.drift.features import (
    Calibration, InferenceColumns, InferenceOutput, ShadowPairing, disagreement, performance_estimate,
    record_image_statistics, record_inference, record_inferences, record_sensor_score)
from services.drift.windows import DriftKey, WindowAccumulator

LOBBY = DriftKey("camera/lobby", "yolov3-tiny", "1")


def output(*detections, embedding=None) -> InferenceOutput:
    """detections as (label, score, (x1, y1, x2, y2)) on a 100 x 50 frame."""
    return InferenceOutput([d[0] for d in detections], [d[1] for d in detections], [d[2] for d in detections],
                           100, 50, embedding)


def test_an_inference_result_becomes_frame_and_detection_features():
    window = WindowAccumulator(LOBBY, 0, 60)
    record_inference(window, output(("person", 0.9, (0, 0, 10, 20)), ("car", 0.4, (10, 10, 50, 30)),
                                    ("person", 0.6, (0, 0, 5, 5)), embedding=[1.0, 2.0]))
    record_inference(window, output())
    summary = window.summary()
    assert summary.frames == 2
    assert summary.numeric["output.detections"].values.tolist() == [3, 0]
    assert summary.categorical["output.empty"] == {"objects": 1, "empty": 1}
    assert summary.categorical["output.class"] == {"person": 2, "car": 1}
    assert summary.numeric["output.score"].values.tolist() == pytest.approx([0.9, 0.4, 0.6])
    assert summary.numeric["output.score.person"].values.tolist() == pytest.approx([0.9, 0.6])
    assert summary.numeric["output.box_area"].values.tolist() == pytest.approx([200 / 5000, 800 / 5000, 25 / 5000])
    assert summary.numeric["output.aspect_ratio"].values.tolist() == pytest.approx([0.5, 2.0, 1.0])
    assert summary.numeric["output.box_center_x"].values.tolist() == pytest.approx([0.05, 0.3, 0.025])
    assert summary.numeric["output.box_center_y"].values.tolist() == pytest.approx([0.2, 0.4, 0.05])
    assert summary.numeric["output.top_score"].values.tolist() == pytest.approx([0.9])
    assert summary.embeddings.values.tolist() == [[1.0, 2.0]]
    estimate = performance_estimate(summary.totals)
    assert estimate == pytest.approx({"performance.expected_precision": (0.9 + 0.4 + 0.6) / 3,
                                      "performance.mean_top_score": 0.9,
                                      "performance.low_confidence_share": 1 / 3})


def test_the_expected_precision_uses_the_calibration_when_there_is_one():
    window = WindowAccumulator(LOBBY, 0, 60)
    calibration = Calibration((0.0, 0.5, 1.0), (0.0, 0.2, 0.6))  # an over-confident detector
    record_inference(window, output(("person", 0.5, (0, 0, 1, 1)), ("person", 1.0, (0, 0, 1, 1))),
                     calibration=calibration)
    assert performance_estimate(window.totals)["performance.expected_precision"] == pytest.approx(0.4)


def test_no_detections_give_no_performance_estimate():
    window = WindowAccumulator(LOBBY, 0, 60)
    record_inference(window, output())
    assert performance_estimate(window.totals) == {}


def test_image_statistics_and_sensor_scores_are_features_too():
    window = WindowAccumulator(DriftKey("camera/lobby"), 0, 60)
    record_image_statistics(window, {"mean_luma": 120.0, "sharpness": 30.5})
    assert window.summary().numeric["input.sharpness"].values.tolist() == [30.5]
    sensor = WindowAccumulator(DriftKey("sensor/t-17", "sensor-anomaly", "1"), 0, 60)
    record_sensor_score(sensor, 0.9, True)
    record_sensor_score(sensor, 0.1, False)
    assert sensor.summary().categorical["sensor.anomaly"] == {"anomaly": 1, "normal": 1}


def test_disagreement_is_one_minus_f1_of_matched_detections():
    person, car = ("person", 0.9, (0, 0, 10, 20)), ("car", 0.8, (20, 0, 40, 10))
    assert disagreement(output(person, car), output(person, car)) == 0.0
    assert disagreement(output(), output()) == 0.0
    assert disagreement(output(person), output()) == 1.0
    assert disagreement(output(person, car), output(person)) == pytest.approx(1 - 2 * 1 / 3)
    assert disagreement(output(person), output(("car", 0.9, (0, 0, 10, 20)))) == 1.0  # same box, other class
    assert disagreement(output(person), output(("person", 0.9, (8, 0, 18, 20)))) == 1.0  # IoU 0.11


def test_primary_and_shadow_results_meet_in_either_order():
    pairing = ShadowPairing(capacity=2)
    person = ("person", 0.9, (0, 0, 10, 20))
    assert pairing.offer("f1", output(person), shadow=True) is None
    assert pairing.offer("f1", output(person), shadow=False, context="primary key") == ("primary key", 0.0)
    assert pairing.offer("f2", output(person), shadow=False, context="k2") is None
    assert pairing.offer("f2", output(), shadow=True) == ("k2", 1.0)
    for frame in ("f3", "f4", "f5"):
        pairing.offer(frame, output(), shadow=False)
    assert pairing.forgotten == 1 and pairing.offer("f3", output(), shadow=True) is None


def test_recording_inference_results_a_run_at_a_time_is_cheap():
    rng = np.random.default_rng(0)
    outputs = [output(*[(("person", "car")[i % 2], float(score), (0, 0, 30, 60))
                        for i, score in enumerate(rng.uniform(0.3, 1, 5))],
                      embedding=rng.normal(size=64).astype(np.float32)) for _ in range(100)]
    columns = InferenceColumns.of(outputs)
    window = WindowAccumulator(LOBBY, 0, 60)
    started = time.process_time()
    for _ in range(20):
        record_inferences(window, columns)
    per_event = (time.process_time() - started) / 2000
    # generous for a shared 2-core box: the service's budget is 50 us per event for everything
    assert per_event < 20e-6, f"{per_event * 1e6:.1f} us per inference event"
    assert window.frames == 2000 and window.numeric["output.score"].seen == 10_000
