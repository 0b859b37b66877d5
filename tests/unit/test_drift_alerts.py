"""Alert hysteresis: raised after K consecutive drifting windows, cleared after M clean ones, unmoved by windows
with insufficient data or no reference."""
from __future__ import annotations

import json

import pytest

from services.drift.alerts import AlertHysteresis, AlertState
from services.drift.statistics import DriftResult
from services.drift.windows import DriftKey, WindowVerdict

LOBBY = DriftKey("camera/lobby", "yolov3-tiny", "1")
LUMA = DriftResult("ks", 0.4, 0.1, True, 1e-9, "input.mean_luma")
SHARPNESS = DriftResult("wasserstein", 0.2, 0.1, True, None, "input.sharpness")
CLEAN = DriftResult("ks", 0.05, 0.1, False, 0.5, "input.mean_luma")


def verdict(i: int, kind: str, key: DriftKey = LOBBY) -> WindowVerdict:
    results = {"drift": (LUMA, SHARPNESS), "clean": (CLEAN,), "thin": ()}[kind]
    status = "insufficient_data" if kind == "thin" else "compared"
    return WindowVerdict(key, i * 60.0, (i + 1) * 60.0, 100, status, results)


def run(hysteresis: AlertHysteresis, kinds: str) -> list[tuple[int, str]]:
    decisions = []
    for i, kind in enumerate(kinds.split()):
        decision = hysteresis.observe(verdict(i, kind))
        if decision:
            decisions.append((i, decision.action))
    return decisions


def test_an_alert_is_raised_after_k_consecutive_drifting_windows_and_cleared_after_m_clean_ones():
    hysteresis = AlertHysteresis(raise_after=3, clear_after=2)
    assert run(hysteresis, "clean drift drift drift drift clean drift clean clean clean") == [
        (3, "raise"), (8, "clear")]


def test_drift_broken_by_a_clean_window_does_not_raise():
    assert run(AlertHysteresis(raise_after=3, clear_after=2), "drift drift clean drift drift clean drift") == []


def test_windows_with_insufficient_data_neither_raise_nor_clear_nor_break_a_run():
    hysteresis = AlertHysteresis(raise_after=2, clear_after=2)
    assert run(hysteresis, "drift thin drift thin thin clean thin clean") == [(2, "raise"), (7, "clear")]


def test_the_decision_names_the_top_drifting_features_and_the_window():
    hysteresis = AlertHysteresis(raise_after=1, clear_after=1, top_features=1)
    raised = hysteresis.observe(verdict(4, "drift"))
    assert raised.action == "raise" and (raised.window_start, raised.window_end) == (240.0, 300.0)
    assert [(r.feature, r.metric, r.score, r.threshold) for r in raised.features] == [
        ("input.mean_luma", "ks", 0.4, 0.1)]  # severity 4 beats sharpness' 2
    cleared = hysteresis.observe(verdict(5, "clean"))
    assert cleared.action == "clear" and cleared.features == raised.features and cleared.window_end == 360.0
    assert hysteresis.open_alerts() == {}


def test_keys_have_their_own_hysteresis():
    hysteresis = AlertHysteresis(raise_after=2, clear_after=1)
    gate = DriftKey("camera/gate", "yolov3-tiny", "1")
    assert hysteresis.observe(verdict(0, "drift")) is None
    assert hysteresis.observe(verdict(0, "drift", gate)) is None
    assert hysteresis.observe(verdict(1, "drift")).action == "raise"
    assert list(hysteresis.open_alerts()) == [LOBBY]


def test_alert_state_round_trips_so_a_restart_neither_loses_nor_doubles_an_alert():
    before = AlertHysteresis(raise_after=2, clear_after=2)
    before.observe(verdict(0, "drift"))
    before.observe(verdict(1, "drift"))
    saved = {str(k): json.dumps(s.to_state()) for k, s in before.states.items()}
    after = AlertHysteresis(raise_after=2, clear_after=2)
    after.states = {DriftKey.parse(k): AlertState.from_state(json.loads(s)) for k, s in saved.items()}
    assert after.observe(verdict(2, "drift")) is None  # already raised: not raised again
    assert after.observe(verdict(3, "clean")) is None
    cleared = after.observe(verdict(4, "clean"))
    assert cleared.action == "clear" and cleared.features[0].feature == "input.mean_luma"


def test_k_and_m_are_at_least_one():
    with pytest.raises(ValueError):
        AlertHysteresis(raise_after=0)
