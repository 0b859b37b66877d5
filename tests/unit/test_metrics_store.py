"""The sink against the real ClickHouse engine (chdb, in-process)."""
import time

import pytest

from libs.common.envelope import derived_envelope, new_envelope
from protos import events_pb2
from services.metrics.migrations import MIGRATIONS
from services.metrics.rows import InvalidEvent, inference_row
from services.metrics.sink import EventSink
from services.metrics.store import MetricsStore, QueryRefused


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
