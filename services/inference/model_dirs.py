"""Where the service finds the two models it starts with when no dir is configured: the default detector and the
sensor anomaly model, in the cache, as the install step builds them (`vigil install`, the image build; the
builders are tools/darknet_converter.py and tools/sensor_anomaly_training.py). The service never builds a model
itself: a missing one is an error that says how to build it."""
from __future__ import annotations

import hashlib
from pathlib import Path

from libs.common.cache_dir import default_cache_dir
from services.inference.sensors import features

DEFAULT_DETECTOR_NAME = "yolov3-tiny"
# Bump when the converter's output changes, so caches holding an older conversion are rebuilt, not reused.
DEFAULT_DETECTOR_VERSION = "1"
# The code a sensor anomaly model is built by: its dir carries a hash of these files, so a changed generator,
# feature or training is never served a model the old code built.
SENSOR_MODEL_CODE = (Path(features.__file__),
                     Path(__file__).resolve().parents[2] / "tools" / "sensor_anomaly_training.py")
INSTALL_HINT = "run `vigil install` (or set the model dir setting to a built model dir)"


class ModelNotBuilt(FileNotFoundError):
    """A model dir the service expects has not been built."""


def cache_dir_or_default(cache_dir: Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def default_detector_dir(cache_dir: Path | None = None) -> Path:
    """`cache_dir/models/yolov3-tiny/<version>`; cache_dir defaults to $VIGIL_CACHE_DIR or ~/.cache/vigil."""
    return cache_dir_or_default(cache_dir) / "models" / DEFAULT_DETECTOR_NAME / DEFAULT_DETECTOR_VERSION


def sensor_anomaly_model_dir(cache_dir: Path | None = None) -> Path:
    """`cache_dir/models/sensor-anomaly/<version>-<hash of the code that builds it>`."""
    digest = hashlib.sha256()
    for path in SENSOR_MODEL_CODE:
        digest.update(path.read_bytes() if path.is_file() else b"")
    return (cache_dir_or_default(cache_dir) / "models" / features.MODEL_NAME
            / f"{features.MODEL_VERSION}-{digest.hexdigest()[:12]}")


def built(model_dir: Path, what: str) -> Path:
    """`model_dir` if a model was built there (its model.json is written last), else ModelNotBuilt."""
    if not (Path(model_dir) / "model.json").is_file():
        raise ModelNotBuilt(f"the {what} is not built at {model_dir}: {INSTALL_HINT}")
    return Path(model_dir)
