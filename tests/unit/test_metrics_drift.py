"""Drift in the metrics store: every closed window (vigil.drift.windows) as a drift_windows row and a drift_scores
row per score, alerts as drift_alerts rows, each stored once however often it is delivered; the named queries the
dashboard's Drift panel and `vigil drift status` read, on the real engine (chdb)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from libs.common.envelope import timestamp_from_ns
from protos import events_pb2
from services.metrics.queries import NAMED_QUERIES, bind
from services.metrics.rows import drift_subject, drift_window_rows, monitoring_rows
from services.metrics.sink import EventSink
from services.metrics.store import MetricsStore

# Inside the tables' TTL.
T0 = (datetime.now(timezone.utc) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
WINDOW = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=1)).isoformat()}
LOBBY_MODEL = "camera/lobby|yolov3-tiny|3"


def ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1e9)


def window(subject: str, minute: int, status: str = "scored", alert_state: str = "ok",
           scores: tuple[tuple[str, float, bool], ...] = (), camera: str = "lobby", sensor: str = "",
           model: tuple[str, str] = ("", ""), event_id: str | None = None) -> events_pb2.DriftWindow:
    start, end = T0 + timedelta(minutes=minute), T0 + timedelta(minutes=minute + 1)
    event = events_pb2.DriftWindow(
        envelope=events_pb2.Envelope(event_id=event_id or str(uuid.uuid4()), event_time=timestamp_from_ns(ns(end)),
                                     source=subject.split("|")[0], producer="drift"),
        subject=subject, camera_id=camera, sensor_id=sensor, model=events_pb2.ModelRef(name=model[0], version=model[1]),
        window_start=timestamp_from_ns(ns(start)), window_end=timestamp_from_ns(ns(end)), count=300, status=status,
        alert_state=alert_state, summary=b"{}")
    for feature, score, drifted in scores:
        event.scores.append(events_pb2.DriftScore(feature=feature, metric="ks", score=score, threshold=0.2,
                                                  drifted=drifted, p_value=0.01 if drifted else 0.5,
                                                  window_count=300, reference_count=3000))
    return event


def alert(state: str, minute: int, camera: str = "lobby", model: tuple[str, str] = ("yolov3-tiny", "3"),
          sensor: str = "") -> events_pb2.MonitoringEvent:
    at = T0 + timedelta(minutes=minute)
    top = [events_pb2.DriftScore(feature="output.score.person", metric="ks", score=0.41, threshold=0.2, drifted=True),
           events_pb2.DriftScore(feature="output.detections", metric="wasserstein", score=0.3, threshold=0.1,
                                 drifted=True)] if state == "raised" else []
    return events_pb2.MonitoringEvent(
        envelope=events_pb2.Envelope(event_id=str(uuid.uuid4()), event_time=timestamp_from_ns(ns(at)),
                                     source=f"camera/{camera}", producer="drift"),
        drift_alert=events_pb2.DriftAlert(
            model_name=model[0], model_version=model[1], camera_id=camera, sensor_id=sensor, state=state,
            feature=top[0].feature if top else "", metric="ks", score=top[0].score if top else 0.0, threshold=0.2,
            window_start=timestamp_from_ns(ns(at - timedelta(minutes=1))), window_end=timestamp_from_ns(ns(at)),
            windows=3, top_features=top))


def test_a_scored_window_is_one_window_row_and_a_score_row_per_feature():
    event = window(LOBBY_MODEL, 0, alert_state="drifting", model=("yolov3-tiny", "3"),
                   scores=(("output.score.person", 0.41, True), ("output.detections", 0.05, False)))
    rows = drift_window_rows(event)
    [w] = rows["drift_windows"]
    assert w[1:6] == (LOBBY_MODEL, "lobby", "", "yolov3-tiny", "3")
    assert w[9:] == (300, "scored", "drifting", 2, ["output.score.person"])
    scores = rows["drift_scores"]
    assert [(s[2], s[3], s[5], s[6], s[13], s[14]) for s in scores] == [
        ("output.score.person", "ks", 0.41, 0.2, True, 0.01), ("output.detections", "ks", 0.05, 0.2, False, 0.5)]
    assert {s[0] for s in scores} == {w[0]} and all(s[10] == LOBBY_MODEL and s[17:] == ("scored", "drifting")
                                                    for s in scores)


def test_a_window_without_scores_is_still_a_window_row():
    rows = drift_window_rows(window("camera/lobby", 0, status="insufficient_data"))
    assert rows["drift_scores"] == []
    assert rows["drift_windows"][0][10:] == ("insufficient_data", "ok", 0, [])


def test_a_drift_alert_is_a_monitoring_event_and_an_alert_row_not_a_score():
    rows = monitoring_rows(alert("raised", 5))
    assert set(rows) == {"monitoring_events", "drift_alerts"}
    [row] = rows["drift_alerts"]
    assert row[1:8] == (LOBBY_MODEL, "lobby", "", "yolov3-tiny", "3", "raised", 3)
    assert row[11:] == (["output.score.person", "output.detections"], ["ks", "wasserstein"], [0.41, 0.3], [0.2, 0.1])
    assert rows["monitoring_events"][0][4:6] == ("drift_alert", LOBBY_MODEL)


def test_the_subject_of_an_alert_is_the_one_its_windows_are_keyed_by():
    assert drift_subject("lobby", "", "", "") == "camera/lobby"
    assert drift_subject("lobby", "", "yolov3-tiny", "3") == LOBBY_MODEL
    assert drift_subject("", "t-17", "", "") == "sensor/t-17"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = MetricsStore.open(tmp_path_factory.mktemp("chdb"), query_max_rows=1000, query_max_seconds=5)
    store.migrate()
    yield store
    store.close()


@pytest.fixture(scope="module")
def stored(store):
    """lobby's images: reference, then scored clean, clean, then drifting; lobby under yolov3-tiny 3: raised at
    minute 5 and still open; the dock camera raised at 3, cleared at 8; sensor t-17: too few readings."""
    sink = EventSink(store)
    events = [
        window("camera/lobby", 0, status="reference"),
        window("camera/lobby", 1, scores=(("input.mean_luma", 0.05, False), ("input.contrast", 0.04, False))),
        window("camera/lobby", 2, scores=(("input.mean_luma", 0.08, False), ("input.contrast", 0.03, False))),
        window("camera/lobby", 3, alert_state="drifting",
               scores=(("input.mean_luma", 0.6, True), ("input.contrast", 0.05, False))),
        window(LOBBY_MODEL, 4, alert_state="alert", model=("yolov3-tiny", "3"),
               scores=(("output.score.person", 0.41, True),)),
        window("sensor/t-17", 4, status="insufficient_data", camera="", sensor="t-17"),
    ]
    alerts = [alert("raised", 5), alert("raised", 3, camera="dock"), alert("cleared", 8, camera="dock")]
    rows: dict[str, list] = {}
    for event in events:
        for table, table_rows in drift_window_rows(event).items():
            rows.setdefault(table, []).extend(table_rows)
    for event in alerts:
        for table, table_rows in monitoring_rows(event).items():
            rows.setdefault(table, []).extend(table_rows)
    report = sink.write(rows)
    assert report.per_table == {"drift_windows": 6, "drift_scores": 7, "drift_alerts": 3, "monitoring_events": 3}
    return events


def named(store, name: str, **parameters) -> list[dict]:
    query = NAMED_QUERIES[name]
    answer = store.query_readonly(query.sql, bind(query, {**WINDOW, **parameters}))
    return [dict(zip(answer["columns"], row)) for row in answer["rows"]]


def test_a_window_delivered_again_is_stored_once(store, stored):
    sink = EventSink(store)
    # A window closed again after a restart: the same event id, in a later batch and twice within one batch.
    again = window("camera/lobby", 3, alert_state="drifting", event_id=stored[3].envelope.event_id,
                   scores=(("input.mean_luma", 0.6, True), ("input.contrast", 0.05, False)))
    assert sink.write(drift_window_rows(again)).stored == 0
    fresh = window("camera/lobby", 9, scores=(("input.mean_luma", 0.1, False),))
    twice = {table: rows * 2 for table, rows in drift_window_rows(fresh).items()}
    assert sink.write(twice).per_table == {"drift_windows": 1, "drift_scores": 1}
    counts = store.query_readonly(
        "SELECT (SELECT count() FROM drift_scores WHERE event_id = {a:UUID}) AS a_scores, "
        "(SELECT count() FROM drift_windows WHERE event_id = {a:UUID}) AS a_windows, "
        "(SELECT count() FROM drift_scores WHERE event_id = {b:UUID}) AS b_scores",
        {"a": stored[3].envelope.event_id, "b": fresh.envelope.event_id})["rows"]
    assert counts == [[2, 1, 1]]


def test_drift_scores_over_time_per_camera_and_feature(store, stored):
    luma = named(store, "drift_scores", subject="camera/lobby", feature="input.mean_luma")
    assert [(r["event_time"].strftime("%H:%M"), r["score"], r["drifted"]) for r in luma][:3] == [
        ((T0 + timedelta(minutes=m)).strftime("%H:%M"), s, d) for m, s, d in ((2, 0.05, False), (3, 0.08, False),
                                                                           (4, 0.6, True))]
    camera = named(store, "drift_scores", camera_id="lobby", drifted_only=1)
    assert [(r["subject"], r["feature"], r["metric"], r["threshold"]) for r in camera] == [
        ("camera/lobby", "input.mean_luma", "ks", 0.2), (LOBBY_MODEL, "output.score.person", "ks", 0.2)]
    assert camera[1]["model_version"] == "3" and camera[1]["alert_state"] == "alert"
    assert named(store, "drift_scores", sensor_id="t-17") == []


def test_the_newest_window_of_each_subject_with_its_status_and_alert_state(store, stored):
    latest = {r["subject"]: r for r in named(store, "drift_windows_latest")}
    assert {s: (r["status"], r["alert_state"]) for s, r in latest.items() if s != "camera/lobby"} == {
        LOBBY_MODEL: ("scored", "alert"), "sensor/t-17": ("insufficient_data", "ok")}
    assert latest["sensor/t-17"]["sensor_id"] == "t-17" and latest["sensor/t-17"]["count"] == 300
    assert latest[LOBBY_MODEL]["drifted_features"] == ["output.score.person"]
    assert [r["subject"] for r in named(store, "drift_windows_latest", sensor_id="t-17")] == ["sensor/t-17"]


def test_open_alerts_are_the_raised_ones_not_cleared_since(store, stored):
    # Without a window: the query's own (every alert the store keeps).
    open_alerts = named(store, "drift_alerts_open", since="", until="")
    assert [(r["subject"], r["model_version"], r["windows"]) for r in open_alerts] == [(LOBBY_MODEL, "3", 3)]
    assert open_alerts[0]["top_features"] == ["output.score.person", "output.detections"]
    assert open_alerts[0]["top_scores"] == [0.41, 0.3]
    assert named(store, "drift_alerts_open", camera_id="dock") == []
    # Before the dock camera's alert was cleared, it was open.
    before_clear = named(store, "drift_alerts_open", camera_id="dock",
                         until=(T0 + timedelta(minutes=6)).isoformat())
    assert [r["subject"] for r in before_clear] == ["camera/dock|yolov3-tiny|3"]


def test_alerts_stored_before_drift_alerts_existed_are_backfilled_from_monitoring_events(store, stored):
    from services.metrics.migrations import MIGRATIONS
    [(_, _, backfill)] = [m for m in MIGRATIONS if m[1] == "drift_alerts_backfill"]
    columns = "subject, camera_id, sensor_id, model_name, model_version, state, windows, window_start, window_end, " \
              "event_time, top_features, top_metrics, top_scores, top_thresholds"
    ordered = f"SELECT toString(event_id), {columns} FROM drift_alerts ORDER BY event_time, subject"
    as_sunk = store.query_readonly(ordered)["rows"]
    # An alert of an older producer (one feature, no list, no version), in monitoring_events only: an older sink's.
    legacy = monitoring_rows(events_pb2.MonitoringEvent(
        envelope=events_pb2.Envelope(event_id=str(uuid.uuid4()), event_time=timestamp_from_ns(ns(T0))),
        drift_alert=events_pb2.DriftAlert(model_name="yolov3-tiny", camera_id="gate", feature="input.mean_luma",
                                          metric="psi", score=0.3, threshold=0.2)))
    EventSink(store).write({"monitoring_events": legacy["monitoring_events"]})
    with store.writing() as client:
        client.command("TRUNCATE TABLE drift_alerts")
        client.command(backfill)
    backfilled = store.query_readonly(ordered)["rows"]
    # The sink's rows again, exactly, and the older alert as the sink would write it now.
    assert [r for r in backfilled if r[1] != "camera/gate|yolov3-tiny"] == as_sunk
    [gate] = [r for r in backfilled if r[1] == "camera/gate|yolov3-tiny"]
    assert gate[6:8] == ["raised", 0] and gate[11:] == [["input.mean_luma"], ["psi"], [0.3], [0.2]]
    assert legacy["drift_alerts"][0][1] == "camera/gate|yolov3-tiny"
    with store.writing() as client:  # the other tests' alerts as they were
        client.command("DELETE FROM drift_alerts WHERE camera_id = 'gate'")
    assert store.query_readonly(ordered)["rows"] == as_sunk


def test_the_sink_reads_drift_windows_and_rejects_one_without_a_subject(store):
    from libs.common.kafka import Rejected
    from libs.common.topics import DRIFT_WINDOWS
    from services.metrics.kafka_adapter import SINK_TOPICS, MetricsBatchHandler
    from tests.unit.test_metrics_protobuf_ingest import KafkaMessage
    assert DRIFT_WINDOWS in SINK_TOPICS
    handler = MetricsBatchHandler(EventSink(store), "vigil.dlq")
    good = window("camera/handler", 30, camera="handler", scores=(("input.mean_luma", 0.1, False),))
    nameless = window("", 30, camera="handler")
    outcomes = handler([KafkaMessage(DRIFT_WINDOWS, good.SerializeToString()),
                        KafkaMessage(DRIFT_WINDOWS, nameless.SerializeToString())])
    assert outcomes[0] == []
    assert isinstance(outcomes[1], Rejected) and "subject is empty" in outcomes[1].detail, outcomes[1]
    assert store.query_readonly("SELECT (SELECT count() FROM drift_windows WHERE camera_id = 'handler'), "
                                "(SELECT count() FROM drift_scores WHERE camera_id = 'handler')")["rows"] == [[1, 1]]
