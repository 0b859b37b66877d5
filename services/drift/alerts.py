"""Alerts with hysteresis: a key's alert is raised after K consecutive drifting windows and cleared after M
consecutive clean ones, so one odd minute neither raises nor clears it. Windows with insufficient data or no
reference yet move neither count. Pure state per key, JSON-able, so a durable table can hold it."""
from __future__ import annotations

from dataclasses import dataclass

from services.drift.statistics import DriftResult
from services.drift.windows import TOP_FEATURES, DriftKey, WindowVerdict

RAISE_AFTER = 3  # the target: every injected drift alerted within 3 windows of its start
CLEAR_AFTER = 3


@dataclass(frozen=True)
class AlertDecision:
    """"raise" or "clear" for a key, decided at the close of the window [window_start, window_end). `features`
    are the top drifting features of the deciding window when raised; when cleared, those the alert was raised
    for, as the alert's state kept them (in their last drifting scores)."""

    action: str
    key: DriftKey
    window_start: float
    window_end: float
    features: tuple[DriftResult, ...]
    windows: int  # the run of drifting (raise) or clean (clear) windows behind the decision


@dataclass
class AlertState:
    drifting_run: int = 0
    clean_run: int = 0
    open: bool = False
    raised_at: float | None = None  # window_end of the raising window
    features: tuple[DriftResult, ...] = ()

    def to_state(self) -> dict:
        return {"drifting_run": self.drifting_run, "clean_run": self.clean_run, "open": self.open,
                "raised_at": self.raised_at,
                "features": [[r.feature, r.metric, r.score, r.threshold, r.p_value] for r in self.features]}

    @classmethod
    def from_state(cls, state: dict) -> AlertState:
        features = tuple(DriftResult(metric, score, threshold, True, p_value, feature)
                         for feature, metric, score, threshold, p_value in state["features"])
        return cls(state["drifting_run"], state["clean_run"], state["open"], state["raised_at"], features)


class AlertHysteresis:
    def __init__(self, raise_after: int = RAISE_AFTER, clear_after: int = CLEAR_AFTER,
                 top_features: int = TOP_FEATURES) -> None:
        if raise_after < 1 or clear_after < 1:
            raise ValueError("raise_after and clear_after are at least one window")
        self.raise_after, self.clear_after, self.top_features = raise_after, clear_after, top_features
        self.states: dict[DriftKey, AlertState] = {}

    def observe(self, verdict: WindowVerdict) -> AlertDecision | None:
        """Feed windows of a key in order; returns the decision this window makes, if any."""
        if verdict.status != "compared":
            return None
        state = self.states.setdefault(verdict.key, AlertState())
        if verdict.drifted:
            state.drifting_run += 1
            state.clean_run = 0
            top = tuple(verdict.top(self.top_features))
            if state.open:
                state.features = top
            elif state.drifting_run >= self.raise_after:
                state.open, state.raised_at, state.features = True, verdict.end, top
                return AlertDecision("raise", verdict.key, verdict.start, verdict.end, top, state.drifting_run)
            return None
        state.clean_run += 1
        state.drifting_run = 0
        if state.open and state.clean_run >= self.clear_after:
            decision = AlertDecision("clear", verdict.key, verdict.start, verdict.end, state.features,
                                     state.clean_run)
            state.open, state.raised_at, state.features = False, None, ()
            return decision
        return None

    def open_alerts(self) -> dict[DriftKey, AlertState]:
        return {key: state for key, state in self.states.items() if state.open}
