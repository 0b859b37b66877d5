"""The fast path for vigil.inference: the engine parses the batch's protobuf bytes itself.

Decoding protobuf in Python and building rows costs tens of microseconds an event; ClickHouse's Protobuf input
format does it in C++. A batch is framed as length-delimited messages, each with two fields appended (its
Kafka timestamp and its index in the batch: appending a field to serialized protobuf is valid protobuf), and
inserted with a schema generated from protos/events.proto into inference_staging. Then, under the store's
lock: rows with invalid ids are reported back by index (to be dead-lettered), the rest moves into
inference_events minus the ids already stored (the same dedupe as the Python path), and staging is emptied.

Only the embedded engine can read a schema file of this machine; a ClickHouse server gets the Python path."""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from protos import events_pb2
from services.metrics.rows import INFERENCE_COLUMNS
from services.metrics.store import MetricsStore

_STAGING = "inference_staging"
_KAFKA_TIMESTAMP_FIELD = 1000
_BATCH_INDEX_FIELD = 1001
_TIMESTAMP_PROTO = """syntax = "proto3";
package google.protobuf;
message Timestamp { int64 seconds = 1; int32 nanos = 2; }
"""


class UnparseableBatch(Exception):
    """The engine could not parse the batch: some message in it is not an InferenceResult."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_TIMESTAMP_TAG = _varint(_KAFKA_TIMESTAMP_FIELD << 3)
_INDEX_TAG = _varint(_BATCH_INDEX_FIELD << 3)


def write_schema(directory: Path) -> str:
    """Writes events.proto plus StoredInferenceResult (InferenceResult and the two appended fields) into
    `directory`; returns the engine's format_schema value for it."""
    events_proto = (Path(events_pb2.__file__).parent / "events.proto").read_text()
    body = re.search(r"\nmessage InferenceResult \{\n(.*?)\n\}", events_proto, re.S)
    if body is None:
        raise RuntimeError("protos/events.proto has no message InferenceResult")
    (directory / "google" / "protobuf").mkdir(parents=True, exist_ok=True)
    (directory / "google" / "protobuf" / "timestamp.proto").write_text(_TIMESTAMP_PROTO)
    (directory / "stored_inference.proto").write_text(
        f"{events_proto}\n// Written by the metrics sink: an InferenceResult as the sink frames it.\n"
        f"message StoredInferenceResult {{\n{body.group(1)}\n"
        f"  int64 kafka_timestamp_ms = {_KAFKA_TIMESTAMP_FIELD};\n  uint32 batch_index = {_BATCH_INDEX_FIELD};\n}}\n")
    return f"{directory.resolve() / 'stored_inference.proto'}:StoredInferenceResult"


def frame(messages: Sequence[tuple[bytes, int]]) -> bytes:
    """Length-delimited StoredInferenceResult messages from (InferenceResult bytes, Kafka timestamp ms)."""
    # Varints cost a Python loop each: a batch shares few distinct lengths and timestamps, so cache them.
    lengths: dict[int, bytes] = {}
    timestamps: dict[int, bytes] = {}
    parts = []
    for index, (value, timestamp_ms) in enumerate(messages):
        stamp = timestamps.get(timestamp_ms)
        if stamp is None:
            stamp = timestamps[timestamp_ms] = _TIMESTAMP_TAG + _varint(max(timestamp_ms, 0))
        position = _INDEX_TAG + _varint(index)
        size = len(value) + len(stamp) + len(position)
        prefix = lengths.get(size)
        if prefix is None:
            prefix = lengths[size] = _varint(size)
        parts += (prefix, value, stamp, position)
    return b"".join(parts)


_MS = "{seconds} * 1000 + intDiv({nanos}, 1000000)"
_REASON = """multiIf(
    envelope_event_id = '', 'envelope.event_id is empty',
    isNull(toUUIDOrNull(envelope_event_id)), concat('envelope.event_id is not a UUID: ', envelope_event_id),
    isNull(toUUIDOrNull(frame_event_id)), concat('frame_event_id is not a UUID: ', frame_event_id),
    '')"""
_EVENT_MS = _MS.format(seconds="envelope_event_time_seconds", nanos="envelope_event_time_nanos")
_INGEST_MS = _MS.format(seconds="envelope_ingest_time_seconds", nanos="envelope_ingest_time_nanos")
_FRESH = f"""
    FROM {_STAGING}
    WHERE {_REASON} = ''
      AND toUUID(envelope_event_id) NOT IN (
          SELECT event_id FROM inference_events
          WHERE event_time BETWEEN fromUnixTimestamp64Milli({{lo:Int64}}, 'UTC')
                               AND fromUnixTimestamp64Milli({{hi:Int64}}, 'UTC')
            AND event_id IN (SELECT toUUIDOrZero(envelope_event_id) FROM {_STAGING}))
"""
_MOVE = f"""
    INSERT INTO inference_events ({', '.join(INFERENCE_COLUMNS)})
    SELECT toUUID(envelope_event_id), envelope_trace_id, camera_id, toUUID(frame_event_id), frame_sequence,
           model_name, model_version, model_precision,
           fromUnixTimestamp64Milli({_EVENT_MS}, 'UTC'), fromUnixTimestamp64Milli({_INGEST_MS}, 'UTC'),
           fromUnixTimestamp64Milli(kafka_timestamp_ms, 'UTC'), width, height, shadow,
           length(`detections.label`), `detections.label`, `detections.score`,
           arrayMap((a, b, c, d) -> (a, b, c, d), `detections.box_x1`, `detections.box_y1`, `detections.box_x2`,
                    `detections.box_y2`),
           stage_latency_ms
    {_FRESH}
    ORDER BY batch_index
    LIMIT 1 BY envelope_event_id
"""


@dataclass
class ProtobufWrite:
    stored: int
    duplicates: int
    invalid: dict[int, str]


class ProtobufInferenceIngest:
    def __init__(self, store: MetricsStore, schema_dir: Path | None = None) -> None:
        self.store = store
        self._schema_dir = schema_dir or Path(tempfile.mkdtemp(prefix="vigil-metrics-schema-"))
        self.format_schema = write_schema(self._schema_dir)

    def write(self, messages: Sequence[tuple[bytes, int]]) -> ProtobufWrite:
        if not messages:
            return ProtobufWrite(0, 0, {})
        blob = frame(messages)
        with self.store.writing() as client:
            client.command(f"TRUNCATE TABLE {_STAGING}")
            try:
                client.raw_insert(_STAGING, None, blob, settings={"format_schema": self.format_schema},
                                  fmt="Protobuf")
            except Exception as exc:
                client.command(f"TRUNCATE TABLE {_STAGING}")
                if "CANNOT_PARSE" in str(exc) or "Protobuf" in str(exc) or "PROTOBUF" in str(exc):
                    raise UnparseableBatch(str(exc).strip().splitlines()[0][:300]) from exc
                raise
            try:
                problems, lo, hi, valid = client.query(
                    f"SELECT groupArrayIf((batch_index, reason), reason != ''), minIf(ms, reason = ''), "
                    f"maxIf(ms, reason = ''), countIf(reason = '') "
                    f"FROM (SELECT batch_index, {_REASON} AS reason, {_EVENT_MS} AS ms FROM {_STAGING})").result_rows[0]
                invalid = {int(i): reason for i, reason in problems}
                fresh = 0
                if valid:
                    window = {"lo": lo, "hi": hi}
                    fresh = client.query(f"SELECT uniqExact(envelope_event_id) {_FRESH}", parameters=window
                                         ).result_rows[0][0]
                    if fresh:
                        client.command(_MOVE, parameters=window)
            finally:
                client.command(f"TRUNCATE TABLE {_STAGING}")
        return ProtobufWrite(fresh, len(messages) - len(invalid) - fresh, invalid)
