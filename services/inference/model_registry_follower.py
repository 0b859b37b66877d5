"""Follows the model registry's announcements on vigil.models: when a version of a model this server serves
becomes primary (a promote or a rollback), it is downloaded from the object store (sha256-verified, cached per
version) and hot-swapped in through ModelServer.load, which warms it beside the old one and switches in one
assignment. A download or load that fails leaves the current version serving and is reported as a failed
ModelStatus on vigil.monitoring.

The object store is the registry's truth: every `reconcile_s` the follower compares each model's primary (and
rollout) there with the one last announced on vigil.models, and announces one whose announcement was lost (its
writer died between the store and the topic), so every server and the metrics store get it after all.

A model's rollout (announced under the key "NAME/rollout") runs a candidate version of a served model beside
it: downloaded the same way, loaded from its dir with the repository's loader, warmed up, then set in the
server's rollout slot (shadow, or canary on a share of cameras); "retired", or the candidate becoming the
primary, clears the slot. A candidate that fails to load is reported as failed and nothing else changes.

The announcements are a compacted table (libs/common/compacted.py), read whole on every start with no consumer
group offsets, so a restarted server serves the primary and resumes the rollout."""
from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

from libs.common.compacted import Change
from libs.common.logs import get_logger
from libs.common.ops import Heartbeat
from libs.common.topics import MODELS
from libs.model_registry.announcements import (
    announce, announce_rollout, announcements_table, primaries, repair_announcements, repair_rollout_announcements,
    rollout_key, rollout_share, rollout_state, rollouts,
)
from libs.model_registry.manifest import MANIFEST, checked_file_paths, file_digest
from libs.model_registry.store import ModelRegistry
from protos import events_pb2
from services.inference.core.model_repository import ModelNotFound, PinnedRepository
from services.inference.core.model_server import ModelLoadFailed, ModelServer

log = get_logger(__name__)


def verified_download(registry: ModelRegistry, name: str, version: int, cache_dir: Path,
                      manifest_sha256: str = "") -> Path:
    """`cache_dir/NAME/VERSION`, re-used if every file matches the version's manifest, else (re-)downloaded and
    verified by the registry. The manifest cached with the files counts only if its sha256 is the one announced
    (`manifest_sha256`, the announcement's artifact), which needs no store: a server restarted while the store is
    away still swaps in a cached version. Otherwise the registry's manifest counts: the cache outlives a registry
    (a new bucket, a fresh stack), whose version 2 may be another model than an earlier one's cached version 2."""
    dest = Path(cache_dir) / name / str(version)
    try:
        cached = (dest / MANIFEST).read_bytes()
    except OSError:
        cached = None
    if cached is not None and manifest_sha256 and hashlib.sha256(cached).hexdigest() == manifest_sha256:
        data = cached
    else:
        data = registry.manifest_bytes(name, version)[1]
    manifest = checked_file_paths(json.loads(data))
    try:
        if all(file_digest(dest / f["path"]) == (f["sha256"], f["size"]) for f in manifest["files"]):
            if data != cached:
                (dest / MANIFEST).write_bytes(data)
            return dest
    except OSError:
        pass
    shutil.rmtree(dest, ignore_errors=True)
    return registry.download(name, version, dest)


class ModelRegistryFollower:
    def __init__(self, client_config: dict[str, str], registry: ModelRegistry, server: ModelServer,
                 repository: PinnedRepository, cache_dir: Path, topic: str = MODELS, poll_s: float = 0.5,
                 reconcile_s: float = 60.0) -> None:
        self.reconcile_s = reconcile_s
        self.announced: dict[str, int] = {}  # name -> the primary last announced on the topic (every model)
        self.announced_rollouts: dict[str, tuple[int, str, float]] = {}  # name -> its last rollout announcement
        self.registry = registry
        self.server = server
        self.repository = repository
        self.cache_dir = Path(cache_dir)
        self.current: dict[str, int] = {}  # name -> the registry version serving (known once one was applied)
        self.candidate: tuple[str, int] | None = None  # (name, registry version) in the server's rollout slot
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
        ignored, current, loaded or failed. A candidate of that version in the rollout slot stops once the
        primary is swapped in (it is the primary now, for every camera)."""
        outcome = self._apply_primary(message)
        if outcome != "ignored":
            self._clear_rollout(message.model.name, int(message.model.version),
                                f"version {message.model.version} is the primary")
        return outcome

    def _apply_primary(self, message: events_pb2.ModelVersion) -> str:
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
            model_dir = verified_download(self.registry, name, version, self.cache_dir, message.artifact.sha256)
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

    def apply_rollout(self, message: events_pb2.ModelVersion) -> str:
        """Runs the announced candidate in the server's rollout slot (stage shadow or canary), or stops it
        (retired); returns what happened: ignored, current, updated, loaded, cleared or failed."""
        name, version, stage = message.model.name, int(message.model.version), message.stage
        if name not in self.served() or message.artifact.bucket != self.registry.bucket:
            return "ignored"
        primary = self.announced.get(name, self.current.get(name))
        if stage == "retired" or version == primary:  # over, or the candidate is the primary now
            return self._clear_rollout(name, version, f"rollout of version {version} over")
        slot, share = self.server.rollout, rollout_share(message)
        if self.candidate == (name, version) and slot is not None:
            if (slot.stage, slot.share) == (stage, share):
                return "current"
            self.server.set_rollout(stage, slot.candidate, share)
            log.info("rollout stage changed", model=name, version=version, stage=stage, share=share)
            return "updated"
        source_version = message.metadata.get("source_version", "")
        role = f"rollout {stage} of registry version {version}"
        try:
            model_dir = verified_download(self.registry, name, version, self.cache_dir, message.artifact.sha256)
        except Exception as exc:
            self.server.on_status(name, source_version, "failed", f"{role}: {type(exc).__name__}: {exc}")
            log.warning("rollout candidate not downloaded", model=name, version=version, error=str(exc))
            self._clear_rollout(name, None, f"its successor {version} failed")
            return "failed"
        try:
            candidate = self.server.load_candidate(name, source_version, lambda: self.repository.loader(model_dir),
                                                   role)
        except ModelLoadFailed as exc:  # reported by the server already
            log.warning("rollout candidate not loaded", model=name, version=version, error=str(exc))
            self._clear_rollout(name, None, f"its successor {version} failed")
            return "failed"
        if self.candidate is not None and self.candidate[0] != name:  # one rollout slot per server
            self._clear_rollout(self.candidate[0], None, f"a rollout of {name} takes the slot")
        self.server.set_rollout(stage, candidate, share)
        self.candidate = (name, version)
        log.info("rollout candidate running", model=name, version=version, source_version=candidate.version,
                 stage=stage, share=share, action=message.metadata.get("action", ""))
        return "loaded"

    def _clear_rollout(self, name: str, version: int | None, why: str) -> str:
        """Empties the rollout slot if it holds a candidate of `name` (of `version`, if given)."""
        slot = self.server.rollout
        if self.candidate is None or self.candidate[0] != name or version not in (None, self.candidate[1]):
            return "ignored"
        self.server.set_rollout("", None)
        self.candidate = None
        if slot is not None:
            self.server.on_status(name, slot.candidate.version, "unloaded", why)
        log.info("rollout candidate stopped", model=name, reason=why)
        return "cleared"

    def reconcile(self) -> list[str]:
        """Announces the primaries and rollouts the registry holds and the topic lacks; returns their keys."""
        messages = repair_announcements(self.registry, dict(self.announced), grace_s=self.reconcile_s)
        if messages:
            announce(self.table, messages)
            log.warning("promotions whose announcement was lost announced again",
                        models={m.model.name: m.model.version for m in messages})
        rollout_messages = repair_rollout_announcements(self.registry, dict(self.announced_rollouts),
                                                        grace_s=self.reconcile_s)
        for message in rollout_messages:
            announce_rollout(self.table, message)
            log.warning("rollout stage whose announcement was lost announced again", model=message.model.name,
                        version=message.model.version, stage=message.stage)
        return [m.model.name for m in messages] + [rollout_key(m.model.name) for m in rollout_messages]

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
        # Only the latest primary and the latest rollout per model in what has arrived (a start hands over one
        # of each per model); primaries first, so a candidate that has become the primary is not loaded again.
        usable = [c for c in changes if not c.problem]
        latest = primaries([c.value for c in usable], self.registry.bucket)
        self.announced.update({name: int(message.model.version) for name, message in latest.items()})
        latest_rollouts = rollouts([(c.key, c.value) for c in usable], self.registry.bucket)
        self.announced_rollouts.update({name: rollout_state(m) for name, m in latest_rollouts.items()})
        steps = [(self.apply, message) for message in latest.values()]
        steps += [(self.apply_rollout, message) for message in latest_rollouts.values()]
        for step, message in steps:
            if self._stop.is_set():
                break
            try:
                step(message)
            except Exception as exc:  # never let one announcement stop the follower
                log.exception("model announcement not applied", model=message.model.name, stage=message.stage,
                              error=str(exc))
