"""An insert that reached inference_events but not its views (a SIGKILL between the two), then the replay: on the
real engine (chdb), the views are made whole again and nothing is counted twice."""
from __future__ import annotations

import contextlib
import time

import pytest

from libs.common.envelope import derived_envelope, new_envelope
from protos import events_pb2
from services.metrics.rows import dead_letter_row, inference_row
from services.metrics.sink import EventSink
from services.metrics.store import MetricsStore
from services.metrics.view_repair import VIEWS

INFERENCE_VIEWS = ("detections_from_inference", "inference_minute_from_inference", "latency_minute_from_inference",
                   "detections_minute_from_inference")


@pytest.fixture()
def store(tmp_path):
    store = MetricsStore.open(tmp_path / "chdb", query_max_rows=1000)
    store.migrate()
    yield store
    store.close()


@contextlib.contextmanager
def views_detached(store: MetricsStore, *views: str):
    """Inserts meanwhile reach the source table only, as when the sink dies after the table's part is committed
    and before the views' are."""
    with store.writing() as client:
        for view in views:
            client.command(f"DETACH TABLE {view}")
    try:
        yield
    finally:
        with store.writing() as client:
            for view in views:
                client.command(f"ATTACH TABLE {view}")


def inference_result(camera_id: str, labels: tuple[str, ...], seconds_ago: float) -> events_pb2.InferenceResult:
    frame_env = new_envelope(f"camera/{camera_id}", "ingest")
    result = events_pb2.InferenceResult(
        envelope=derived_envelope(frame_env, "inference", "m:1"), camera_id=camera_id,
        frame_event_id=frame_env.event_id, frame_sequence=3,
        model=events_pb2.ModelRef(name="yolov3-tiny", version="1", precision="f32"),
        detections=[events_pb2.Detection(label=label, class_id=i, score=0.5, box=events_pb2.Box(x1=1, y1=2, x2=3, y2=4))
                    for i, label in enumerate(labels)],
        stage_latency_ms={"infer": 12.5, "decode": 1.0}, width=768, height=576)
    result.envelope.event_time.FromNanoseconds(int((time.time() - seconds_ago) * 1e9))
    return result


def batch(camera_id: str, count: int, first: int = 0) -> list[events_pb2.InferenceResult]:
    """Events over three minutes, some without detections."""
    return [inference_result(camera_id, ("person", "car")[:i % 3], seconds_ago=180 - (first + i) * 180 / count / 2)
            for i in range(first, first + count)]


def counts(store: MetricsStore, camera_id: str) -> dict[str, int]:
    row = store.query_readonly(
        f"SELECT (SELECT count() FROM inference_events WHERE camera_id = '{camera_id}'),"
        f" (SELECT count() FROM detections WHERE camera_id = '{camera_id}'),"
        f" (SELECT sum(frames) FROM inference_minute WHERE camera_id = '{camera_id}'),"
        f" (SELECT sum(detections) FROM inference_minute WHERE camera_id = '{camera_id}'),"
        f" (SELECT sum(samples) FROM latency_minute WHERE camera_id = '{camera_id}'),"
        f" (SELECT sum(detections) FROM detections_minute WHERE camera_id = '{camera_id}'),"
        f" (SELECT toString(quantilesMerge(0.5, 0.95, 0.99)(latency_ms)) FROM latency_minute"
        f"  WHERE camera_id = '{camera_id}' AND stage = 'total')")["rows"][0]
    return dict(zip(("events", "detections", "frames", "frame_detections", "latency_samples", "label_detections",
                     "total_latency_quantiles"), row))


def expected(events: list[events_pb2.InferenceResult]) -> dict[str, int]:
    detections = sum(len(e.detections) for e in events)
    return {"events": len(events), "detections": detections, "frames": len(events), "frame_detections": detections,
            "latency_samples": 3 * len(events), "label_detections": detections,
            "total_latency_quantiles": "[13.5,13.5,13.5]"}


def protobuf(events) -> list[tuple[bytes, int]]:
    now_ms = int(time.time() * 1000)
    return [(e.SerializeToString(), now_ms) for e in events]


def write(sink: EventSink, events, engine_path: bool) -> tuple[int, int]:
    if engine_path:
        written = sink.write_inference_protobuf(protobuf(events))
        return written.stored, written.duplicates
    report = sink.write({"inference_events": [inference_row(e, int(time.time() * 1000)) for e in events]})
    return report.stored, report.duplicates


@pytest.mark.parametrize("engine_path", [True, False], ids=["engine-parsed", "python-rows"])
def test_views_an_interrupted_insert_left_short_are_made_whole_by_the_replay(store, engine_path):
    sink = EventSink(store, engine_parses_inference=engine_path)
    whole, cut, partly = batch("cam", 60), batch("cam", 60, first=60), batch("cam", 30, first=120)
    assert write(sink, whole, engine_path) == (60, 0)
    with views_detached(store, *INFERENCE_VIEWS):
        assert write(sink, cut, engine_path) == (60, 0)
    with views_detached(store, "latency_minute_from_inference"):   # the other views got this one
        assert write(sink, partly, engine_path) == (30, 0)
    events = whole + cut + partly
    assert counts(store, "cam")["detections"] < expected(events)["detections"]

    # The uncommitted batches come again (in other batches than before), with events never seen.
    fresh = batch("cam", 20, first=150)
    assert write(sink, cut[:40] + fresh, engine_path) == (20, 40)
    assert write(sink, whole + cut[40:] + partly, engine_path) == (0, 110)
    assert counts(store, "cam") == expected(events + fresh)

    # A replay of whole views writes nothing: nothing is counted twice.
    assert write(sink, events + fresh, engine_path) == (0, 170)
    assert counts(store, "cam") == expected(events + fresh)


def test_a_rollup_minute_emptied_by_an_interrupted_repair_is_recomputed_at_the_next_replay(store):
    sink = EventSink(store)
    events = batch("emptied", 40)
    sink.write_inference_protobuf(protobuf(events))
    with store.writing() as client:   # the repair's delete happened, its insert did not
        client.command("DELETE FROM inference_minute WHERE camera_id = 'emptied' AND minute = "
                       "(SELECT max(minute) FROM inference_minute WHERE camera_id = 'emptied')")
    assert counts(store, "emptied")["frames"] < 40
    sink.write_inference_protobuf(protobuf(events[-1:]))
    assert counts(store, "emptied") == expected(events)


def test_a_delete_an_interrupted_repair_left_pending_never_applies_after_the_replay(store):
    sink = EventSink(store)
    events = batch("pending", 40)
    sink.write_inference_protobuf(protobuf(events))
    with store.writing() as client:
        # The repair's delete was written, then the sink died: the engine resumes it after the restart, in the
        # background (held back here until the replay is done).
        client.command("SYSTEM STOP MERGES inference_minute")
        client.command("DELETE FROM inference_minute WHERE camera_id = 'pending' SETTINGS lightweight_deletes_sync = 0")
    try:
        sink.write_inference_protobuf(protobuf(events[:1]))
    finally:
        with store.writing() as client:
            client.command("SYSTEM START MERGES inference_minute")
    with store.writing() as client:
        deadline = time.monotonic() + 30
        while client.command("SELECT count() FROM system.mutations WHERE database = currentDatabase() "
                             "AND table = 'inference_minute' AND NOT is_done") and time.monotonic() < deadline:
            time.sleep(0.05)
    assert counts(store, "pending") == expected(events)


def test_dead_letter_minutes_are_repaired_on_the_python_path(store):
    sink = EventSink(store)
    now_ms = int(time.time() * 1000)
    letters = [dead_letter_row("vigil.dlq", 0, offset, now_ms - offset * 20_000, {}, None, 10)
               for offset in range(10)]
    sink.write({"dead_letters": letters[:5]})
    with views_detached(store, "dead_letters_minute_from_dead_letters"):
        sink.write({"dead_letters": letters[5:]})
    assert sink.write({"dead_letters": letters}).duplicates == 10
    rolled = store.query_readonly("SELECT sum(letters) FROM dead_letters_minute")["rows"][0][0]
    assert rolled == 10


def test_every_view_of_a_repaired_source_is_declared(store):
    """A view a later migration adds on a table the sink repairs must be declared in VIEWS (or it is never repaired)."""
    with store.writing() as client:
        database = client.command("SELECT currentDatabase()")
        views = client.query("SELECT name, create_table_query FROM system.tables "
                             "WHERE database = currentDatabase() AND engine = 'MaterializedView'").result_rows
    declared = {(source, derived.table) for source, spec in VIEWS.items() for derived in (*spec.rows, *spec.rollups)}
    found = set()
    for name, create in views:
        create = create.replace(f"{database}.", "")
        target = create.split(" TO ", 1)[1].split()[0]
        found |= {(source, target) for source in VIEWS if f"FROM {source}" in create}
    assert found == declared
