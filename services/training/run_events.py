"""A training job as TrainingRun events (protos/events.proto) on vigil.training, keyed by the base model: "started",
"progress" (at most one per step each `every_s`, and each step's end), and the outcome: "eligible" or "refused"
(the gate's verdict on the imported candidate) or "failed". Built from a job's progress and result, or from the
registry's manifest of a version trained earlier (a replayed trigger announces that outcome again, training
nothing). Transport-free: events out, the adapter produces them.

`run_id` is a pure function of (dataset, dataset version, base model, seed), as is every event's id but a
progress event's (the step and how far it is in its id too), so a re-announced outcome is the same event."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from libs.common.envelope import new_envelope
from protos import events_pb2
from services.training.job import JobResult
from services.training.triggers import trained_from

PRODUCER = "vigil-training"
OUTCOMES = ("eligible", "refused", "failed")
_RUN_NAMESPACE = uuid.UUID("0f6b7c1e-93a4-4d2b-8e55-6a1d2c3b4f70")


def run_id(dataset: str, dataset_version: str, base_model: str, seed: int) -> str:
    return str(uuid.uuid5(_RUN_NAMESPACE, f"{dataset}@{dataset_version}/{base_model}/seed={seed}"))


@dataclass
class TrainingRunEvents:
    """The events of one job: `started()`, `progress(...)` (None when throttled), then one outcome."""

    dataset: str
    dataset_version: str
    base_model: str
    seed: int
    trace_id: str | None = None  # the triggering DatasetVersion's trace, carried on
    every_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    started_at: float = field(init=False)
    _last: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.started_at = self.clock()

    @property
    def run_id(self) -> str:
        return run_id(self.dataset, self.dataset_version, self.base_model, self.seed)

    def _event(self, state: str, derivation: str, **fields) -> events_pb2.TrainingRun:
        event_id = str(uuid.uuid5(_RUN_NAMESPACE, f"{self.run_id}/{derivation}"))
        return events_pb2.TrainingRun(
            envelope=new_envelope(f"model/{self.base_model}", PRODUCER, trace_id=self.trace_id, event_id=event_id),
            run_id=self.run_id, dataset=self.dataset, dataset_version=self.dataset_version,
            base_model=self.base_model, state=state, elapsed_s=round(self.clock() - self.started_at, 3), **fields)

    def started(self) -> events_pb2.TrainingRun:
        return self._event("started", "started", eta_s=-1.0)

    def progress(self, step: str, done: int, total: int, eta_s: float | None) -> events_pb2.TrainingRun | None:
        """The progress event of a step's callback, or None within `every_s` of the step's last one (a step's
        end always gives one)."""
        now = self.clock()
        last = self._last.get(step)
        if done < total and last is not None and now - last < self.every_s:
            return None
        self._last[step] = now
        return self._event("progress", f"progress/{step}/{done}/{total}", step=step, done=done, total=total,
                           eta_s=-1.0 if eta_s is None else round(eta_s, 1))

    def outcome(self, result: JobResult) -> events_pb2.TrainingRun:
        """The gate's verdict on the imported candidate."""
        return self._event(
            "eligible" if result.eligible else "refused", "outcome",
            candidate=events_pb2.ModelRef(name=result.name, version=str(result.version),
                                          precision=result.manifest.get("precision", "")),
            champion=champion_ref(result.champion.name, result.champion.registry_version),
            candidate_map50=result.candidate_map50, champion_map50=result.champion_map50,
            reasons=list(result.reasons), eta_s=0.0)

    def failed(self, reason: str) -> events_pb2.TrainingRun:
        return self._event("failed", "failed", reasons=[reason], eta_s=-1.0)

    def already_trained(self, manifest: dict) -> events_pb2.TrainingRun:
        """The outcome of the job that trained registry version `manifest` earlier, announced again."""
        model_json = manifest.get("model_json") or {}
        gate = model_json.get("gate") or {}
        lineage = trained_from(manifest)
        metrics = lineage.get("metrics") or {}
        champion = lineage.get("champion") or {}
        eligible = bool(gate.get("eligible", metrics.get("eligible", False)))
        event = self._event(
            "eligible" if eligible else "refused", "outcome",
            candidate=events_pb2.ModelRef(name=manifest["name"], version=str(manifest["version"]),
                                          precision=manifest.get("precision", "")),
            champion=champion_ref(champion.get("name", self.base_model), champion.get("registry_version")),
            candidate_map50=float(metrics.get("candidate_map50", 0.0)),
            champion_map50=float(metrics.get("champion_map50", 0.0)),
            reasons=list(gate.get("reasons", [])), eta_s=0.0)
        event.elapsed_s = 0.0  # nothing was run this time
        return event


def champion_ref(name: str, registry_version: int | None) -> events_pb2.ModelRef:
    """The champion as a ModelRef: its registry version, or an empty version for the served default dir (not in
    the registry)."""
    return events_pb2.ModelRef(name=name, version=str(registry_version) if registry_version else "")
