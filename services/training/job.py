"""One training job, from a dataset version to a registry version: the champion (the registry's primary of the base
model) fetched, a candidate trained on the version and gated against it (trainer.py), the candidate's model.json
completed with the gate's verdict, the champion it was measured against and what data it learnt from, and the
candidate imported into the model registry with that lineage, eligible or not (only an eligible one may go on to
shadow and canary; a refused one is kept so its report can be read). Transport-free: stores in, a result out."""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from libs.model_registry.manifest import RegistryError
from libs.model_registry.store import ModelRegistry
from services.datasets.manifest import Item
from services.training.trainer import REPORT_FILE, Progress, TrainingParams, TrainingResult, train_candidate

OnProgress = Callable[[str, int, int, "float | None"], None]


class NoChampion(ValueError):
    """The base model has no primary in the registry and no default dir was given to stand for it."""


@dataclass(frozen=True)
class Champion:
    name: str
    registry_version: int | None  # None: the served default, not in the registry
    model_dir: Path

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.registry_version}" if self.registry_version else f"{self.name} (default dir)"


@dataclass(frozen=True)
class JobResult:
    name: str
    version: int  # the candidate's registry version
    eligible: bool
    reasons: tuple[str, ...]
    champion: Champion
    dataset: str
    dataset_version: str
    training: TrainingResult
    manifest: dict

    @property
    def candidate_map50(self) -> float:
        return self.training.candidate.map50

    @property
    def champion_map50(self) -> float:
        return self.training.champion.map50

    def to_json(self) -> dict:
        return {"model": self.name, "version": self.version, "eligible": self.eligible,
                "reasons": list(self.reasons), "champion": self.champion.ref,
                "champion_version": self.champion.registry_version, "dataset": self.dataset,
                "dataset_version": self.dataset_version, "candidate_map50": self.candidate_map50,
                "champion_map50": self.champion_map50, "cameras": self.training.cameras,
                "seconds": {k: round(v, 2) for k, v in self.training.timings_s.items()}}


def _iso(seconds: float) -> str | None:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z") if seconds else None


def data_lineage(items: Sequence[Item]) -> dict:
    """What a model learnt and was judged on, from the dataset manifest's items: how many, from how many label
    tasks, and per camera how many and captured when (first and last, UTC)."""
    cameras: dict[str, list[Item]] = {}
    for item in items:
        cameras.setdefault(item.camera_id, []).append(item)
    captured = [item.captured_at for item in items if item.captured_at]
    return {
        "items": len(items),
        "source_task_ids": len({task for item in items for task in item.source_task_ids}),
        "captured_from": _iso(min(captured, default=0.0)), "captured_to": _iso(max(captured, default=0.0)),
        "cameras": {camera: {"items": len(seen),
                             "captured_from": _iso(min((i.captured_at for i in seen if i.captured_at), default=0.0)),
                             "captured_to": _iso(max((i.captured_at for i in seen if i.captured_at), default=0.0))}
                    for camera, seen in sorted(cameras.items())},
    }


def fetch_champion(registry: ModelRegistry, name: str, champions_dir: Path, default_dir: Path | None) -> Champion:
    """The primary of `name` in the registry, downloaded once into `champions_dir` (per version and manifest
    digest: two registries' version 1 are not the same model); without a primary, `default_dir` stands for it."""
    primary = registry.primary(name)
    if primary is None:
        if default_dir is None:
            raise NoChampion(f"{name} has no primary version in the registry (vigil models import, then promote)")
        return Champion(name, None, Path(default_dir))
    _, manifest = registry.manifest_bytes(name, primary)
    dest = Path(champions_dir) / name / f"{primary}-{hashlib.sha256(manifest).hexdigest()[:12]}"
    if not (dest / "model.json").is_file():
        try:
            registry.download(name, primary, dest)
        except RegistryError:
            if not (dest / "model.json").is_file():  # not another job's download finished meanwhile
                raise
    return Champion(name, primary, dest)


def _complete_metadata(model_dir: Path, champion: Champion, result: TrainingResult, data: dict,
                       params: TrainingParams) -> None:
    """model.json with the gate's verdict and the lineage's champion and data, replaced whole (a dir is read as
    finished once it has a model.json)."""
    path = model_dir / "model.json"
    metadata = json.loads(path.read_text())
    metadata["gate"] = {"eligible": result.decision.eligible, "reasons": list(result.decision.reasons),
                        "margin": params.margin, "tolerance": params.tolerance, "report": REPORT_FILE,
                        "champion": champion.ref}
    metadata["lineage"] = {**metadata["lineage"], "data": data,
                           "champion": {"name": champion.name, "registry_version": champion.registry_version}}
    tmp = model_dir / ".model.json.tmp"
    tmp.write_text(json.dumps(metadata, indent=2) + "\n")
    tmp.replace(path)


def run_training(dataset_store, registry: ModelRegistry, dataset: str, version: str, base_model: str, seed: int = 0,
                 params: TrainingParams | None = None, by: str = "training", progress: OnProgress | None = None, *,
                 work_dir: Path, cache_dir: Path | None = None, default_champion: Path | None = None) -> JobResult:
    """Trains a candidate of `base_model` on `dataset@version` against its champion and imports it into the
    registry as the next version of `base_model`, marked eligible or refused by the gate (never promoted here).

    `work_dir` holds downloaded champions (kept, reused) and the candidate dir until it is imported (removed);
    `cache_dir` the base detector's proposals per image (default: under `work_dir`); `default_champion` the dir
    that stands for the champion while the registry has no primary of `base_model` (the served default).
    `progress(step, done, total, eta_s)` is called at each step, as the log line `training progress` is written."""
    params = params or TrainingParams()
    steps = Progress(progress)
    work_dir = Path(work_dir)
    started = time.monotonic()
    manifest = dataset_store.version(dataset, version)  # an unknown ref fails before anything is fetched
    champion = fetch_champion(registry, base_model, work_dir / "champions", default_champion)
    steps.step("champion", 1, 1, started)
    steps.log.info("training job", dataset=dataset, version=manifest.version, champion=champion.ref, seed=seed,
                   by=by)

    work_dir.mkdir(parents=True, exist_ok=True)
    candidate_dir = Path(tempfile.mkdtemp(prefix=f".candidate-{base_model}-", dir=work_dir)) / "model"
    try:
        result = train_candidate(dataset_store, dataset, manifest.version, champion.model_dir, candidate_dir, seed,
                                 params, cache_dir=cache_dir or work_dir / "proposals", name=base_model,
                                 on_progress=progress)
        used = [item for item in manifest.items if item.verdict in ("labelled", "nothing_to_label")]
        _complete_metadata(candidate_dir, champion, result, data_lineage(used), params)
        imported_at = time.monotonic()
        registry_manifest = registry.import_dir(base_model, candidate_dir, by, champion.registry_version)
        steps.step("import", 1, 1, imported_at)
    finally:
        shutil.rmtree(candidate_dir.parent, ignore_errors=True)
    job = JobResult(base_model, registry_manifest["version"], result.decision.eligible, result.decision.reasons,
                    champion, dataset, manifest.version, result, registry_manifest)
    steps.log.info("training job finished", model=base_model, version=job.version, eligible=job.eligible,
                   champion=champion.ref, candidate_map50=round(job.candidate_map50, 4),
                   champion_map50=round(job.champion_map50, 4), seconds=round(time.monotonic() - started, 1))
    return job
