"""The engine-parsed path for inference events, and the sink's batch handler, against the real engine (chdb)."""
from __future__ import annotations

import time
import uuid

import pytest

from libs.common.envelope import derived_envelope, new_envelope
from libs.common.kafka import Rejected
from protos import events_pb2
from services.metrics.kafka_adapter import MetricsBatchHandler
from services.metrics.protobuf_ingest import UnparseableBatch, frame, frame_batch
from services.metrics.rows import inference_row
from services.metrics.sink import EventSink
from services.metrics.store import MetricsStore

COMPARED = ("toString(event_id), trace_id, camera_id, toString(frame_event_id), frame_sequence, model_name, "
            "model_version, model_precision, event_time, ingest_time, produced_time, width, height, shadow, "
            "detection_count, labels, scores, boxes, stage_latency_ms")


@pytest.fixture()
def store(tmp_path):
    store = MetricsStore.open(tmp_path / "chdb", query_max_rows=1000)
    store.migrate()
    yield store
    store.close()


def inference_result(camera_id: str, labels=("person", "car", "dog"), shadow=False) -> events_pb2.InferenceResult:
    frame_env = new_envelope(f"camera/{camera_id}", "ingest")
    return events_pb2.InferenceResult(
        envelope=derived_envelope(frame_env, "inference", "m:1"), camera_id=camera_id,
        frame_event_id=frame_env.event_id, frame_sequence=41,
        model=events_pb2.ModelRef(name="yolov3-tiny", version="1", precision="f32"),
        detections=[events_pb2.Detection(label=label, class_id=i, score=0.25 + i / 8,
                                         box=events_pb2.Box(x1=1.5 * i, y1=2, x2=30.25, y2=40 + i))
                    for i, label in enumerate(labels)],
        stage_latency_ms={"infer": 12.5, "decode": 1.25, "queue": 0.0}, width=768, height=576, shadow=shadow)


def stored(store: MetricsStore, camera_id: str) -> list[list]:
    return store.query_readonly(f"SELECT {COMPARED} FROM inference_events WHERE camera_id = '{camera_id}' "
                                "ORDER BY shadow, detection_count")["rows"]


def test_the_engine_path_stores_exactly_what_the_python_path_stores(store):
    events = [inference_result("py"), inference_result("py", labels=()), inference_result("py", shadow=True)]
    produced_ms = int(time.time() * 1000)
    EventSink(store, engine_parses_inference=False).write(
        {"inference_events": [inference_row(e, produced_ms) for e in events]})
    for e in events:
        e.camera_id, e.envelope.event_id = "engine", str(uuid.uuid4())
    written = EventSink(store).write_inference_protobuf([(e.SerializeToString(), produced_ms) for e in events])
    assert (written.stored, written.duplicates, written.invalid) == (3, 0, {})
    by_python, by_engine = stored(store, "py"), stored(store, "engine")
    assert len(by_python) == 3
    assert [r[1:2] + r[3:] for r in by_engine] == [r[1:2] + r[3:] for r in by_python]
    detections = store.query_readonly("SELECT count() FROM detections WHERE camera_id = 'engine'")["rows"][0][0]
    assert detections == 3 + 0 + 3


def test_the_engine_path_stores_each_id_once_and_reports_invalid_ids_by_position(store):
    sink = EventSink(store)
    good = [inference_result("dedupe") for _ in range(4)]
    no_id = inference_result("dedupe")
    no_id.envelope.event_id = ""
    bad_frame = inference_result("dedupe")
    bad_frame.frame_event_id = "frame-7"
    batch = [(e.SerializeToString(), 1) for e in (good[0], no_id, good[1], good[0], bad_frame, good[2])]
    written = sink.write_inference_protobuf(batch)
    assert written.invalid == {1: "envelope.event_id is empty", 4: "frame_event_id is not a UUID: frame-7"}
    assert (written.stored, written.duplicates) == (3, 1)
    again = sink.write_inference_protobuf([(e.SerializeToString(), 1) for e in good])   # a replay, and one new
    assert (again.stored, again.duplicates) == (1, 3)
    count, unique = store.query_readonly("SELECT count(), uniqExact(event_id) FROM inference_events")["rows"][0]
    assert count == unique == 4


def test_a_batch_with_bytes_that_are_not_protobuf_is_unparseable(store):
    with pytest.raises(UnparseableBatch):
        EventSink(store).write_inference_protobuf([(inference_result("x").SerializeToString(), 1),
                                                   (b"\xff\xfe not a protobuf", 1)])
    assert store.query_readonly("SELECT count() FROM inference_staging")["rows"] == [[0]]


def test_framing_is_length_delimited_with_the_appended_fields():
    blob = frame([(b"\x0a\x01a", 300), (b"", 5)])
    # 3 bytes of message, then field 1000 (tag 0xc0 0x3e) = 300 (0xac 0x02), field 1001 (0xc8 0x3e) = index 0.
    assert blob[:1] == bytes([3 + 4 + 3]) and blob[1:4] == b"\x0a\x01a"
    assert blob[4:8] == b"\xc0\x3e\xac\x02" and blob[8:11] == b"\xc8\x3e\x00"


class KafkaMessage:
    """Just enough of confluent_kafka.Message for the handler."""

    def __init__(self, topic, value, offset=0, headers=None, key=None):
        self._topic, self._value, self._offset, self._headers, self._key = topic, value, offset, headers, key
        self._timestamp = int(time.time() * 1000)  # a message's Kafka timestamp never changes

    def topic(self): return self._topic
    def value(self): return self._value
    def key(self): return self._key
    def headers(self): return self._headers
    def partition(self): return 0
    def offset(self): return self._offset
    def timestamp(self): return (1, self._timestamp)


@pytest.mark.parametrize("engine, ahead", [(True, False), (True, True), (False, False)])
def test_the_batch_handler_stores_every_topic_and_rejects_only_the_bad_messages(store, engine, ahead):
    """ahead: the batch prepared (framed and parsed by the engine) before it is handled, as the sink's loop does."""
    sink = EventSink(store, engine_parses_inference=engine)
    handler = MetricsBatchHandler(sink, "vigil.dlq")

    def handle(batch):
        return handler(handler.prepare(batch) if ahead else batch)

    status = events_pb2.MonitoringEvent(
        envelope=new_envelope("camera/c", "ingest"),
        camera_status=events_pb2.CameraStatus(camera_id="c", state=events_pb2.CAMERA_STATE_ONLINE, fps_produced=5))
    no_detail = events_pb2.MonitoringEvent(envelope=new_envelope("camera/c", "ingest"))
    good = inference_result("handler")
    bad_id = inference_result("handler")
    bad_id.envelope.event_id = "nope"
    batch = [
        KafkaMessage("vigil.inference", good.SerializeToString()),
        KafkaMessage("vigil.inference", b"\xff\xfe garbage"),
        KafkaMessage("vigil.inference", bad_id.SerializeToString()),
        KafkaMessage("vigil.monitoring", status.SerializeToString()),
        KafkaMessage("vigil.monitoring", no_detail.SerializeToString()),
        KafkaMessage("vigil.dlq", b"whatever", offset=9, key=b"k",
                     headers=[("vigil.dlq.reason", b"undecodable_image"), ("vigil.dlq.origin.topic", b"vigil.frames")]),
        KafkaMessage("vigil.inference", good.SerializeToString()),
    ]
    outcomes = handle(batch)
    reasons = [o.reason if isinstance(o, Rejected) else None for o in outcomes]
    assert reasons == [None, "malformed_event", "invalid_event", None, "invalid_event", None, None]
    assert "nope" in outcomes[2].detail
    counts = store.query_readonly(
        "SELECT (SELECT count() FROM inference_events WHERE camera_id = 'handler'), "
        "(SELECT count() FROM camera_health WHERE camera_id = 'c'), "
        "(SELECT groupArray((reason, origin_topic, dlq_offset)) FROM dead_letters)")["rows"][0]
    assert counts == [1, 1, [("undecodable_image", "vigil.frames", 9)]]
    assert handle(batch[:1] + batch[3:4] + batch[5:6]) == [[], [], []]   # a replay stores nothing twice
    assert store.query_readonly("SELECT count() FROM dead_letters")["rows"] == [[1]]


def test_model_announcements_are_stored_and_tombstones_of_the_compacted_topic_are_skipped(store):
    handler = MetricsBatchHandler(EventSink(store), "vigil.dlq")
    promoted = events_pb2.ModelVersion(
        envelope=new_envelope("registry/yolov3-tiny", "vigil-models"),
        model=events_pb2.ModelRef(name="yolov3-tiny", version="2", precision="int8"), stage="primary",
        artifact=events_pb2.ObjectRef(bucket="vigil-models", key="yolov3-tiny/2/"),
        metadata={"action": "promote", "by": "cli/ops"})
    nameless = events_pb2.ModelVersion(envelope=new_envelope("registry/x", "vigil-models"), stage="primary")
    outcomes = handler([KafkaMessage("vigil.models", promoted.SerializeToString()),
                        KafkaMessage("vigil.models", None, key=b"forgotten-model"),
                        KafkaMessage("vigil.models", nameless.SerializeToString())])
    assert outcomes[:2] == [[], []]
    assert isinstance(outcomes[2], Rejected) and "model.name is empty" in outcomes[2].detail
    assert store.query_readonly("SELECT model_name, model_version, model_precision, stage, artifact, "
                                "metadata['action'] FROM model_versions")["rows"] == [
        ["yolov3-tiny", "2", "int8", "primary", "s3://vigil-models/yolov3-tiny/2/", "promote"]]


def test_an_unknown_topic_is_rejected(store):
    outcome = MetricsBatchHandler(EventSink(store), "vigil.dlq")([KafkaMessage("vigil.other", b"x")])[0]
    assert isinstance(outcome, Rejected) and "does not read vigil.other" in outcome.detail


def test_batches_staged_ahead_alternate_tables_and_are_stored_once_even_when_written_twice(store):
    sink = EventSink(store)
    events = [inference_result("ahead") for _ in range(5)]
    bad = inference_result("ahead")
    bad.frame_event_id = "frame-9"
    first = sink.protobuf.stage(frame_batch([(e.SerializeToString(), 1) for e in [*events[:3], bad]]))
    # The next batch is parsed while the first one waits for its write, into the other staging table.
    second = sink.protobuf.stage(frame_batch([(e.SerializeToString(), 1) for e in events[2:]]))
    assert {first.staging, second.staging} == {"inference_staging_0", "inference_staging_1"}
    assert first.invalid == {3: "frame_event_id is not a UUID: frame-9"} and second.invalid == {}
    written = sink.write_inference_protobuf(first)
    assert (written.stored, written.duplicates, written.invalid) == (3, 0, first.invalid)
    # A retry of a staged batch (its staging table emptied by the first write) parses it again.
    again = sink.write_inference_protobuf(first)
    assert (again.stored, again.duplicates) == (0, 3)
    later = sink.write_inference_protobuf(second)
    assert (later.stored, later.duplicates) == (2, 1)
    count, unique = store.query_readonly(
        "SELECT count(), uniqExact(event_id) FROM inference_events WHERE camera_id = 'ahead'")["rows"][0]
    assert count == unique == 5
    assert store.query_readonly("SELECT (SELECT count() FROM inference_staging_0) + "
                                "(SELECT count() FROM inference_staging_1)")["rows"] == [[0]]


def test_a_batch_staged_ahead_that_is_not_protobuf_is_unparseable_when_written(store):
    staged = EventSink(store).protobuf.stage(frame_batch([(b"\xff\xfe not a protobuf", 1)]))
    assert staged.unparseable
    with pytest.raises(UnparseableBatch):
        EventSink(store).write_inference_protobuf(staged)


def test_the_schema_lives_in_the_store_directory_not_in_a_temporary_one(store, tmp_path):
    ingest = EventSink(store).protobuf
    assert ingest.format_schema.startswith(str((tmp_path / "chdb" / "format_schemas").resolve()))


def test_one_id_spelled_in_upper_and_lower_case_is_one_event(store):
    lower = inference_result("spelling")
    # A replay of the same event (same event time): the store looks a replay up within the batch's event times.
    upper = type(lower)()
    upper.CopyFrom(lower)
    upper.envelope.event_id = lower.envelope.event_id.upper()
    written = EventSink(store).write_inference_protobuf([(e.SerializeToString(), 1) for e in (lower, upper)])
    assert (written.stored, written.duplicates) == (1, 1)
    again = EventSink(store).write_inference_protobuf([(upper.SerializeToString(), 1)])
    assert (again.stored, again.duplicates) == (0, 1)
    assert store.query_readonly("SELECT count() FROM inference_events WHERE camera_id = 'spelling'")["rows"] == [[1]]
