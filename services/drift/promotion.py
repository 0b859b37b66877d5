"""A promoted model makes the conditions of the cameras it was trained on their new normal. The rollout controller
tells each step of a rollout as a RolloutEvent on vigil.rollouts; on a "promoted" one, the drift service re-learns
the input reference (`camera/<id>`) of each camera the candidate was trained on (RolloutEvent.cameras):

- from the camera's newest windows since its drift began (the start of the open alert's drifting run, or of the
  drifting run under way), at most `reference_windows` of them with enough data (as an automatic reference), read
  back from vigil.drift.windows (window_reader.py) as `vigil drift reference set` reads a range;
- or, with fewer than MIN_REFERENCE_WINDOWS such windows (the promotion came soon after the drift, or the windows
  could not be read), the reference is dropped and learnt afresh from the camera's next windows, as a new subject's
  (its announcement withdrawn meanwhile, so a restart does not load the old one back).

Either way the reference's source is "promotion of MODEL version V", announced on vigil.drift.references, and an
open alert then clears through the normal path: `clear_after` windows in a row that read clean against it.

The promoted model's own outputs need nothing: a new model version is a new subject (camera, model, version), which
learns its reference from its first windows (in shadow and canary already, on the same footage).

The decision is a function of the monitor's state, so a promotion read twice (at-least-once delivery, a restart
before the offset was committed, the controller telling a stage again) re-learns nothing the second time: a
reference (or a re-learning) already from this promotion, or set after the promotion was told, is left alone."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from protos import events_pb2
from services.drift.monitor import DriftMonitor
from services.drift.processor import ProcessorOutput, reference_withdrawal
from services.drift.window_history import MIN_REFERENCE_WINDOWS, RangeSelection, recent_references, seconds
from services.drift.windows import DriftKey

PROMOTED = "promoted"
SET_BY = "drift"
# Without a drift under way, the windows read back reach this many reference lengths before the promotion (windows
# with too little data leave gaps); with one, no further back either: a long drift's newest windows suffice.
LOOKBACK_REFERENCES = 3


@dataclass(frozen=True)
class Promotion:
    event_id: str
    model_name: str
    model_version: str  # the version its results carry (ModelRef.version)
    registry_version: int
    cameras: tuple[str, ...]
    at: float  # when it was told (event time, seconds)

    @property
    def source(self) -> str:
        """The reason a reference re-learnt for it carries, as `vigil models show` names the version."""
        return f"promotion of {self.model_name} version {self.registry_version or self.model_version}"


def promotion_of(value: bytes) -> Promotion | None:
    """The promotion a vigil.rollouts message tells, or None for the other stages (shadow, canary, rollback).
    Raises ValueError for a message that is not a RolloutEvent, or a promotion without a model."""
    try:
        event = events_pb2.RolloutEvent.FromString(value)
    except Exception as exc:  # noqa: BLE001 (protobuf's DecodeError and friends)
        raise ValueError(f"not a RolloutEvent: {exc}") from exc
    if event.stage != PROMOTED:
        return None
    if not event.candidate.name:
        raise ValueError("a promotion without a candidate model")
    at = seconds(event.envelope.event_time) or seconds(event.envelope.ingest_time)
    if not at:
        raise ValueError(f"a promotion of {event.candidate.name} without a time")
    return Promotion(event.envelope.event_id, event.candidate.name, event.candidate.version,
                     event.registry_version, tuple(dict.fromkeys(c for c in event.cameras if c)), at)


@dataclass(frozen=True)
class Relearning:
    key: DriftKey
    since: float  # event time: the windows to learn from start at or after it


@dataclass
class PromotionPlan:
    promotion: Promotion
    relearn: list[Relearning] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # camera -> why nothing is re-learnt

    def selection(self, now: float, window_s: float) -> RangeSelection:
        """The windows to read back: from the earliest `since` to now, of this worker's window length."""
        return RangeSelection(min(r.since for r in self.relearn), now + window_s, window_s=window_s)

    def wanted(self, key: DriftKey) -> bool:
        return any(r.key == key for r in self.relearn)


def plan_promotion(monitor: DriftMonitor, promotion: Promotion, now: float) -> PromotionPlan:
    """Which cameras' input references to re-learn, and from when."""
    plan = PromotionPlan(promotion)
    policy = monitor.policy
    for camera in promotion.cameras:
        key = DriftKey(f"camera/{camera}")
        reference, builder = monitor.references.get(key), monitor.builders.get(key)
        if builder is not None and builder.source == promotion.source:
            plan.skipped[camera] = "its reference is being learnt afresh for this promotion already"
        elif reference is None:
            plan.skipped[camera] = ("no reference yet: it is learning its first one" if builder is not None
                                    or key in monitor.windows.open else "no windows of its frames seen")
        elif reference.source == promotion.source:
            plan.skipped[camera] = "its reference was re-learnt for this promotion already"
        elif reference.set_at >= promotion.at:
            plan.skipped[camera] = f"its reference ({reference.source}, by {reference.set_by}) is newer"
        else:
            last = monitor.last_verdicts.get(key)
            until = last.end if last is not None else now
            since = until - LOOKBACK_REFERENCES * policy.reference_windows * policy.window_s
            drift_start = drift_began(monitor, key)
            plan.relearn.append(Relearning(key, since if drift_start is None else max(since, drift_start)))
    return plan


def drift_began(monitor: DriftMonitor, key: DriftKey) -> float | None:
    """The start of the key's drift (event time): of the drifting run that raised its open alert, or of the run
    under way; None when its windows read clean."""
    alert, window_s = monitor.hysteresis.states.get(key), monitor.policy.window_s
    if alert is None:
        return None
    if alert.open and alert.raised_at is not None:
        return alert.raised_at - monitor.policy.raise_after * window_s
    last = monitor.last_verdicts.get(key)
    if alert.drifting_run and last is not None:
        return last.end - alert.drifting_run * window_s
    return None


def relearnt_references(plan: PromotionPlan, monitor: DriftMonitor, now: float,
                        read: Callable[[RangeSelection, Callable[[DriftKey], bool]], object]):
    """The plan's references from the windows `read` offers the selection (window_reader.windows_in_range; in an
    executor thread: it only reads the monitor's settings), and the keys with too few windows for one."""
    policy = monitor.policy
    selection = plan.selection(now, policy.window_s)
    read(selection, plan.wanted)
    return recent_references(selection, [r.key for r in plan.relearn], policy.reference_windows,
                             min(MIN_REFERENCE_WINDOWS, policy.reference_windows), plan.promotion.source, SET_BY,
                             now, policy.comparison)


def apply_promotion(monitor: DriftMonitor, plan: PromotionPlan, profiles, thin: list[DriftKey],
                    touched: set[DriftKey]) -> ProcessorOutput:
    """The re-learnt references put in force, the others dropped to be learnt afresh; what to publish: the new
    references (to store and announce) and the withdrawals."""
    output = ProcessorOutput()
    for profile in profiles:
        monitor.set_reference(profile)
        output.references.append(profile)
        touched.add(profile.key)
    for key in thin:
        monitor.relearn(key, plan.promotion.source)
        output.messages.append(reference_withdrawal(key))
        touched.add(key)
    return output
