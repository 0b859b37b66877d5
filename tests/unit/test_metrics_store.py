"""The sink against the real ClickHouse engine (chdb, in-process)."""
import threading
import time

import pytest

from libs.common.envelope import derived_envelope, new_envelope
from protos import events_pb2
from services.metrics.migrations import MIGRATIONS
from services.metrics.rows import InvalidEvent, inference_row
from services.metrics.sink import EventSink
from services.metrics.store import MetricsStore, QueryLimitExceeded, QueryRefused


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = MetricsStore.open(tmp_path_factory.mktemp("chdb"), query_max_rows=10, query_max_seconds=5)
    store.migrate()
    yield store
    store.close()


def inference_result(camera_id="cam-1", labels=("person", "car")) -> events_pb2.InferenceResult:
    frame_env = new_envelope(f"camera/{camera_id}", "ingest")
    return events_pb2.InferenceResult(
        envelope=derived_envelope(frame_env, "inference", "m:1"),
        camera_id=camera_id, frame_event_id=frame_env.event_id, frame_sequence=7,
        model=events_pb2.ModelRef(name="yolov3-tiny", version="1", precision="f32"),
        detections=[events_pb2.Detection(label=l, class_id=i, score=0.5 + i / 10,
                                         box=events_pb2.Box(x1=1, y1=2, x2=30, y2=40)) for i, l in enumerate(labels)],
        stage_latency_ms={"infer": 12.5, "decode": 1.0}, width=768, height=576,
    )


def test_migrations_are_recorded_and_applied_once(store):
    assert store.migrate() == []
    versions = store.query_readonly("SELECT arraySort(groupArray(version)) FROM schema_migrations")["rows"][0][0]
    assert versions == [version for version, _, _ in MIGRATIONS]
    assert versions[:2] == [1, 2]


def test_each_event_id_is_stored_once_across_batches_and_within_one(store):
    sink = EventSink(store)
    results = [inference_result(camera_id="dedupe") for _ in range(5)]
    rows = [inference_row(r, int(time.time() * 1000)) for r in results]
    assert sink.write({"inference_events": rows + rows[:2]}).stored == 5   # duplicates inside one batch
    report = sink.write({"inference_events": rows[1:4]})                     # a replay of stored events
    assert (report.stored, report.duplicates) == (0, 3)
    count, unique = store.query_readonly(
        "SELECT count(), uniqExact(event_id) FROM inference_events WHERE camera_id = 'dedupe'")["rows"][0]
    assert count == unique == 5


def test_a_row_keeps_detections_and_latencies(store):
    result = inference_result(camera_id="detail")
    EventSink(store).write({"inference_events": [inference_row(result, 1_700_000_000_000)]})
    row = store.query_readonly(
        "SELECT labels, detection_count, stage_latency_ms['infer'], toString(frame_event_id) "
        "FROM inference_events WHERE camera_id = 'detail'")["rows"][0]
    assert row == [["person", "car"], 2, 12.5, result.frame_event_id]


def test_an_event_id_that_is_not_a_uuid_is_invalid():
    result = inference_result()
    result.envelope.event_id = "not-a-uuid"
    with pytest.raises(InvalidEvent, match="envelope.event_id"):
        inference_row(result, 0)


@pytest.mark.parametrize("sql", [
    "INSERT INTO inference_events (event_id) VALUES (generateUUIDv4())",
    "DROP TABLE inference_events",
    "CREATE TABLE x (a Int32) ENGINE = Memory",
])
def test_readonly_queries_refuse_writes(store, sql):
    with pytest.raises(QueryRefused):
        store.query_readonly(sql)


def test_row_limit_is_enforced_by_the_engine(store):
    with pytest.raises(Exception, match="(?i)limit|TOO_MANY_ROWS"):
        store.query_readonly("SELECT number FROM numbers(1000)")


# Runs until the engine stops it at the time limit: a query that keeps a core busy, reading no table.
LONG_QUERY = "SELECT count() FROM numbers(100000000000) WHERE sipHash64(number) % 7 = 3"
# Needs a few hundred MiB: ten million numbers kept in a million arrays.
HUNGRY_QUERY = "SELECT count() FROM (SELECT number % 1000000 AS k, groupArray(number) FROM numbers(10000000) GROUP BY k)"


def test_back_to_back_long_queries_never_stall_ingestion(store, monkeypatch):
    """While the engine runs each query (timed inside the reading client, so waiting for a lock is not counted as
    running), inserts start and complete. Before, a query held the store's only lock, which inserts need."""
    # The engine allows one data directory per process: a second store on the module's, with its own limits.
    store = MetricsStore.open(store.path, query_max_rows=10, query_max_seconds=2)
    running: list[tuple[float, float]] = []
    engine_query = store._reader.query

    def timed(*args, **kwargs):
        began = time.monotonic()
        try:
            return engine_query(*args, **kwargs)
        finally:
            running.append((began, time.monotonic()))

    monkeypatch.setattr(store._reader, "query", timed)
    stop = threading.Event()
    failures: list[str] = []

    def ask() -> None:
        while not stop.is_set():
            try:
                store.query_adhoc(LONG_QUERY)
            except QueryLimitExceeded as exc:
                failures.append(str(exc))

    asker = threading.Thread(target=ask)
    asker.start()
    sink = EventSink(store)
    inserts: list[tuple[float, float]] = []
    try:
        while len(running) < 3:   # three queries back to back, each stopped by the engine at 2 s
            rows = [inference_row(inference_result(camera_id="busy"), int(time.time() * 1000)) for _ in range(100)]
            began = time.monotonic()
            sink.write({"inference_events": rows})
            inserts.append((began, time.monotonic()))
    finally:
        stop.set()
        asker.join()
        store.close()
    assert failures and all("longer than a query may run (2 s)" in f for f in failures)
    during = [sum(q_began < i_began and i_ended < q_ended for i_began, i_ended in inserts)
              for q_began, q_ended in running[:3]]
    assert all(n >= 1 for n in during), f"inserts completed within each query: {during}"


def test_a_query_needing_more_memory_than_its_limit_fails_cleanly_and_the_sink_keeps_serving(store):
    store = MetricsStore.open(store.path, query_max_memory_bytes=32 * 2**20)
    try:
        with pytest.raises(QueryLimitExceeded, match=r"more memory than a query may use \(32 MiB\)"):
            store.query_adhoc(HUNGRY_QUERY)
        sink = EventSink(store)
        assert sink.write({"inference_events": [inference_row(inference_result(camera_id="after"), 0)]}).stored == 1
        assert store.query_adhoc("SELECT count() FROM inference_events WHERE camera_id = 'after'")["rows"] == [[1]]
    finally:
        store.close()
