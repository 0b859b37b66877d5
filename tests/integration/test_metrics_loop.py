"""The closed loop in the metrics store on the session's real stack: a training job's TrainingRun reports produced to
vigil.training and two candidates' RolloutEvents to vigil.rollouts (one promoted, one rolled back, its rollback
also on vigil.monitoring as the rollout controller says it) land in training_runs and rollout_events once each
(delivered twice in one go and replayed later), the rollback's monitoring copy is a monitoring_events row and no
second rollout row, a bad report is dead-lettered with its reason; the named queries answer through the query
API, and the dashboard's Loop panel shows the run and both rollouts in headless Chromium."""
from __future__ import annotations

import os
import time
import uuid

import pytest

from libs.common.envelope import new_envelope
from libs.common.topics import MONITORING, ROLLOUTS, TRAINING
from protos import events_pb2
from tests.integration.chromium import ARTIFACTS, headless_chromium
from tests.integration.conftest import QUERY_API_TOKEN, query, wait_for
from tests.integration.kafka_tools import produce
from tests.integration.test_metrics_sink import named

pytestmark = pytest.mark.integration

START_NS = time.time_ns()


def run_report(model: str, dataset: str, state: str, step: str = "", done: int = 0, total: int = 0,
               eta_s: float = -1.0, elapsed_s: float = 0.0, candidate: str = "", champion: str = "",
               candidate_map50: float = 0.0, champion_map50: float = 0.0) -> tuple[bytes, bytes]:
    """A TrainingRun as the training service publishes it, keyed by the base model."""
    event = events_pb2.TrainingRun(
        envelope=new_envelope(f"model/{model}", "vigil-training", event_id=str(uuid.uuid4())),
        run_id=f"run-{dataset}", dataset=dataset, dataset_version="b2c3d4e5f6a7b8c9", base_model=model, state=state,
        step=step, done=done, total=total, eta_s=eta_s, elapsed_s=elapsed_s,
        candidate=events_pb2.ModelRef(name=model if candidate else "", version=candidate),
        champion=events_pb2.ModelRef(name=model if champion else "", version=champion),
        candidate_map50=candidate_map50, champion_map50=champion_map50)
    return model.encode(), event.SerializeToString()


def rollout_step(model: str, minute: int, candidate: str, champion: str, stage: str, previous: str, reason: str,
                 checks: dict[str, float] | None = None, share: float = 0.0) -> events_pb2.RolloutEvent:
    """A RolloutEvent as the rollout controller publishes it (services/training/rollout_adapter.py), at `minute`
    of the ten minutes before the test began (the queries' windows end now)."""
    return events_pb2.RolloutEvent(
        envelope=new_envelope(f"rollout/{model}", "training", event_time_ns=START_NS + (minute - 10) * 60 * 10**9,
                              event_id=str(uuid.uuid4())),
        candidate=events_pb2.ModelRef(name=model, version=candidate),
        champion=events_pb2.ModelRef(name=model, version=champion), stage=stage, previous_stage=previous,
        reason=reason, checks=checks or {}, canary_share=share, actor="rollout", cameras=["dock", "lobby"],
        registry_version=int(candidate))


def count(stack, table: str, where: str) -> int:
    [row] = query(stack, f"SELECT count() AS n FROM {table} WHERE {where}")
    return row["n"]


@pytest.fixture(scope="module")
def loop(stack):
    """A model of its own: a run trained on a dataset of its own (started, progress, eligible); candidate 5 in
    shadow, canary and promoted, candidate 6 in shadow, then rolled back (also said on vigil.monitoring); a report
    without a state. Each part is produced twice in one go, and again (a replay) later."""
    model = f"loop-model-{uuid.uuid4().hex[:8]}"
    dataset = f"loop-people-{uuid.uuid4().hex[:8]}"
    reports = [run_report(model, dataset, "started"),
               run_report(model, dataset, "progress", "proposals", 90, 180, eta_s=30, elapsed_s=31),
               run_report(model, dataset, "eligible", "evaluate", 2, 2, eta_s=0, elapsed_s=200, candidate="5",
                          champion="4", candidate_map50=0.61, champion_map50=0.52)]
    rollback = rollout_step(model, 4, "6", "5", "rolled_back", "shadow", "disagreement 0.62 > 0.40",
                            {"frames": 250, "error_rate": 0.0, "disagreement": 0.62})
    steps = [rollout_step(model, 0, "5", "4", "shadow", "", "eligible: mAP@0.5 0.610 > 0.520"),
             rollout_step(model, 1, "5", "4", "canary", "shadow", "shadow passed its checks over 300 frames",
                          {"frames": 300, "error_rate": 0.0, "disagreement": 0.1}, share=0.5),
             rollout_step(model, 2, "5", "4", "promoted", "canary", "canary passed its checks over 300 frames",
                          {"frames": 300, "error_rate": 0.0, "disagreement": 0.08}, share=0.5),
             rollout_step(model, 3, "6", "5", "shadow", "", "forced past the gate"), rollback]
    steps = [(model.encode(), s.SerializeToString()) for s in steps]
    alert = events_pb2.MonitoringEvent(envelope=new_envelope(f"rollout/{model}", "training"), rollout=rollback)
    bootstrap = stack.config.kafka_bootstrap
    produce(bootstrap, TRAINING, reports * 2)
    produce(bootstrap, ROLLOUTS, steps * 2)
    produce(bootstrap, MONITORING, [(model.encode(), alert.SerializeToString())] * 2)
    wait_for(lambda: count(stack, "training_runs", f"base_model = '{model}'") == len(reports)
             and count(stack, "rollout_events", f"model_name = '{model}'") == len(steps)
             and count(stack, "monitoring_events", f"subject = '{model}'") == 1, 90, what="the first part stored")
    bad = events_pb2.TrainingRun(envelope=new_envelope(f"model/{model}", "vigil-training"), run_id="no-state",
                                 base_model=model)
    produce(bootstrap, TRAINING, [(model.encode(), bad.SerializeToString())])
    produce(bootstrap, TRAINING, reports)
    produce(bootstrap, ROLLOUTS, steps)
    produce(bootstrap, MONITORING, [(model.encode(), alert.SerializeToString())])
    # One partition each, read in order: once the bad report is dead-lettered, the replay before it was read.
    wait_for(lambda: query(stack, f"SELECT reason, origin_topic FROM dead_letters WHERE message_key = '{model}'"),
             90, what="the bad report's dead letter")
    return model, dataset


def test_reports_and_steps_from_kafka_are_stored_once_each(stack, loop):
    model, dataset = loop
    [runs] = query(stack, f"SELECT count() AS n, uniqExact(event_id) AS ids FROM training_runs "
                          f"WHERE dataset = '{dataset}'")
    assert (runs["n"], runs["ids"]) == (3, 3)
    [steps] = query(stack, f"SELECT count() AS n, uniqExact(event_id) AS ids FROM rollout_events "
                           f"WHERE model_name = '{model}'")
    assert (steps["n"], steps["ids"]) == (5, 5)
    # The rollback's copy on vigil.monitoring: a monitoring row, no second rollout row, no dead letter.
    assert query(stack, f"SELECT kind FROM monitoring_events WHERE subject = '{model}'") == [{"kind": "rollout"}]
    assert count(stack, "rollout_events", f"model_name = '{model}' AND stage = 'rolled_back'") == 1
    assert query(stack, f"SELECT reason, origin_topic FROM dead_letters WHERE message_key = '{model}'") == [
        {"reason": "invalid_event", "origin_topic": TRAINING}]


def test_the_loop_queries_answer_through_the_api(stack, loop):
    model, dataset = loop
    [run] = named(stack, "training_runs", dataset=dataset)
    assert (run["run_id"], run["base_model"], run["state"], run["step"], run["elapsed_s"]) == (
        f"run-{dataset}", model, "eligible", "evaluate", 200)
    assert (run["candidate_version"], run["champion_version"], run["candidate_map50"], run["champion_map50"]) == (
        "5", "4", 0.61, 0.52)
    events = named(stack, "training_events", run_id=f"run-{dataset}")
    assert [(e["state"], e["done"], e["eta_s"]) for e in events] == [
        ("started", 0, None), ("progress", 90, 30.0), ("eligible", 2, 0.0)]
    steps = named(stack, "rollout_steps", model_name=model)
    assert [(s["candidate_version"], s["previous_stage"], s["stage"]) for s in steps] == [
        ("5", "", "shadow"), ("5", "shadow", "canary"), ("5", "canary", "promoted"), ("6", "", "shadow"),
        ("6", "shadow", "rolled_back")]
    assert steps[-1]["reason"] == "disagreement 0.62 > 0.40" and steps[-1]["checks"]["disagreement"] == 0.62
    assert (steps[-1]["registry_version"], steps[-1]["cameras"]) == (6, ["dock", "lobby"])
    rollouts = named(stack, "rollouts", model_name=model)
    assert [(r["candidate_version"], r["stages"], r["stage"]) for r in rollouts] == [
        ("6", ["shadow", "rolled_back"], "rolled_back"), ("5", ["shadow", "canary", "promoted"], "promoted")]


def test_the_dashboard_shows_the_run_and_each_rollout(stack, loop):
    model, dataset = loop
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(f"{stack.config.query_api_url}/?token={os.environ[QUERY_API_TOKEN]}")
        page.wait_for_selector(f"#training-runs tr[data-dataset='{dataset}']", timeout=30_000)
        page.wait_for_selector(f"#rollouts tr[data-model='{model}'][data-stage='rolled_back']", timeout=30_000)
        page.locator("#loop-panel").screenshot(path=str(ARTIFACTS / "dashboard-loop.png"))
        run = page.locator(f"#training-runs tr[data-dataset='{dataset}'] td").all_inner_texts()
        promoted = page.locator(f"#rollouts tr[data-model='{model}'][data-stage='promoted'] td").all_inner_texts()
        rolled_back = page.locator(f"#rollouts tr[data-model='{model}'][data-stage='rolled_back'] td"
                                   ).all_inner_texts()
        error = page.inner_text("#error")
    assert error == ""
    # started, dataset@version, base model, state, progress, mAP candidate / champion, why
    assert run[1:4] == [f"{dataset}@b2c3d4e5f6a7", model, "eligible"], run
    assert run[5] == "0.610 / 0.520 (v5 vs v4)", run
    # model, candidate, champion, steps, why, last step, trained on cameras
    assert promoted[:5] == [model, "5", "4", "shadow → canary → promoted",
                            "canary passed its checks over 300 frames"], promoted
    assert promoted[6] == "dock, lobby", promoted
    assert rolled_back[:5] == [model, "6", "5", "shadow → rolled back", "disagreement 0.62 > 0.40"], rolled_back
