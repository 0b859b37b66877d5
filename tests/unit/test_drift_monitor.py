"""The drift core end to end on a synthetic camera: the reference from the first windows, no alert while stable,
an alert within K windows of a shift and its clearing, thin windows never alarming, and a restart from saved
state giving the same outcomes."""
from __future__ import annotations

import json

import numpy as np

from services.drift.features import InferenceOutput, record_image_statistics, record_inference
from services.drift.monitor import DriftMonitor, DriftPolicy
from services.drift.windows import DriftKey

CAMERA = DriftKey("camera/lobby")
MODEL = DriftKey("camera/lobby", "yolov3-tiny", "1")
FPS = 5


def feed_minute(monitor: DriftMonitor, minute: int, dusk: bool, rng: np.random.Generator, frames: int = 60 * FPS):
    for i in range(frames):
        t = minute * 60.0 + i * (60.0 / frames)
        luma = rng.normal(60 if dusk else 120, 8)
        window = monitor.window_for(CAMERA, t)
        record_image_statistics(window, {"mean_luma": luma, "contrast": rng.normal(40, 4)})
        n = int(rng.poisson(1.0 if dusk else 3.0))
        scores = rng.uniform(0.25 if dusk else 0.4, 1.0, n).tolist()
        boxes = [(x, 100, x + 40, 200) for x in rng.uniform(0, 600, n)]
        record_inference(monitor.window_for(MODEL, t), InferenceOutput(["person"] * n, scores, boxes, 640, 480))


def run(monitor: DriftMonitor, plan: str, rng: np.random.Generator, start: int = 0):
    """plan: one letter per minute: n(ormal), d(usk), t(hin: 10 frames)."""
    events = []
    for minute, kind in enumerate(plan, start=start):
        feed_minute(monitor, minute, kind == "d", rng, 10 if kind == "t" else 60 * FPS)
        for outcome in monitor.take_outcomes(now=minute * 60.0):
            if outcome.decision:
                events.append((outcome.window.key.subject + "|" + outcome.window.key.model_name,
                               int(outcome.window.start // 60), outcome.decision.action))
            if outcome.new_reference:
                events.append((str(outcome.new_reference.key), int(outcome.window.start // 60), "reference"))
    return events


def test_a_stable_camera_never_alerts_and_dusk_alerts_within_k_windows_then_clears():
    monitor = DriftMonitor(DriftPolicy(reference_windows=3, raise_after=2, clear_after=2))
    rng = np.random.default_rng(11)
    events = run(monitor, "nnn" + "n" * 20 + "ddd" + "nnnn", rng)
    references = [e for e in events if e[2] == "reference"]
    assert sorted(r[:2] for r in references) == sorted([(str(CAMERA), 2), (str(MODEL), 2)])  # the first 3 windows
    alerts = [e for e in events if e[2] != "reference"]
    # dusk starts at minute 23; the window of minute 23 closes when minute 24 begins
    assert ("camera/lobby|", 24, "raise") in alerts and ("camera/lobby|yolov3-tiny", 24, "raise") in alerts
    assert all(minute >= 24 for _, minute, _ in alerts)  # nothing on the 20 stable minutes
    assert {(k, a) for k, _, a in alerts} == {("camera/lobby|", "raise"), ("camera/lobby|", "clear"),
                                              ("camera/lobby|yolov3-tiny", "raise"),
                                              ("camera/lobby|yolov3-tiny", "clear")}
    verdict = monitor.last_verdicts[CAMERA]
    assert verdict.status == "compared" and not verdict.drifted
    status = {row["key"]: row for row in monitor.status()}
    assert status[str(MODEL)]["reference"]["source"] == "first_windows"
    assert status[str(MODEL)]["alert"]["open"] is False and status[str(MODEL)]["last_window"]["status"] == "compared"
    assert json.loads(json.dumps(monitor.status())) == monitor.status()


def test_thin_windows_are_insufficient_data_and_never_alert():
    monitor = DriftMonitor(DriftPolicy(reference_windows=2, raise_after=1))
    rng = np.random.default_rng(3)
    run(monitor, "nn", rng)  # the second minute's window is still open
    assert {row["key"]: row["reference"] for row in monitor.status()}[str(MODEL)] == {"building": 1}
    events = run(monitor, "ttttt", np.random.default_rng(4), start=2)
    assert [e for e in events if e[2] == "raise"] == []
    assert monitor.last_verdicts[MODEL].status == "insufficient_data"


def test_the_top_features_of_a_dusk_alert_name_the_luma():
    monitor = DriftMonitor(DriftPolicy(reference_windows=2, raise_after=1))
    rng = np.random.default_rng(5)
    run(monitor, "nnn", rng)
    feed_minute(monitor, 3, True, rng)
    feed_minute(monitor, 4, True, rng)
    outcomes = [o for o in monitor.take_outcomes(now=240.0) if o.window.key == CAMERA]
    assert [(o.window.start, o.decision.action if o.decision else None) for o in outcomes] == [
        (120.0, None), (180.0, "raise")]  # the last normal minute, then the first of dusk
    outcome = outcomes[-1]
    assert outcome.decision.features[0].feature == "input.mean_luma"
    assert outcome.decision.features[0].score > outcome.decision.features[0].threshold


def test_a_restart_from_saved_state_gives_the_same_outcomes():
    policy = DriftPolicy(reference_windows=3, raise_after=2, clear_after=2)
    plan_before, plan_after = "nnnnd", "ddnnn"

    uninterrupted = DriftMonitor(policy)
    expected = run(uninterrupted, plan_before + plan_after, np.random.default_rng(9))

    first = DriftMonitor(policy)
    rng = np.random.default_rng(9)
    got = run(first, plan_before, rng)
    keys = list(first.windows.open)
    saved = {str(k): json.dumps(first.key_state(k)) for k in keys}
    references = {str(k): p.to_json_bytes() for k, p in first.references.items()}
    second = DriftMonitor(policy)
    for key, profile in references.items():
        second.set_reference(type(first.references[DriftKey.parse(key)]).from_json_bytes(profile))
    for key, state in saved.items():
        second.restore_key(DriftKey.parse(key), json.loads(state))
    got += run(second, plan_after, rng, start=len(plan_before))
    assert got == expected and any(e[2] == "raise" for e in got)
