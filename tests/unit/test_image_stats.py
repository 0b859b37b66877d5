"""Ingest's image statistics move the way the drifts they are meant to catch move the picture."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.ingest.frames import FrameEventBuilder
from services.ingest.image_stats import image_stats


@pytest.fixture
def scene() -> np.ndarray:
    """A textured colour scene, 768x576 like the demo footage: gradient, edges, noise."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:576, 0:768]
    base = (20 + 160 * x / 768 + 20 * ((x // 32 + y // 32) % 2)).astype(np.float32)
    image = np.stack([base * 0.8, base, base * 0.6 + 40], axis=-1) + rng.normal(0, 8, (576, 768, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def test_dusk_lowers_the_luma_and_raises_the_share_of_underexposed_pixels(scene):
    day, dusk = image_stats(scene), image_stats((scene * 0.3).astype(np.uint8))
    assert dusk.mean_luma == pytest.approx(day.mean_luma * 0.3, rel=0.1)
    assert dusk.contrast < day.contrast * 0.4
    assert day.underexposed_share < 0.01 < 0.1 < dusk.underexposed_share


def test_defocus_collapses_the_sharpness_but_barely_moves_the_luma(scene):
    sharp, blurred = image_stats(scene), image_stats(cv2.GaussianBlur(scene, (0, 0), 3))
    assert blurred.sharpness < sharp.sharpness / 10
    assert blurred.mean_luma == pytest.approx(sharp.mean_luma, rel=0.02)


def test_glare_shows_as_overexposed_pixels(scene):
    glare = scene.copy()
    glare[:, :384] = 255
    assert image_stats(scene).overexposed_share < 0.01
    assert image_stats(glare).overexposed_share == pytest.approx(0.5, abs=0.02)


def test_a_grey_picture_has_no_saturation_and_a_colour_one_has(scene):
    grey = cv2.cvtColor(cv2.cvtColor(scene, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    assert image_stats(grey).saturation < 1 < 20 < image_stats(scene).saturation


def test_the_figures_do_not_depend_on_the_camera_resolution(scene):
    full, half = image_stats(scene), image_stats(cv2.resize(scene, (384, 288), interpolation=cv2.INTER_AREA))
    assert half.mean_luma == pytest.approx(full.mean_luma, rel=0.01)
    assert half.contrast == pytest.approx(full.contrast, rel=0.05)
    assert half.sharpness == pytest.approx(full.sharpness, rel=0.35)


def test_every_frame_event_carries_the_statistics_of_its_pixels(scene):
    frame = FrameEventBuilder("cam-1").build(scene, capture_time_ns=1_700_000_000_000_000_000, time_from_stream=True)
    assert frame.HasField("image_stats")
    assert frame.image_stats.mean_luma == pytest.approx(image_stats(scene).mean_luma)
