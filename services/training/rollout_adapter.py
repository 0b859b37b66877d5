"""The rollout on Kafka and the model registry: reads the live results of vigil.inference and vigil.inference.shadow
into the judge (rollout.py), follows the registry for the rollout of each watched model (one started by the
training service's eligible candidate, or by hand with `vigil models rollout`), and applies the judge's decisions:
canary, promote, or roll back. Each step is written to the registry's history, announced on vigil.models (which
the inference servers follow), and told as a RolloutEvent on vigil.rollouts; a rollback is said on vigil.monitoring
too, with the check that failed.

The registry is the rollout's truth: a restarted controller picks up the stage where the history says it is and
judges it afresh from that moment's traffic on (the live results are read from the latest offset, not replayed)."""
from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Sequence

from confluent_kafka import Message

from libs.common.envelope import new_envelope
from libs.common.kafka import DeliveringProducer, Outbound
from libs.common.logs import get_logger
from libs.common.topics import MONITORING, ROLLOUTS
from libs.model_registry.announcements import (announce, announce_rollout, announcement, rollout_announcement)
from libs.model_registry.history import current_primary, current_rollout
from libs.model_registry.store import ModelRegistry
from protos import events_pb2
from services.training.rollout import (CANARY, PROMOTED, ROLLED_BACK, SHADOW, Decision, Rollout, RolloutJudge,
                                       canary_share)

ACTOR = "rollout"
log = get_logger(__name__)


def rollout_event(decision_or_start: Decision | Rollout, stage: str, reason: str, checks: dict[str, float],
                  share: float = 0.0) -> events_pb2.RolloutEvent:
    rollout = decision_or_start.rollout if isinstance(decision_or_start, Decision) else decision_or_start
    return events_pb2.RolloutEvent(
        envelope=new_envelope(source=f"rollout/{rollout.model}", producer="training"),
        candidate=events_pb2.ModelRef(name=rollout.model, version=rollout.candidate),
        champion=events_pb2.ModelRef(name=rollout.model, version=rollout.champion),
        stage=stage, previous_stage=rollout.stage if isinstance(decision_or_start, Decision) else "",
        reason=reason, checks=checks, canary_share=share, actor=ACTOR, cameras=rollout.cameras,
        registry_version=rollout.registry_version)


class RolloutController:
    """`models`: the model names whose rollouts it judges (the base model training makes candidates of);
    `default_versions`: the model.json version that serves a model while the registry has no primary of it."""

    def __init__(self, registry: ModelRegistry, announcements, producer: DeliveringProducer, judge: RolloutJudge,
                 models: Sequence[str], default_versions: dict[str, str] | None = None,
                 clock=time.time) -> None:
        self.registry = registry
        self.announcements = announcements
        self.producer = producer
        self.judge = judge
        self.models = tuple(models)
        self.default_versions = dict(default_versions or {})
        self.clock = clock
        self.lock = threading.Lock()  # the judge is fed by the consumer's thread and read by the ticking one
        self._told: dict[str, tuple[str, str]] = {}  # model -> the (candidate, stage) last told on vigil.rollouts

    # -- the registry's word ------------------------------------------------------------------------------

    def _champion_version(self, name: str, history: list[dict], candidate_manifest: dict) -> str:
        primary = current_primary(history)
        if primary is not None:
            return self.registry.manifest(name, primary)["source_version"]
        # No primary: the served default, which the candidate was trained against (its lineage names it).
        parent = (candidate_manifest.get("model_json", {}).get("lineage") or {}).get("parent", "")
        return parent.rpartition(":")[2] or self.default_versions.get(name, "")

    def rollout_of(self, name: str) -> Rollout | None:
        history = self.registry.history(name)
        current = current_rollout(history)
        if current is None:
            return None
        manifest = self.registry.manifest(name, current.version)
        data = (manifest.get("model_json", {}).get("lineage") or {}).get("data") or {}
        return Rollout(name, current.version, candidate=manifest["source_version"],
                       champion=self._champion_version(name, history, manifest), stage=current.stage,
                       since=datetime.fromisoformat(current.at).timestamp(), share=current.share,
                       cameras=tuple(sorted(data.get("cameras", {}))))

    def refresh(self) -> None:
        for name in self.models:
            rollout = self.rollout_of(name)
            with self.lock:
                self.judge.track(rollout, name)
            if rollout is not None and self._told.get(name) != (rollout.candidate, rollout.stage):
                # A stage set by someone else (`vigil models rollout`), or by us before a restart: told once.
                current = current_rollout(self.registry.history(name))
                self._tell(rollout_event(rollout, rollout.stage, current.reason if current else "", {},
                                         rollout.share), actor=current.by if current else ACTOR)

    # -- live results -------------------------------------------------------------------------------------

    def handle_batch(self, messages: Sequence[Message]) -> list[list[Outbound]]:
        """Every result feeds the judge; nothing is produced. An undecodable one is skipped (the services that
        own these topics' consumers dead-letter it already)."""
        now = self.clock()
        with self.lock:
            for message in messages:
                try:
                    result = events_pb2.InferenceResult.FromString(message.value() or b"")
                except Exception:  # noqa: BLE001 (a poison message is not ours to report)
                    continue
                self.judge.observe(result, now)
        return [[] for _ in messages]

    # -- steps --------------------------------------------------------------------------------------------

    def start_shadow(self, name: str, version: int, reason: str) -> None:
        """An eligible candidate's first step (training's hook; `vigil models rollout` does the same by hand)."""
        self.registry.set_rollout(name, version, SHADOW, by=ACTOR, reason=reason)
        self._announce_rollout(name, version, SHADOW, 0.0, reason)
        self.refresh()  # tells the new stage
        log.info("rollout started", model=name, version=version, stage=SHADOW, reason=reason)

    def start_for(self, job) -> None:
        """Training's hook: an eligible candidate (a JobResult) goes into shadow, unless another rollout of its
        model is running (that one is judged to its end first; this candidate waits for `vigil models rollout`)."""
        if self.rollout_of(job.name) is not None:
            log.warning("a rollout is running: the new candidate waits", model=job.name, version=job.version)
            return
        self.start_shadow(job.name, job.version, f"eligible: mAP@0.5 {job.candidate_map50:.3f} against the "
                                                 f"champion's {job.champion_map50:.3f} on {job.dataset}@"
                                                 f"{job.dataset_version[:12]}'s test split")

    def tick(self) -> list[Decision]:
        """Refreshes the rollouts from the registry and applies what the judge decided."""
        self.refresh()
        with self.lock:
            decisions = self.judge.decide(self.clock())
        for decision in decisions:
            self.apply(decision)
        if decisions:
            self.refresh()
        return decisions

    def apply(self, decision: Decision) -> None:
        rollout, name, version = decision.rollout, decision.rollout.model, decision.rollout.registry_version
        share = 0.0
        if decision.stage == CANARY:
            with self.lock:
                share = canary_share(self.judge.cameras.get(name, set()), self.judge.policy.canary_share)
            self.registry.set_rollout(name, version, CANARY, by=ACTOR, share=share, reason=decision.reason)
            self._announce_rollout(name, version, CANARY, share, decision.reason)
        elif decision.stage == PROMOTED:
            self.registry.promote(name, version, by=ACTOR)
            announce(self.announcements, [announcement(self.registry.manifest(name, version), "primary",
                                                       self.registry.artifact_ref(name, version), "promote", ACTOR)])
            self._announce_rollout(name, version, "retired", 0.0, decision.reason)
        elif decision.stage == ROLLED_BACK:
            self.registry.end_rollout(name, by=ACTOR, reason=decision.reason)
            self._announce_rollout(name, version, "retired", 0.0, decision.reason)
        event = rollout_event(decision, decision.stage, decision.reason, decision.checks, share)
        self._tell(event)
        if decision.stage == ROLLED_BACK:
            self.producer.produce(Outbound(MONITORING, events_pb2.MonitoringEvent(
                envelope=new_envelope(source=f"rollout/{name}", producer="training"),
                rollout=event).SerializeToString(), key=name.encode()))
            self.producer.flush(30)
        log.info("rollout step", model=name, version=version, candidate=rollout.candidate, stage=decision.stage,
                 previous=rollout.stage, reason=decision.reason,
                 checks={k: round(v, 3) for k, v in decision.checks.items()})

    def _announce_rollout(self, name: str, version: int, stage: str, share: float, reason: str) -> None:
        announce_rollout(self.announcements, rollout_announcement(
            self.registry.manifest(name, version), stage, self.registry.artifact_ref(name, version),
            action=stage, by=ACTOR, share=share, reason=reason))

    def _tell(self, event: events_pb2.RolloutEvent, actor: str = ACTOR) -> None:
        event.actor = actor
        if event.stage in (SHADOW, CANARY):
            self._told[event.candidate.name] = (event.candidate.version, event.stage)
        self.producer.produce(Outbound(ROLLOUTS, event.SerializeToString(), key=event.candidate.name.encode()))
        self.producer.flush(30)

    def run_ticks(self, stop: threading.Event, every_s: float = 2.0) -> None:
        """The controller's clock: a failing registry or Kafka is logged and tried again at the next tick."""
        while not stop.wait(every_s):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001
                log.warning("rollout tick failed; trying again", error=f"{type(exc).__name__}: {exc}")
