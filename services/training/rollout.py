"""The rollout of a candidate model version, judged on live traffic: shadow, then canary, then promoted, or rolled
back the moment a check fails. Transport-free: results in (`observe`), decisions out (`decide`); the adapter
(rollout_adapter.py) reads vigil.inference and vigil.inference.shadow, applies the decisions through the model
registry and announces each step.

Where the candidate and the champion both see a frame, their results are paired by the frame's event id: in shadow,
every camera's frame goes through the champion (vigil.inference) and the candidate (vigil.inference.shadow); in
canary, the roles swap on the canary's share of cameras (the candidate serves, the champion runs beside it in
shadow), so every check keeps comparing the two on the same frames. A stage's checks, over its paired frames:

  error_rate       frames the candidate should have answered and did not (a result of one side whose other half
                   never came within `pair_timeout_s`, counted against the candidate when the champion's came)
  latency          the candidate's p95 (inference + post-processing, per frame) against the champion's on the same
                   frames, as a ratio
  disagreement     1 - IoU-matched F1 (same class, IoU >= 0.5) between the two sides' confident boxes, averaged
  output_drift     Jensen-Shannon distance between the two sides' output mixes (classes of confident boxes, and
                   empty frames)

A stage ends once it has seen `min_frames` pairs and lasted `min_s`: any failing check rolls the candidate back
(and says which, with its figure); otherwise it moves on. A failing check with at least `min_frames` pairs rolls
back at once, without waiting out `min_s`. A stage that gets too few frames within `stage_timeout_s` is rolled
back too: a candidate is never promoted unjudged."""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from libs.common.box_agreement import box_agreement
from protos import events_pb2
from services.inference.core.routing import camera_position, in_canary

SHADOW, CANARY, PROMOTED, ROLLED_BACK = "shadow", "canary", "promoted", "rolled_back"
EMPTY = "(no detection)"


@dataclass(frozen=True)
class RolloutPolicy:
    shadow_min_frames: int = 200
    shadow_min_s: float = 60.0
    canary_share: float = 0.5
    canary_min_frames: int = 200
    canary_min_s: float = 60.0
    stage_timeout_s: float = 1800.0
    start_timeout_s: float = 180.0  # the candidate's first result of a stage (download, load, warm-up) within this
    max_error_rate: float = 0.05
    max_latency_ratio: float = 2.0
    max_disagreement: float = 0.5
    max_output_drift: float = 0.5
    min_score: float = 0.5  # a box counts in disagreement and output mix from this score on
    pair_timeout_s: float = 30.0
    max_pending: int = 20_000  # results waiting for their other half (oldest dropped past it, counted as errors)

    def min_frames(self, stage: str) -> int:
        return self.shadow_min_frames if stage == SHADOW else self.canary_min_frames

    def min_s(self, stage: str) -> float:
        return self.shadow_min_s if stage == SHADOW else self.canary_min_s


def canary_share(cameras: set[str], share: float) -> float:
    """`share`, or, when no camera seen falls in it (a site of few cameras), the least share that takes one: a
    canary without traffic would judge nothing."""
    if not cameras or any(in_canary(camera, share) for camera in cameras):
        return share
    return min(1.0, min(camera_position(camera) for camera in cameras) + 1e-6)


@dataclass(frozen=True)
class Rollout:
    """A candidate in a stage, as the registry says: `candidate` and `champion` are the model.json versions their
    results carry (ModelRef.version); `since` is when the stage began (epoch seconds)."""
    model: str
    registry_version: int
    candidate: str
    champion: str
    stage: str
    since: float
    share: float = 0.0
    cameras: tuple[str, ...] = ()  # the cameras the candidate was trained on


@dataclass(frozen=True)
class Decision:
    """What to do with a rollout: move it to `stage` (canary, promoted or rolled_back), because of `reason`."""
    rollout: Rollout
    stage: str
    reason: str
    checks: dict[str, float]


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else 0.0


def js_distance(a: dict[str, int], b: dict[str, int]) -> float:
    """Jensen-Shannon distance (base 2, 0..1) between two count histograms over the same keys."""
    keys = sorted(set(a) | set(b))
    p = np.array([a.get(k, 0) for k in keys], dtype=np.float64)
    q = np.array([b.get(k, 0) for k in keys], dtype=np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0 if p.sum() == q.sum() else 1.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        nonzero = x > 0
        return float(np.sum(x[nonzero] * np.log2(x[nonzero] / m[nonzero])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


@dataclass
class StageChecks:
    """The live checks of one stage, accumulated from paired results."""
    policy: RolloutPolicy
    pairs: int = 0
    candidate_missing: int = 0
    champion_missing: int = 0
    disagreement_sum: float = 0.0
    candidate_ms: list[float] = field(default_factory=list)
    champion_ms: list[float] = field(default_factory=list)
    candidate_mix: dict[str, int] = field(default_factory=dict)
    champion_mix: dict[str, int] = field(default_factory=dict)

    def add_pair(self, champion: events_pb2.InferenceResult, candidate: events_pb2.InferenceResult) -> None:
        confident_champion = [d for d in champion.detections if d.score >= self.policy.min_score]
        confident_candidate = [d for d in candidate.detections if d.score >= self.policy.min_score]
        self.pairs += 1
        self.disagreement_sum += 1.0 - box_agreement(confident_champion, confident_candidate).f1
        for mix, detections in ((self.champion_mix, confident_champion), (self.candidate_mix, confident_candidate)):
            for label in [d.label for d in detections] or [EMPTY]:
                mix[label] = mix.get(label, 0) + 1
        self.champion_ms.append(_model_ms(champion))
        self.candidate_ms.append(_model_ms(candidate))

    def figures(self) -> dict[str, float]:
        expected = self.pairs + self.candidate_missing
        champion_p95, candidate_p95 = _p95(self.champion_ms), _p95(self.candidate_ms)
        return {
            "frames": float(self.pairs),
            "error_rate": self.candidate_missing / expected if expected else 0.0,
            "latency_p95_ms": candidate_p95,
            "champion_latency_p95_ms": champion_p95,
            "latency_ratio": candidate_p95 / champion_p95 if champion_p95 > 0 else 1.0,
            "disagreement": self.disagreement_sum / self.pairs if self.pairs else 0.0,
            "output_drift": js_distance(self.candidate_mix, self.champion_mix),
        }

    def failures(self) -> list[str]:
        """Each failing check with its figure and limit ("disagreement 0.62 > 0.50")."""
        figures, policy = self.figures(), self.policy
        limits = (("error_rate", policy.max_error_rate), ("latency_ratio", policy.max_latency_ratio),
                  ("disagreement", policy.max_disagreement), ("output_drift", policy.max_output_drift))
        return [f"{name} {figures[name]:.2f} > {limit:.2f}" for name, limit in limits if figures[name] > limit]


def _model_ms(result: events_pb2.InferenceResult) -> float:
    latency = result.stage_latency_ms
    return float(latency.get("infer", 0.0) + latency.get("postprocess", 0.0))


class RolloutJudge:
    """Watches one rollout at a time per model: pairs its results, keeps each stage's checks, decides."""

    def __init__(self, policy: RolloutPolicy) -> None:
        self.policy = policy
        self.rollouts: dict[str, Rollout] = {}
        self.checks: dict[str, StageChecks] = {}
        # model -> event time of the candidate's first result in the stage: the champion's results before it are
        # not held against the candidate (it was still being downloaded and warmed up on the servers).
        self.live_since: dict[str, float] = {}
        self.cameras: dict[str, set[str]] = {}  # model -> cameras whose results were seen (for the canary's share)
        # (model, frame event id) -> (received at, side, result): the first half of a pair, oldest first.
        self._pending: OrderedDict[tuple[str, str], tuple[float, str, events_pb2.InferenceResult]] = OrderedDict()

    def track(self, rollout: Rollout | None, model: str) -> None:
        """Follows the registry's word on `model`: a new stage (or candidate) starts its checks afresh."""
        current = self.rollouts.get(model)
        if rollout is None:
            self.rollouts.pop(model, None)
            self.checks.pop(model, None)
            self.live_since.pop(model, None)
        elif current is None or (current.registry_version, current.stage) != (rollout.registry_version,
                                                                              rollout.stage):
            self.rollouts[model] = rollout
            self.checks[model] = StageChecks(self.policy)
            self.live_since.pop(model, None)
        else:
            self.rollouts[model] = rollout

    def _expects_pair(self, rollout: Rollout, result: events_pb2.InferenceResult) -> bool:
        return rollout.stage == SHADOW or in_canary(result.camera_id, rollout.share)

    def observe(self, result: events_pb2.InferenceResult, now: float) -> None:
        rollout = self.rollouts.get(result.model.name)
        at = result.envelope.event_time.ToNanoseconds() / 1e9
        if rollout is None or at < rollout.since:
            return
        side = {rollout.candidate: "candidate", rollout.champion: "champion"}.get(result.model.version)
        if side is not None:
            self.cameras.setdefault(rollout.model, set()).add(result.camera_id)
        if side is None or not self._expects_pair(rollout, result):
            return
        if side == "candidate":
            self.live_since.setdefault(rollout.model, at)
        key = (rollout.model, result.frame_event_id)
        other = self._pending.get(key)
        if other is None:
            self._pending[key] = (now, side, result)
            while len(self._pending) > self.policy.max_pending:
                self._expire(*self._pending.popitem(last=False))
            return
        if other[1] == side:  # the same side again (a replay): keep the first
            return
        del self._pending[key]
        champion, candidate = (other[2], result) if side == "candidate" else (result, other[2])
        self.checks[rollout.model].add_pair(champion, candidate)

    def _expire(self, key: tuple[str, str], entry: tuple[float, str, events_pb2.InferenceResult]) -> None:
        checks = self.checks.get(key[0])
        if checks is None:
            return
        at = entry[2].envelope.event_time.ToNanoseconds() / 1e9
        if entry[1] == "champion" and at >= self.live_since.get(key[0], math.inf):
            checks.candidate_missing += 1
        elif entry[1] == "candidate":
            checks.champion_missing += 1

    def decide(self, now: float) -> list[Decision]:
        """The rollouts whose stage is over, with what comes next."""
        while self._pending:
            key, entry = next(iter(self._pending.items()))
            if now - entry[0] < self.policy.pair_timeout_s:
                break
            del self._pending[key]
            self._expire(key, entry)
        decisions = []
        for model, rollout in self.rollouts.items():
            checks = self.checks[model]
            figures, failures = checks.figures(), checks.failures()
            enough = checks.pairs + checks.candidate_missing >= self.policy.min_frames(rollout.stage)
            lasted = now - rollout.since >= self.policy.min_s(rollout.stage)
            if model not in self.live_since:
                if now - rollout.since >= self.policy.start_timeout_s:
                    decisions.append(Decision(rollout, ROLLED_BACK, f"{rollout.stage}: the candidate gave no result "
                                              f"in {self.policy.start_timeout_s:.0f} s", figures))
                continue
            if enough and failures:
                decisions.append(Decision(rollout, ROLLED_BACK, f"{rollout.stage}: " + "; ".join(failures), figures))
            elif enough and lasted:
                following = CANARY if rollout.stage == SHADOW else PROMOTED
                decisions.append(Decision(rollout, following, f"{rollout.stage} passed its checks over "
                                          f"{checks.pairs} frames in {now - rollout.since:.0f} s", figures))
            elif now - rollout.since >= self.policy.stage_timeout_s:
                decisions.append(Decision(rollout, ROLLED_BACK, f"{rollout.stage}: only {checks.pairs} frames "
                                          f"to judge in {self.policy.stage_timeout_s:.0f} s", figures))
        return decisions
