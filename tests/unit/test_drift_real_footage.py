"""The drift core on real footage and the real default model (heavy: it needs the demo clip and yolov3-tiny from the
asset cache): the clip looped as a stable control never alerts, and each drift the evaluation harness injects
(dusk, defocus, a knocked camera, half the view covered, a 10 degree rotation) alerts within K windows of its start,
on the camera's image statistics and on the model's outputs and embeddings alike. The frames are fed straight to
the core, so this checks the statistics and their thresholds, not the pipeline (the integration test does that)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.drift.features import InferenceOutput, record_image_statistics, record_inference
from services.drift.monitor import DriftMonitor, DriftPolicy
from services.drift.windows import DriftKey
from services.inference.detectors.yolo import YoloDetector
from services.ingest.image_stats import image_stats
from tests.drift_injections import injected

WINDOW_S = 20.0  # windows shortened, as the harness may: 100 frames each at 5 fps
FPS = 5.0
REFERENCE_WINDOWS = 5
CONTROL_WINDOWS = 40
DRIFT_WINDOWS = 4
RAISE_AFTER = 3
CAMERA = DriftKey("camera/demo")
MODEL = DriftKey("camera/demo", "yolov3-tiny", "1")


def image_statistics(bgr: np.ndarray) -> dict[str, float]:
    """What ingest carries in each Frame, by name, as the drift processor records it."""
    stats = image_stats(bgr)
    return {field.name: getattr(stats, field.name) for field in stats.DESCRIPTOR.fields}


VARIANTS = ("normal", "dusk", "defocus", "knocked", "covered", "rotated")


@pytest.fixture(scope="module")
def observations(opencv_samples_dir, yolov3_tiny_model_dir):
    """Per variant, per frame of the clip at 5 fps: (image statistics, the model's output)."""
    detector = YoloDetector.load(yolov3_tiny_model_dir)
    capture = cv2.VideoCapture(str(opencv_samples_dir / "vtest.avi"))  # 10 fps: every other frame
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    found = {}
    for variant in VARIANTS:
        seen = []
        for frame in frames[::2]:
            shown = injected(variant, frame)
            tensor, info = detector.preprocess(shown)
            outputs = detector.infer(tensor)
            detections = detector.postprocess(outputs, info)
            seen.append((image_statistics(shown), InferenceOutput(
                [d.label for d in detections], [d.score for d in detections], [d.box for d in detections],
                shown.shape[1], shown.shape[0], detector.embedding(outputs))))
        found[variant] = seen
    return found


def monitored(observations, drift: str) -> list:
    """The clip as a camera: the reference, CONTROL_WINDOWS stable windows, DRIFT_WINDOWS drifted, one stable."""
    monitor = DriftMonitor(DriftPolicy(window_s=WINDOW_S, grace_s=0.0, reference_windows=REFERENCE_WINDOWS,
                                       raise_after=RAISE_AFTER))
    start = REFERENCE_WINDOWS + CONTROL_WINDOWS  # the drift's first window
    frames = int((start + DRIFT_WINDOWS + 1) * WINDOW_S * FPS)
    outcomes = []
    for i in range(frames):
        t = i / FPS
        variant = drift if start * WINDOW_S <= t < (start + DRIFT_WINDOWS) * WINDOW_S else "normal"
        statistics, output = observations[variant][i % len(observations[variant])]
        record_image_statistics(monitor.window_for(CAMERA, t), statistics)
        record_inference(monitor.window_for(MODEL, t), output)
        outcomes += monitor.take_outcomes(now=t)
    return outcomes


@pytest.mark.parametrize("drift", VARIANTS[1:])
def test_the_stable_clip_never_alerts_and_an_injected_drift_alerts_within_k_windows(observations, drift):
    start = REFERENCE_WINDOWS + CONTROL_WINDOWS
    outcomes = monitored(observations, drift)
    for key in (CAMERA, MODEL):
        mine = [o for o in outcomes if o.window.key == key]
        control = [o for o in mine if o.window.start < start * WINDOW_S]
        assert sum(o.verdict.status == "compared" for o in control) >= CONTROL_WINDOWS
        assert [o.window.start for o in control if o.decision] == [], f"{key}: alert on the stable clip"
        raised = [int(o.window.start // WINDOW_S) - start for o in mine if o.decision and o.decision.action == "raise"]
        assert raised and raised[0] < RAISE_AFTER, f"{key}: {drift} alerted at drift window {raised}"


def test_a_turned_camera_is_alerted_on_its_input_by_the_edge_orientation(observations):
    """The mirrored edges of the turned view leave exposure, luma and colour as they were: the orientation of the
    edges is what moved (the sharpness a little too, from the warp's interpolation, which a real camera lacks)."""
    raised = [o for o in monitored(observations, "rotated") if o.window.key == CAMERA and o.decision
              and o.decision.action == "raise"]
    assert raised, "the rotation raised no alert on the camera's input"
    assert "input.edge_orientation" in [r.feature for r in raised[0].decision.features], raised[0].decision.features
