"""Follows the model registry's announcements on vigil.models: when a version of a model this server serves
becomes primary (a promote or a rollback), it is downloaded from the object store (sha256-verified, cached per
version) and hot-swapped in through ModelServer.load, which warms it beside the old one and switches in one
assignment. A download or load that fails leaves the current version serving and is reported as a failed
ModelStatus on vigil.monitoring.

The object store is the registry's truth: every `reconcile_s` the follower compares each model's primary there
with the primary last announced on vigil.models, and announces one whose announcement was lost (its writer died
between the store and the topic), so every server and the metrics store get it after all.

The announcements are a compacted table (libs/common/compacted.py), read whole on every start with no consumer
group offsets, so a restarted server serves the primary."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from libs.common.compacted import Change
from libs.common.logs import get_logger
from libs.common.ops import Heartbeat
from libs.common.topics import MODELS
from libs.model_registry.announcements import announce, announcements_table, primaries, repair_announcements
from libs.model_registry.manifest import MANIFEST, RegistryError, checked_file_paths, file_digest
from libs.model_registry.store import ModelRegistry
from protos import events_pb2
from services.inference.core.model_repository import ModelNotFound, PinnedRepository
from services.inference.core.model_server import ModelLoadFailed, ModelServer

log = get_logger(__name__)


def verified_download(registry: ModelRegistry, name: str, version: int, cache_dir: Path) -> Path:
    """`cache_dir/NAME/VERSION`, re-used if every file still matches the manifest saved with it, else
    (re-)downloaded and verified by the registry."""
    dest = Path(cache_dir) / name / str(version)
    try:
        manifest = checked_file_paths(json.loads((dest / MANIFEST).read_text()))
        if all(file_digest(dest / f["path"]) == (f["sha256"], f["size"]) for f in manifest["files"]):
            return dest
    except (OSError, ValueError, KeyError, RegistryError):
        pass
    shutil.rmtree(dest, ignore_errors=True)
    return registry.download(name, version, dest)


class ModelRegistryFollower:
    def __init__(self, client_config: dict[str, str], registry: ModelRegistry, server: ModelServer,
                 repository: PinnedRepository, cache_dir: Path, topic: str = MODELS, poll_s: float = 0.5,
                 reconcile_s: float = 60.0) -> None:
        self.reconcile_s = reconcile_s
        self.announced: dict[str, int] = {}  # name -> the primary last announced on the topic (every model)
        self.registry = registry
        self.server = server
        self.repository = repository
        self.cache_dir = Path(cache_dir)
        self.current: dict[str, int] = {}  # name -> the registry version serving (known once one was applied)
        self._stop = threading.Event()
        self.table = announcements_table(client_config, "vigil-inference-models", topic)
        self._follower = self.table.follower(
            self._apply_changes, poll_s=poll_s,
            heartbeat=Heartbeat(max_age_s=300))  # a download and a load happen between beats
        self.heartbeat = self._follower.heartbeat

    def served(self) -> set[str]:
        server = self.server
        return {server.default_model.name, *server.camera_models.values(), server.canary_model,
                server.shadow_model} - {None}

    def apply(self, message: events_pb2.ModelVersion) -> str:
        """Makes the announced primary serve if it is one of ours and not serving yet; returns what happened:
        ignored, current, loaded or failed."""
        name, version = message.model.name, int(message.model.version)
        source_version = message.metadata.get("source_version", "")
        if name not in self.served() or message.artifact.bucket != self.registry.bucket:
            return "ignored"
        serving = self.server.models.get(name)
        if self.current.get(name) == version or (
                name not in self.current and serving is not None and serving.version == source_version):
            self.current[name] = version
            return "current"
        try:
            model_dir = verified_download(self.registry, name, version, self.cache_dir)
        except Exception as exc:
            reason = f"registry version {version}: {type(exc).__name__}: {exc}"
            self.server.on_status(name, source_version, "failed", reason + (
                f"; version {serving.version} keeps serving" if serving else ""))
            log.warning("registry version not downloaded", model=name, version=version, error=str(exc))
            return "failed"
        previous = self.repository.pins.get(name)
        self.repository.pins[name] = (source_version, model_dir)
        try:
            self.server.load(name)
        except (ModelLoadFailed, ModelNotFound) as exc:  # reported by the server already
            if previous is None:
                self.repository.pins.pop(name, None)
            else:
                self.repository.pins[name] = previous
            log.warning("registry version not loaded", model=name, version=version, error=str(exc))
            return "failed"
        self.current[name] = version
        log.info("registry version serving", model=name, version=version, source_version=source_version,
                 action=message.metadata.get("action", ""))
        return "loaded"

    def reconcile(self) -> list[str]:
        """Announces the primaries the registry holds and the topic lacks; returns their model names."""
        messages = repair_announcements(self.registry, dict(self.announced), grace_s=self.reconcile_s)
        if messages:
            announce(self.table, messages)
            log.warning("promotions whose announcement was lost announced again",
                        models={m.model.name: m.model.version for m in messages})
        return [m.model.name for m in messages]

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        reconciler = threading.Thread(target=self._reconcile_periodically, args=(stop,), name="registry-reconcile",
                                      daemon=True)
        reconciler.start()
        try:
            self._follower.run(stop)
        finally:
            reconciler.join(timeout=5)

    def _reconcile_periodically(self, stop: threading.Event) -> None:
        while not stop.wait(self.reconcile_s):
            if not self._follower.loaded.is_set():
                continue  # what was announced is not known yet
            try:
                self.reconcile()
            except Exception as exc:  # the store or Kafka away: the next round tries again
                log.warning("registry announcements not reconciled", error=str(exc))

    def _apply_changes(self, changes: list[Change]) -> None:
        # Only the latest primary per model in what has arrived (a start hands over one per model).
        latest = primaries([c.value for c in changes if not c.problem], self.registry.bucket)
        self.announced.update({name: int(message.model.version) for name, message in latest.items()})
        for message in latest.values():
            if self._stop.is_set():
                break
            try:
                self.apply(message)
            except Exception as exc:  # never let one announcement stop the follower
                log.exception("model announcement not applied", model=message.model.name, error=str(exc))
