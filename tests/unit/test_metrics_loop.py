"""The closed loop in the metrics store: every TrainingRun on vigil.training is a training_runs row and every
RolloutEvent on vigil.rollouts a rollout_events row, each stored once however often delivered; a rollback's copy on
vigil.monitoring is a monitoring_events row only; the named queries the dashboard's Loop panel reads (training_runs,
training_events, rollout_steps, rollouts), on the real engine (chdb)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from libs.common.envelope import timestamp_from_ns
from libs.common.kafka import Rejected
from libs.common.topics import MONITORING, ROLLOUTS, TRAINING
from protos import events_pb2
from services.metrics.kafka_adapter import SINK_TOPICS, MetricsBatchHandler
from services.metrics.queries import NAMED_QUERIES, bind
from services.metrics.rows import (MONITORING as MONITORING_TABLE, ROLLOUT_EVENTS, TRAINING_RUNS, InvalidEvent,
                                   monitoring_rows, rollout_event_row, training_run_row)
from services.metrics.sink import EventSink
# A migrated store on chdb of this module's own (a module-scoped fixture).
from tests.unit.test_metrics_drift import store  # noqa: F401
from tests.unit.test_metrics_protobuf_ingest import KafkaMessage

T0 = (datetime.now(timezone.utc) - timedelta(hours=5)).replace(minute=0, second=0, microsecond=0)
WINDOW = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=3)).isoformat()}
MODEL = "yolov3-tiny"


def envelope(minute: float, producer: str, event_id: str | None = None) -> events_pb2.Envelope:
    moment = T0 + timedelta(minutes=minute)
    return events_pb2.Envelope(event_id=event_id or str(uuid.uuid4()), source=f"model/{MODEL}", producer=producer,
                               event_time=timestamp_from_ns(int(moment.timestamp() * 1e9)))


def report(run_id: str, state: str, minute: float, step: str = "", done: int = 0, total: int = 0,
           eta_s: float = -1.0, elapsed_s: float = 0.0, dataset: str = "people", version: str = "v2",
           base_model: str = MODEL, candidate: str = "", champion: str = "", candidate_map50: float = 0.0,
           champion_map50: float = 0.0, reasons: tuple[str, ...] = (), event_id: str | None = None
           ) -> events_pb2.TrainingRun:
    """A training job's report as the training service publishes it."""
    return events_pb2.TrainingRun(
        envelope=envelope(minute, "training", event_id), run_id=run_id, dataset=dataset, dataset_version=version,
        base_model=base_model, state=state, step=step, done=done, total=total, eta_s=eta_s,
        candidate=events_pb2.ModelRef(name=base_model if candidate else "", version=candidate, precision="fp32"),
        champion=events_pb2.ModelRef(name=base_model if champion else "", version=champion),
        candidate_map50=candidate_map50, champion_map50=champion_map50, reasons=list(reasons), elapsed_s=elapsed_s)


def step(candidate: str, stage: str, previous: str, minute: float, reason: str = "", champion: str = "4",
         checks: dict[str, float] | None = None, canary_share: float = 0.0, actor: str = "rollout",
         model: str = MODEL, event_id: str | None = None, cameras: tuple[str, ...] = ("dock", "lobby")
         ) -> events_pb2.RolloutEvent:
    """A rollout step as the rollout controller publishes it; the registry version is the candidate's plus 10."""
    return events_pb2.RolloutEvent(
        envelope=envelope(minute, "rollout", event_id),
        candidate=events_pb2.ModelRef(name=model, version=candidate, precision="fp32"),
        champion=events_pb2.ModelRef(name=model, version=champion), stage=stage, previous_stage=previous,
        reason=reason, checks=checks or {}, canary_share=canary_share, actor=actor, cameras=list(cameras),
        registry_version=int(candidate) + 10 if candidate else 0)


def rollback_alert(rollout: events_pb2.RolloutEvent) -> events_pb2.MonitoringEvent:
    """The rollback again on vigil.monitoring, for alerting: a MonitoringEvent of its own carrying the step."""
    return events_pb2.MonitoringEvent(envelope=envelope(0, "rollout"), rollout=rollout)


def test_a_training_report_is_one_row_with_both_models_and_their_map():
    event = report("r1", "eligible", 4, step="evaluate", done=2, total=2, eta_s=0.0, elapsed_s=240.5,
                   candidate="5", champion="4", candidate_map50=0.61, champion_map50=0.52, reasons=("ok",))
    row = dict(zip(TRAINING_RUNS.columns, training_run_row(event)))
    assert str(row["event_id"]) == event.envelope.event_id
    assert (row["run_id"], row["dataset"], row["dataset_version"], row["base_model"], row["state"], row["step"]) == (
        "r1", "people", "v2", MODEL, "eligible", "evaluate")
    assert (row["done"], row["total"], row["eta_s"], row["elapsed_s"]) == (2, 2, 0.0, 240.5)
    assert (row["candidate_name"], row["candidate_version"], row["champion_name"], row["champion_version"]) == (
        MODEL, "5", MODEL, "4")
    assert (row["candidate_map50"], row["champion_map50"], row["reasons"]) == (0.61, 0.52, ["ok"])
    assert (row["producer"], row["event_time"]) == ("training", int((T0 + timedelta(minutes=4)).timestamp() * 1000))


def test_an_unknown_eta_is_null():
    row = dict(zip(TRAINING_RUNS.columns, training_run_row(report("r1", "progress", 1, step="fit", eta_s=-1))))
    assert row["eta_s"] is None


def test_a_rollout_step_is_one_row_with_its_checks():
    event = step("5", "canary", "shadow", 15, reason="shadow passed its checks over 300 frames",
                 checks={"frames": 300, "error_rate": 0.0, "disagreement": 0.12}, canary_share=0.5)
    row = dict(zip(ROLLOUT_EVENTS.columns, rollout_event_row(event)))
    assert str(row["event_id"]) == event.envelope.event_id
    assert (row["model_name"], row["candidate_version"], row["candidate_precision"], row["champion_name"],
            row["champion_version"]) == (MODEL, "5", "fp32", MODEL, "4")
    assert (row["stage"], row["previous_stage"], row["reason"], row["canary_share"], row["actor"]) == (
        "canary", "shadow", "shadow passed its checks over 300 frames", 0.5, "rollout")
    assert row["checks"] == {"frames": 300.0, "error_rate": 0.0, "disagreement": 0.12}
    assert (row["registry_version"], row["cameras"]) == (15, ["dock", "lobby"])


def test_reports_and_steps_without_what_they_are_about_are_invalid():
    with pytest.raises(InvalidEvent, match="run_id is empty"):
        training_run_row(report("", "started", 0))
    with pytest.raises(InvalidEvent, match="state is empty"):
        training_run_row(report("r1", "", 0))
    with pytest.raises(InvalidEvent, match="names no model"):
        rollout_event_row(step("5", "shadow", "", 0, model=""))
    with pytest.raises(InvalidEvent, match="stage is empty"):
        rollout_event_row(step("5", "", "", 0))
    with pytest.raises(InvalidEvent, match="not a UUID"):
        rollout_event_row(step("5", "shadow", "", 0, event_id="shadow-5"))


def test_a_rollbacks_monitoring_event_is_a_monitoring_row_only():
    # The rollout_events row of a rollback is the RolloutEvent on vigil.rollouts; its copy on vigil.monitoring is
    # for alerting. Before, the copy raised AttributeError (a RolloutEvent has no `model`): the sink retried the
    # batch forever.
    alert = rollback_alert(step("6", "rolled_back", "canary", 38, reason="disagreement 0.62 > 0.40"))
    rows = monitoring_rows(alert)
    assert set(rows) == {MONITORING_TABLE.name}
    [row] = rows[MONITORING_TABLE.name]
    named_row = dict(zip(MONITORING_TABLE.columns, row))
    assert (named_row["kind"], named_row["subject"]) == ("rollout", MODEL)
    assert '"reason": "disagreement 0.62 > 0.40"' in named_row["detail"]


def handle(store, *messages: KafkaMessage) -> list:
    return MetricsBatchHandler(EventSink(store), "vigil.dlq")(list(messages))


def message(event) -> KafkaMessage:
    if isinstance(event, events_pb2.TrainingRun):
        return KafkaMessage(TRAINING, event.SerializeToString(), key=event.base_model.encode())
    if isinstance(event, events_pb2.RolloutEvent):
        return KafkaMessage(ROLLOUTS, event.SerializeToString(), key=event.candidate.name.encode())
    return KafkaMessage(MONITORING, event.SerializeToString(), key=event.rollout.candidate.name.encode())


RUN_REPORTS = [
    # r1: people@v2 on yolov3-tiny, eligible, then the import (a later report without the gate's figures);
    # started and its first progress in one millisecond.
    report("r1", "started", 0, elapsed_s=0.0),
    report("r1", "progress", 0, step="proposals", done=0, total=180, eta_s=-1, elapsed_s=0.0),
    report("r1", "progress", 1, step="proposals", done=90, total=180, eta_s=30, elapsed_s=31),
    report("r1", "progress", 2, step="fit", done=1, total=1, eta_s=0, elapsed_s=95),
    report("r1", "eligible", 4, step="evaluate", done=2, total=2, eta_s=0, elapsed_s=200, candidate="5",
           champion="4", candidate_map50=0.61, champion_map50=0.52),
    report("r1", "progress", 5, step="import", done=1, total=1, eta_s=0, elapsed_s=230, candidate="5",
           champion="4"),
    # r2: people@v3, refused at the gate.
    report("r2", "started", 40, version="v3"),
    report("r2", "refused", 44, step="evaluate", version="v3", elapsed_s=240, champion="5", candidate_map50=0.40,
           champion_map50=0.61, reasons=("mAP@0.5 0.400 does not beat 0.610 by 0.02", "car: AP fell by 0.30")),
    # r3: vehicles@c3 on ssdlite-person, still fitting, its ETA known, then unknown.
    report("r3", "started", 60, dataset="vehicles", version="c3", base_model="ssdlite-person"),
    report("r3", "progress", 60.5, step="fit", done=1, total=10, eta_s=40, elapsed_s=30, dataset="vehicles",
           version="c3", base_model="ssdlite-person"),
    report("r3", "progress", 61, step="fit", done=3, total=10, eta_s=-1, elapsed_s=60, dataset="vehicles",
           version="c3", base_model="ssdlite-person"),
    # r4: failed.
    report("r4", "started", 70, version="v4"),
    report("r4", "failed", 71, step="proposals", version="v4", elapsed_s=12,
           reasons=("dataset people@v4 has no test split",)),
]
ROLLBACK = step("6", "rolled_back", "canary", 38, reason="disagreement 0.62 > 0.40", champion="5",
                checks={"frames": 250, "error_rate": 0.0, "disagreement": 0.62}, canary_share=0.5)
ROLLOUT_STEPS = [
    # yolov3-tiny 5: shadow, canary and promoted, the canary and the promotion in one millisecond (a hand-made
    # promotion right as the canary began).
    step("5", "shadow", "", 6, reason="eligible: mAP@0.5 0.61 > 0.52", cameras=("lobby", "dock")),
    step("5", "canary", "shadow", 16, reason="shadow passed its checks over 300 frames",
         checks={"frames": 300, "error_rate": 0.0, "latency_p95_ms": 31, "disagreement": 0.1}, canary_share=0.5),
    step("5", "promoted", "canary", 16, reason="promoted by hand", actor="ann",
         checks={"frames": 0}, canary_share=0.5),
    # yolov3-tiny 6 (forced past the gate): rolled back by the live checks during its canary.
    step("6", "shadow", "", 30, reason="forced past the gate", champion="5", actor="bob"),
    step("6", "canary", "shadow", 35, reason="shadow passed its checks over 300 frames", champion="5",
         checks={"frames": 300, "disagreement": 0.2}, canary_share=0.5),
    ROLLBACK,
    # Another model's shadow.
    step("2", "shadow", "", 50, reason="eligible", model="ssdlite-person", champion="1", cameras=("gate",)),
]


@pytest.fixture(scope="module")
def stored(store):
    """The reports and steps above, every message delivered twice in one batch and again in a later batch; the
    rollback's copy on vigil.monitoring with them."""
    messages = [message(e) for e in [*RUN_REPORTS, *ROLLOUT_STEPS, rollback_alert(ROLLBACK)]]
    assert handle(store, *messages, *messages) == [[]] * (2 * len(messages))
    assert handle(store, *messages) == [[]] * len(messages)


def named(store, name: str, **parameters) -> list[dict]:
    query = NAMED_QUERIES[name]
    answer = store.query_readonly(query.sql, bind(query, {**WINDOW, **parameters}))
    return [dict(zip(answer["columns"], row)) for row in answer["rows"]]


def test_the_sink_reads_the_training_and_rollout_topics():
    assert {TRAINING, ROLLOUTS} <= set(SINK_TOPICS)


def test_each_report_and_step_is_stored_once_however_often_delivered(store, stored):
    for table, events in (("training_runs", RUN_REPORTS), ("rollout_events", ROLLOUT_STEPS)):
        [[rows, ids]] = store.query_readonly(f"SELECT count(), uniqExact(event_id) FROM {table}")["rows"]
        assert (rows, ids) == (len(events), len(events)), table


def test_the_rollbacks_copy_on_monitoring_is_no_second_rollout_row(store, stored):
    [[rollbacks]] = store.query_readonly(
        "SELECT count() FROM rollout_events WHERE stage = 'rolled_back'")["rows"]
    assert rollbacks == 1
    assert store.query_readonly("SELECT kind, subject FROM monitoring_events WHERE kind = 'rollout'")["rows"] == [
        ["rollout", MODEL]]


def test_training_runs_lists_each_run_by_its_newest_report_with_the_gates_figures(store, stored):
    runs = {r["run_id"]: r for r in named(store, "training_runs")}
    assert [r["run_id"] for r in named(store, "training_runs")] == ["r4", "r3", "r2", "r1"]
    r1 = runs["r1"]
    # Its newest report is the import; the gate's figures are from the eligible one before it.
    assert (r1["state"], r1["step"], r1["done"], r1["total"], r1["elapsed_s"]) == ("progress", "import", 1, 1, 230)
    assert (r1["dataset"], r1["dataset_version"], r1["base_model"]) == ("people", "v2", MODEL)
    assert (r1["candidate_version"], r1["champion_version"], r1["candidate_map50"], r1["champion_map50"]) == (
        "5", "4", 0.61, 0.52)
    assert r1["started_time"].replace(tzinfo=timezone.utc) == T0
    r2 = runs["r2"]
    assert (r2["state"], r2["candidate_map50"], r2["champion_map50"]) == ("refused", 0.40, 0.61)
    assert r2["reasons"] == ["mAP@0.5 0.400 does not beat 0.610 by 0.02", "car: AP fell by 0.30"]
    r3 = runs["r3"]
    # Its newest report knows no ETA: null, not the 40 s of the report before.
    assert (r3["state"], r3["step"], r3["done"], r3["total"], r3["eta_s"]) == ("progress", "fit", 3, 10, None)
    assert (r3["candidate_map50"], r3["champion_map50"]) == (None, None)
    assert (runs["r4"]["state"], runs["r4"]["reasons"]) == ("failed", ["dataset people@v4 has no test split"])


def test_training_runs_filters_by_dataset_model_state_and_window(store, stored):
    assert [r["run_id"] for r in named(store, "training_runs", dataset="vehicles")] == ["r3"]
    assert [r["run_id"] for r in named(store, "training_runs", base_model=MODEL)] == ["r4", "r2", "r1"]
    assert [r["run_id"] for r in named(store, "training_runs", state="refused")] == ["r2"]
    assert [r["run_id"] for r in named(store, "training_runs", limit=2)] == ["r4", "r3"]
    # A run is in the window by its newest report: r1's ended at minute 5.
    assert [r["run_id"] for r in named(store, "training_runs", until=(T0 + timedelta(minutes=30)).isoformat())] == [
        "r1"]


def test_training_events_are_a_runs_reports_in_order(store, stored):
    events = named(store, "training_events", run_id="r1")
    assert [(e["state"], e["step"], e["done"]) for e in events] == [
        ("started", "", 0), ("progress", "proposals", 0), ("progress", "proposals", 90), ("progress", "fit", 1),
        ("eligible", "evaluate", 2), ("progress", "import", 1)]
    assert [e["eta_s"] for e in events[1:3]] == [None, 30.0]


def test_rollout_steps_are_each_models_steps_in_order(store, stored):
    steps = named(store, "rollout_steps")
    assert [(s["model_name"], s["candidate_version"], s["previous_stage"], s["stage"]) for s in steps] == [
        ("ssdlite-person", "2", "", "shadow"),
        (MODEL, "5", "", "shadow"), (MODEL, "5", "shadow", "canary"), (MODEL, "5", "canary", "promoted"),
        (MODEL, "6", "", "shadow"), (MODEL, "6", "shadow", "canary"), (MODEL, "6", "canary", "rolled_back")]
    rollback = steps[-1]
    assert (rollback["reason"], rollback["champion_version"], rollback["canary_share"], rollback["actor"]) == (
        "disagreement 0.62 > 0.40", "5", 0.5, "rollout")
    assert rollback["checks"] == {"frames": 250.0, "error_rate": 0.0, "disagreement": 0.62}
    assert (rollback["registry_version"], rollback["cameras"]) == (16, ["dock", "lobby"])
    assert [s["stage"] for s in named(store, "rollout_steps", model_name=MODEL, candidate_version="5")] == [
        "shadow", "canary", "promoted"]
    # The newest two steps, per model oldest first.
    assert [(s["model_name"], s["stage"]) for s in named(store, "rollout_steps", limit=2)] == [
        ("ssdlite-person", "shadow"), (MODEL, "rolled_back")]


def test_rollouts_give_each_candidates_path_and_where_it_is(store, stored):
    rollouts = named(store, "rollouts")
    assert [(r["model_name"], r["candidate_version"], r["stages"], r["stage"]) for r in rollouts] == [
        ("ssdlite-person", "2", ["shadow"], "shadow"),
        (MODEL, "6", ["shadow", "canary", "rolled_back"], "rolled_back"),
        (MODEL, "5", ["shadow", "canary", "promoted"], "promoted")]
    rolled_back = rollouts[1]
    assert (rolled_back["reason"], rolled_back["champion_version"], rolled_back["checks"]["disagreement"]) == (
        "disagreement 0.62 > 0.40", "5", 0.62)
    assert rolled_back["started_time"].replace(tzinfo=timezone.utc) == T0 + timedelta(minutes=30)
    assert [(r["registry_version"], r["cameras"]) for r in rollouts] == [
        (12, ["gate"]), (16, ["dock", "lobby"]), (15, ["dock", "lobby"])]
    assert [r["candidate_version"] for r in named(store, "rollouts", model_name="ssdlite-person")] == ["2"]


def test_bad_reports_and_steps_are_rejected(store):
    outcomes = handle(store, message(report("", "started", 0)), message(step("7", "", "", 0)),
                      KafkaMessage(TRAINING, b"\xff\xfe not a protobuf"),
                      KafkaMessage(ROLLOUTS, b"\xff\xfe not a protobuf"))
    assert [o.reason if isinstance(o, Rejected) else o for o in outcomes] == [
        "invalid_event", "invalid_event", "malformed_event", "malformed_event"]
    assert "run_id is empty" in outcomes[0].detail and "stage is empty" in outcomes[1].detail


def test_an_outcome_announced_again_later_under_its_id_is_stored_once(store):
    # The training service announces a run's outcome again when a replayed trigger finds the version trained
    # (services/training/run_events.py, already_trained): the same event id, a new event time.
    first = report("r9", "eligible", 0, step="evaluate", elapsed_s=300, candidate="9", champion="8",
                   candidate_map50=0.7, champion_map50=0.6)
    again = report("r9", "eligible", 90, step="evaluate", elapsed_s=0, candidate="9", champion="8",
                   candidate_map50=0.7, champion_map50=0.6, event_id=first.envelope.event_id)
    assert handle(store, message(first)) == [[]]
    assert handle(store, message(again)) == [[]]
    [[rows]] = store.query_readonly("SELECT count() FROM training_runs WHERE run_id = 'r9'")["rows"]
    assert rows == 1
    [run] = named(store, "training_runs", state="eligible", dataset="people", since="", until="")[:1]
    assert (run["run_id"], run["elapsed_s"]) == ("r9", 300)
