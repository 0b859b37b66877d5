import numpy as np

from services.ingest.frame_shaping import MotionGate, apply_roi, fit_within


def frame(value=0, shape=(120, 160, 3)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


def test_roi_keeps_only_the_regions():
    image = frame(200)
    masked = apply_roi(image, ((0.0, 0.0, 0.5, 0.5),))
    assert masked[:60, :80].min() == 200 and masked[60:, :].max() == 0 and masked[:, 80:].max() == 0


def test_no_roi_leaves_the_frame_alone():
    image = frame(7)
    assert apply_roi(image, ()) is image


def test_fit_within_downscales_keeping_the_aspect_ratio_and_never_upscales():
    assert fit_within(frame(shape=(720, 1280, 3)), 640, 0).shape == (360, 640, 3)
    assert fit_within(frame(shape=(720, 1280, 3)), 0, 180).shape == (180, 320, 3)
    assert fit_within(frame(shape=(100, 100, 3)), 640, 480).shape == (100, 100, 3)


def test_motion_gate_skips_static_frames_and_counts_them():
    gate = MotionGate(min_changed_fraction=0.02)
    still = frame(100, (240, 320, 3))
    assert gate.keep(still)
    assert not gate.keep(still.copy())
    noisy = (still.astype(np.int16) + np.random.default_rng(0).integers(-8, 8, still.shape)).astype(np.uint8)
    assert not gate.keep(noisy), "sensor noise is not motion"
    moved = still.copy()
    moved[50:150, 50:150] = 255
    assert gate.keep(moved)
    assert gate.skipped == 2


def test_motion_gate_off_keeps_everything():
    gate = MotionGate(0.0)
    assert all(gate.keep(frame(1)) for _ in range(3)) and gate.skipped == 0
