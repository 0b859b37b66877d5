"""The serving core shared by every transport: which models are loaded, whether the server is ready, loading
and unloading models from a repository, and running a detector on a request's inputs. The gRPC servicer only
converts wire types and calls this."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from services.inference.core.images import ImageRefused, decode_image
from services.inference.core.model_repository import ModelNotFound, ModelRepository
from services.inference.core.routing import in_canary
from services.inference.detectors import Detector
from services.inference.detectors.rescored import detect_for_camera

SERVER_NAME = "vigil-inference"
SERVER_VERSION = "0.2.0"
EXTENSIONS = ("model_repository", "system_shared_memory")


class InvalidRequest(ValueError):
    """The inputs do not fit the model; the message names the offending input."""


class InputTooLarge(ValueError):
    """An input is bigger than the server accepts; refused before it is decoded."""


class ModelLoadFailed(RuntimeError):
    """The model could not be loaded; whatever was serving before keeps serving."""


class UnloadRefused(RuntimeError):
    pass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size


# A request carries exactly one of the two image inputs.
DETECTOR_INPUTS = (
    TensorSpec("image", "UINT8", (-1, -1, 3)),
    TensorSpec("image_bytes", "BYTES", (1,)),
)
DETECTOR_OUTPUTS = (
    TensorSpec("boxes", "FP32", (-1, 4)),
    TensorSpec("scores", "FP32", (-1,)),
    TensorSpec("classes", "BYTES", (-1,)),
)
DATATYPE_BYTES = {"UINT8": 1, "INT8": 1, "BOOL": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "UINT32": 4, "INT32": 4,
                  "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}


@dataclass(frozen=True)
class ModelIndexEntry:
    name: str
    version: str
    state: str  # READY, UNAVAILABLE, LOADING
    reason: str = ""


ROLLOUT_STAGES = ("shadow", "canary")


@dataclass(frozen=True)
class RolloutSlot:
    """A candidate version of a served model running beside it (a registry rollout): in "shadow" it also sees
    the frames of every camera its model serves; in "canary" it serves `share` of those cameras (by the stable
    hash of routing.py) and the model it stands in for runs as their shadow."""
    stage: str
    candidate: Detector
    share: float


def warm_up(model: Detector) -> None:
    """One inference before a model takes traffic, so the first request is not the slow one."""
    width, height = model.input_size
    model.detect(np.zeros((height, width, 3), np.uint8))


class ModelServer:
    def __init__(self, default_model: Detector, repository: ModelRepository | None = None,
                 max_input_bytes: int = 32 << 20, camera_models: dict[str, str] | None = None,
                 on_status: Callable[[str, str, str, str], None] | None = None,
                 canary_model: str | None = None, canary_share: float = 0.0,
                 shadow_model: str | None = None) -> None:
        for role, name in (("canary", canary_model), ("shadow", shadow_model)):
            if name == default_model.name:
                raise ValueError(f"the {role} model must have another name than the default model "
                                 f"'{name}': loading it would replace the default")
        self.default_model = default_model
        # Cameras routed by a stable hash to the canary model (when loaded); explicit camera_models win.
        self.canary_model, self.canary_share = canary_model, canary_share
        self.shadow_model = shadow_model  # also sees every frame; its results are marked shadow
        # Called with (name, version, state, reason) as a load goes: loading, ready, failed; unloaded.
        self.on_status = on_status or (lambda name, version, state, reason: None)
        self.camera_models = dict(camera_models or {})  # camera id -> model name; others get the default
        self.repository = repository
        self.max_input_bytes = max_input_bytes
        # The candidate rolled out now (None: none), replaced in one assignment; read once per routing decision.
        self.rollout: RolloutSlot | None = None
        self.models: dict[str, Detector] = {default_model.name: default_model}
        self.failures: dict[str, str] = {}  # name -> why its last load failed
        self.loading: set[str] = set()
        self.ready = threading.Event()
        self._lock = threading.Lock()  # guards the three collections above; never held while inferring

    def warm_up(self) -> None:
        for model in list(self.models.values()):
            warm_up(model)
        self.ready.set()

    def model(self, name: str, version: str = "") -> Detector:
        """The model loaded under `name`; with `version`, that version, which may be the candidate rolled out."""
        model = self.models.get(name)
        rollout = self.rollout
        if version and rollout is not None and (rollout.candidate.name, rollout.candidate.version) == (name, version):
            return rollout.candidate
        if model is None or (version and version != model.version):
            raise ModelNotFound(f"model '{name}'{' version ' + version if version else ''} is not loaded; "
                                f"loaded: {', '.join(f'{m.name}:{m.version}' for m in self.models.values())}")
        return model

    def _routed(self, camera_id: str) -> Detector:
        """The camera's model before any rollout: its own if one is set and loaded, else the canary model if
        the camera is in the canary share and it is loaded, else the default."""
        name = self.camera_models.get(camera_id)
        if name is None and self.canary_model and in_canary(camera_id, self.canary_share):
            name = self.canary_model
        if name is not None:
            model = self.models.get(name)
            if model is not None:
                return model
        return self.default_model

    def model_for_camera(self, camera_id: str) -> Detector:
        """The model a camera's frames go through: the camera's model (_routed), unless a canary of a candidate
        version of that model is rolled out and the camera is in its share. Read per frame, so a model loaded
        or swapped meanwhile takes over from the next batch on."""
        model, rollout = self._routed(camera_id), self.rollout
        if (rollout is not None and rollout.stage == "canary" and rollout.candidate.name == model.name
                and in_canary(camera_id, rollout.share)):
            return rollout.candidate
        return model

    def shadow_for_camera(self, camera_id: str) -> Detector | None:
        """The model that also sees this camera's frames, its results marked shadow. While a candidate is rolled
        out it replaces the configured shadow model: in shadow, the candidate for every camera of the model it
        is a version of; in canary, that model (the champion) for the cameras the candidate serves, so their
        disagreement stays measurable. Otherwise the configured shadow model (every camera), if loaded."""
        rollout = self.rollout
        if rollout is None:
            return self.models.get(self.shadow_model) if self.shadow_model else None
        model = self._routed(camera_id)
        if rollout.candidate.name != model.name:
            return None
        if rollout.stage == "shadow":
            return rollout.candidate
        return model if in_canary(camera_id, rollout.share) else None

    def set_rollout(self, stage: str, detector: Detector | None, share: float = 0.0) -> None:
        """Runs `detector` (a candidate version of a served model, loaded and warmed up by the caller) at rollout
        `stage` ("shadow" or "canary" on `share` of the cameras), from the next batch on; None stops it."""
        if detector is None:
            self.rollout = None
            return
        if stage not in ROLLOUT_STAGES:
            raise ValueError(f"rollout stage {stage!r} is not one of {', '.join(ROLLOUT_STAGES)}")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"a canary share is in [0, 1], not {share}")
        self.rollout = RolloutSlot(stage, detector, share)

    # -- the repository extension -------------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        with self._lock:
            loaded = dict(self.models)
            loading, failures = set(self.loading), dict(self.failures)
        available = self.repository.available() if self.repository else {}
        entries = []
        for name in sorted(set(loaded) | set(available)):
            if name in loaded:
                entries.append(ModelIndexEntry(name, loaded[name].version, "READY"))
            elif not ready_only:
                state = "LOADING" if name in loading else "UNAVAILABLE"
                entries.append(ModelIndexEntry(name, available[name], state, failures.get(name, "")))
        return entries

    def load(self, name: str) -> Detector:
        """Loads (or reloads) a model and warms it up beside whatever serves under that name; only then does
        the name point at it, in one assignment. On failure the previous model keeps serving."""
        if self.repository is None:
            raise ModelNotFound(f"model '{name}': this server has no model repository")
        version = (self.repository.available().get(name, "") if self.repository else "")
        with self._lock:
            self.loading.add(name)
        try:
            model = self._load_warm(name, version, lambda: self.repository.load(name), "")
            with self._lock:
                self.models[name] = model
                self.failures.pop(name, None)
                if name == self.default_model.name:
                    self.default_model = model
            self.on_status(name, model.version, "ready", "")
            return model
        finally:
            with self._lock:
                self.loading.discard(name)

    def load_candidate(self, name: str, version: str, load: Callable[[], Detector], role: str) -> Detector:
        """Loads and warms up a candidate version of the served model `name` (for set_rollout), reported as
        the model's status with `role` as the reason (e.g. "rollout shadow"); what serves is not touched."""
        model = self._load_warm(name, version, load, f"; {role}")
        self.on_status(name, model.version, "ready", role)
        return model

    def _load_warm(self, name: str, version: str, load: Callable[[], Detector], role: str) -> Detector:
        """load() and one warm-up inference, reported as loading, then failed (raising ModelLoadFailed); `role`
        ends the reasons of a candidate's load."""
        self.on_status(name, version, "loading", role.removeprefix("; "))
        try:
            model = load()
            warm_up(model)
            return model
        except ModelNotFound:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}{role}"
            if not role:  # the name's own load: the repository index tells why it failed
                with self._lock:
                    self.failures[name] = reason
            serving = self.models.get(name)
            self.on_status(name, version, "failed", reason + (f"; version {serving.version} keeps serving"
                                                              if serving else ""))
            raise ModelLoadFailed(f"model '{name}'{' version ' + version if role else ''} failed to load: {exc}"
                                  ) from exc

    def unload(self, name: str) -> None:
        with self._lock:
            if name not in self.models:
                raise ModelNotFound(f"model '{name}' is not loaded")
            if name == self.default_model.name:
                raise UnloadRefused(f"model '{name}' is the default model and stays loaded")
            model = self.models.pop(name)
        self.on_status(name, model.version, "unloaded", "")

    # -- inference -----------------------------------------------------------------------------------------

    def check_input_size(self, name: str, datatype: str, shape: list[int]) -> None:
        """Refuses an input whose declared size exceeds the limit, before its contents are touched."""
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        size = count * DATATYPE_BYTES.get(datatype, 1)
        if size > self.max_input_bytes:
            raise InputTooLarge(f"input '{name}': {datatype} {shape} is {size} bytes > limit {self.max_input_bytes}")

    def image_of(self, inputs: dict[str, tuple[str, np.ndarray]]) -> np.ndarray:
        """The BGR image of a request, from `image` or from `image_bytes` (a JPEG or PNG)."""
        given = [name for name in ("image", "image_bytes") if name in inputs]
        unknown = sorted(set(inputs) - {"image", "image_bytes"})
        if unknown:
            raise InvalidRequest(f"unexpected input '{unknown[0]}' (expected 'image' or 'image_bytes')")
        if len(given) != 1:
            raise InvalidRequest(f"expected exactly one of the inputs 'image' or 'image_bytes', "
                                 f"got {', '.join(repr(g) for g in given) or 'none'}")
        name = given[0]
        datatype, value = inputs[name]
        if name == "image_bytes":
            if datatype != "BYTES":
                raise InvalidRequest(f"input 'image_bytes' must be BYTES, got {datatype}")
            if value.shape != (1,):
                raise InvalidRequest(f"input 'image_bytes' must have shape [1] (one encoded image), "
                                     f"got {list(value.shape)}")
            try:
                return decode_image(bytes(value[0]), self.max_input_bytes, what="input 'image_bytes'")
            except ImageRefused as refused:
                if refused.reason.startswith("oversized"):
                    raise InputTooLarge(str(refused)) from None
                raise InvalidRequest(str(refused)) from None
        if datatype != "UINT8":
            raise InvalidRequest(f"input 'image' must be UINT8, got {datatype}")
        if value.ndim != 3 or value.shape[2] != 3 or value.shape[0] == 0 or value.shape[1] == 0:
            raise InvalidRequest(f"input 'image' must have shape [H, W, 3] (BGR), got {list(value.shape)}")
        return np.ascontiguousarray(value)

    def detect(self, name: str, version: str, inputs: dict[str, tuple[str, np.ndarray]], camera_id: str = ""
               ) -> tuple[Detector, dict[str, np.ndarray]]:
        """inputs: name -> (datatype, array). Returns the model that ran and its outputs: boxes [N,4] f32,
        scores [N] f32, classes [N] bytes. The model is looked up once, so a swap mid-request is harmless.
        camera_id: the camera the image comes from, if the request says (a re-scored model's thresholds are
        per camera; without one, the thresholds over all cameras)."""
        model = self.model(name, version)
        detections = detect_for_camera(model, self.image_of(inputs), camera_id)
        return model, {
            "boxes": np.array([d.box for d in detections], np.float32).reshape(-1, 4),
            "scores": np.array([d.score for d in detections], np.float32),
            "classes": np.array([d.label.encode() for d in detections], dtype=object),
        }
