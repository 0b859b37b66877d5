"""The drift service's core, free of any transport: events are recorded into their key's open window (via
window_for and the record_* functions of features.py); each closed window is compared with the key's reference
(or goes into building it), and the alert hysteresis decides. The faust app feeds it and publishes what
take_outcomes returns: a score row per feature, DriftAlert raise/clear events, new references to store."""
from __future__ import annotations

from dataclasses import dataclass, field

from services.drift.alerts import CLEAR_AFTER, RAISE_AFTER, AlertDecision, AlertHysteresis, AlertState
from services.drift.profiles import FIRST_WINDOWS, REFERENCE_WINDOWS, ReferenceBuilder, ReferenceProfile
from services.drift.windows import (
    EMBEDDING_CAPACITY, NUMERIC_CAPACITY, WINDOW_S, ClosedWindow, ComparisonPolicy, DriftKey, TumblingWindows,
    WindowAccumulator, WindowVerdict, compare_window)


@dataclass(frozen=True)
class DriftPolicy:
    window_s: float = WINDOW_S
    # Results of one frame (primary, shadow) and a partition's small reorderings arrive a little apart.
    grace_s: float = 5.0
    reference_windows: int = REFERENCE_WINDOWS
    raise_after: int = RAISE_AFTER
    clear_after: int = CLEAR_AFTER
    numeric_capacity: int = NUMERIC_CAPACITY
    embedding_capacity: int = EMBEDDING_CAPACITY
    comparison: ComparisonPolicy = field(default_factory=ComparisonPolicy)


@dataclass(frozen=True)
class WindowOutcome:
    """What one closed window produced: its verdict (a drift_scores row per result), the alert decision it made
    if any, and the key's reference if this window completed it (to store and announce)."""

    window: ClosedWindow
    verdict: WindowVerdict
    decision: AlertDecision | None = None
    new_reference: ReferenceProfile | None = None


class DriftMonitor:
    def __init__(self, policy: DriftPolicy = DriftPolicy()) -> None:
        self.policy = policy
        self.windows = TumblingWindows(policy.window_s, policy.grace_s, policy.numeric_capacity,
                                       policy.embedding_capacity)
        self.references: dict[DriftKey, ReferenceProfile] = {}
        self.builders: dict[DriftKey, ReferenceBuilder] = {}
        self.hysteresis = AlertHysteresis(policy.raise_after, policy.clear_after, policy.comparison.top_features)
        self.last_verdicts: dict[DriftKey, WindowVerdict] = {}

    def window_for(self, key: DriftKey, event_time: float) -> WindowAccumulator | None:
        """The window to record an event of `key` at `event_time` (seconds) into; None when it is late."""
        return self.windows.window_for(key, event_time)

    def set_reference(self, profile: ReferenceProfile) -> None:
        """A reference set by hand, or loaded at start: it replaces the key's, and ends automatic building. An open
        alert stays open until the windows read clean against the new reference."""
        self.references[profile.key] = profile
        self.builders.pop(profile.key, None)

    def relearn(self, key: DriftKey, source: str) -> None:
        """The key's reference dropped, to be learnt afresh from its next windows, as a new key's is; the profile
        they make carries `source` (why). An open alert stays open until the windows read clean against it."""
        self.references.pop(key, None)
        self.builders[key] = ReferenceBuilder(key, self.policy.reference_windows, self.policy.comparison, source)

    def close_idle(self, now: float) -> list[WindowOutcome]:
        """Close the windows the clock has passed (cameras gone silent) and return every outcome pending."""
        self.windows.close_idle(now)
        return self.take_outcomes(now)

    def take_outcomes(self, now: float) -> list[WindowOutcome]:
        """The outcomes of every window closed since the last call, in closing order (per key, in time order)."""
        outcomes = []
        for window in self.windows.take_closed():
            new_reference = None
            reference = self.references.get(window.key)
            if reference is None:
                builder = self.builders.get(window.key)
                if builder is None:
                    builder = self.builders[window.key] = ReferenceBuilder(
                        window.key, self.policy.reference_windows, self.policy.comparison)
                new_reference = builder.offer(window, now)
                if new_reference is not None:
                    self.references[window.key] = new_reference
                    del self.builders[window.key]
            verdict = compare_window(window, reference.summary if reference else None, self.policy.comparison,
                                     reference.thresholds if reference else None)
            self.last_verdicts[window.key] = verdict
            outcomes.append(WindowOutcome(window, verdict, self.hysteresis.observe(verdict), new_reference))
        return outcomes

    def status(self) -> list[dict]:
        """Per key, as plain data (for `vigil drift status`): the open window, the last closed one's verdict and
        top features, the alert, the reference."""
        keys = set(self.windows.open) | set(self.last_verdicts) | set(self.references) | set(self.builders)
        rows = []
        for key in sorted(keys):
            open_windows = sorted(self.windows.open.get(key, {}).values(), key=lambda w: w.start)
            verdict = self.last_verdicts.get(key)
            alert = self.hysteresis.states.get(key)
            reference = self.references.get(key)
            rows.append({
                "key": str(key), "subject": key.subject, "model_name": key.model_name,
                "model_version": key.model_version,
                "open_window": ({"start": open_windows[-1].start, "end": open_windows[-1].end,
                                 "frames": open_windows[-1].frames} if open_windows else None),
                "last_window": ({"start": verdict.start, "end": verdict.end, "frames": verdict.frames,
                                 "status": verdict.status, "drifted": verdict.drifted,
                                 "top": [{"feature": r.feature, "metric": r.metric, "score": r.score,
                                          "threshold": r.threshold} for r in verdict.top()]} if verdict else None),
                "alert": ({"open": alert.open, "raised_at": alert.raised_at, "drifting_run": alert.drifting_run,
                           "clean_run": alert.clean_run} if alert else None),
                "reference": ({"source": reference.source, "start": reference.start, "end": reference.end,
                               "windows": reference.windows, "set_by": reference.set_by,
                               "set_at": reference.set_at} if reference else
                              {"building": len(self.builders[key].collected)} if key in self.builders else None),
            })
        return rows

    def key_state(self, key: DriftKey) -> dict:
        """One key's state as plain data, for a durable table: its open windows, how far it has closed, the
        windows collected towards its reference, its alert. (References are stored on their own.)"""
        alert = self.hysteresis.states.get(key)
        builder = self.builders.get(key)
        return {"open": [w.to_state() for w in self.windows.open.get(key, {}).values()],
                "closed_until": self.windows.closed_until(key),
                "collected": [w.to_json() for w in builder.collected] if builder else [],
                "building_source": builder.source if builder else None,
                "alert": alert.to_state() if alert else None}

    def restore_key(self, key: DriftKey, state: dict) -> None:
        self.windows.restore(key, [WindowAccumulator.from_state(w) for w in state["open"]], state["closed_until"])
        # A reference being re-learnt (relearn) is restored with its reason even before its first window.
        source = state.get("building_source") or FIRST_WINDOWS
        if (state["collected"] or source != FIRST_WINDOWS) and key not in self.references:
            builder = self.builders[key] = ReferenceBuilder(key, self.policy.reference_windows,
                                                            self.policy.comparison, source)
            builder.collected = [ClosedWindow.from_json(w) for w in state["collected"]]
        if state["alert"] is not None:
            self.hysteresis.states[key] = AlertState.from_state(state["alert"])
