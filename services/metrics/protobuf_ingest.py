"""The fast path for vigil.inference: the engine parses the batch's protobuf bytes itself.

Decoding protobuf in Python and building rows costs tens of microseconds an event; ClickHouse's Protobuf input
format does it in C++. A batch is framed as length-delimited messages, each with two fields appended (its
Kafka timestamp and its index in the batch: appending a field to serialized protobuf is valid protobuf), and
inserted with a schema generated from protos/events.proto into inference_staging. Then, under the store's
lock: rows with invalid ids are reported back by index (to be dead-lettered), the rest moves into
inference_events minus the ids already stored (the same dedupe as the Python path), and staging is emptied.
The sink's loop has the engine parse the next batch (stage(), into a staging table of its own, on a client of its
own) while the current one is moved: parsing is a quarter to a third of the engine's work on a batch.

Only the embedded engine can read a schema file of this machine; a ClickHouse server gets the Python path."""
from __future__ import annotations

import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from clickhouse_connect.driver.client import Client

from libs.common.logs import get_logger
from protos import events_pb2
from services.metrics.rows import INFERENCE, INFERENCE_COLUMNS
from services.metrics.store import INSERT_SETTINGS, MetricsStore
from services.metrics.view_repair import repair_replayed

log = get_logger(__name__)

_STAGING = "inference_staging"
# Batches parsed ahead of their write alternate between these (migrations 25 and 26).
_STAGED_AHEAD = ("inference_staging_0", "inference_staging_1")
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


_INDEX_FIELDS: list[bytes] = []


def _index_fields(count: int) -> list[bytes]:
    """The appended batch_index field of the first `count` messages, built once per process."""
    while len(_INDEX_FIELDS) < count:
        _INDEX_FIELDS.extend(_INDEX_TAG + _varint(i) for i in range(len(_INDEX_FIELDS), max(count, 1024)))
    return _INDEX_FIELDS


def frame(messages: Sequence[tuple[bytes, int]]) -> bytes:
    """Length-delimited StoredInferenceResult messages from (InferenceResult bytes, Kafka timestamp ms)."""
    # Varints cost a Python loop each: the index fields are built once, and a batch shares few distinct lengths
    # and timestamps, so those are cached per batch.
    lengths: dict[int, bytes] = {}
    timestamps: dict[int, bytes] = {}
    positions = _index_fields(len(messages))
    parts = []
    append = parts.append
    for index, (value, timestamp_ms) in enumerate(messages):
        stamp = timestamps.get(timestamp_ms)
        if stamp is None:
            stamp = timestamps[timestamp_ms] = _TIMESTAMP_TAG + _varint(max(timestamp_ms, 0))
        position = positions[index]
        size = len(value) + len(stamp) + len(position)
        prefix = lengths.get(size)
        if prefix is None:
            prefix = lengths[size] = _varint(size)
        append(prefix)
        append(value)
        append(stamp)
        append(position)
    return b"".join(parts)


_MS = "{seconds} * 1000 + intDiv({nanos}, 1000000)"
_REASON = """multiIf(
    envelope_event_id = '', 'envelope.event_id is empty',
    isNull(toUUIDOrNull(envelope_event_id)), concat('envelope.event_id is not a UUID: ', envelope_event_id),
    isNull(toUUIDOrNull(frame_event_id)), concat('frame_event_id is not a UUID: ', frame_event_id),
    '')"""
_EVENT_MS = _MS.format(seconds="envelope_event_time_seconds", nanos="envelope_event_time_nanos")
_INGEST_MS = _MS.format(seconds="envelope_ingest_time_seconds", nanos="envelope_ingest_time_nanos")
# The ids of the staged batch that the store holds already. The time range (the batch's event-time span) lets the
# engine skip all but a few granules.
_STORED_IDS = """
    SELECT event_id FROM inference_events
    WHERE event_time BETWEEN fromUnixTimestamp64Milli({{lo:Int64}}, 'UTC')
                         AND fromUnixTimestamp64Milli({{hi:Int64}}, 'UTC')
      AND event_id IN (SELECT toUUIDOrZero(envelope_event_id) FROM {staging})
"""
# The move's rows are unique by id already (LIMIT 1 BY, and the ids stored are left out): INSERT_SETTINGS. They
# are part of the statement: as a client setting they would cost a SET and a restore per call.
MOVE_SETTINGS = "SETTINGS " + ", ".join(f"{name} = {value}" for name, value in INSERT_SETTINGS.items())
_MOVE = f"""
    INSERT INTO inference_events ({', '.join(INFERENCE_COLUMNS)}) {MOVE_SETTINGS}
    SELECT toUUID(envelope_event_id), envelope_trace_id, camera_id, toUUID(frame_event_id), frame_sequence,
           model_name, model_version, model_precision,
           fromUnixTimestamp64Milli({_EVENT_MS}, 'UTC'), fromUnixTimestamp64Milli({_INGEST_MS}, 'UTC'),
           fromUnixTimestamp64Milli(kafka_timestamp_ms, 'UTC'), width, height, shadow,
           length(`detections.label`), `detections.label`, `detections.score`,
           arrayMap((a, b, c, d) -> (a, b, c, d), `detections.box_x1`, `detections.box_y1`, `detections.box_x2`,
                    `detections.box_y2`),
           stage_latency_ms
    FROM {{staging}}
    WHERE {_REASON} = '' {{and_not_stored}}
    ORDER BY batch_index
    LIMIT 1 BY toUUID(envelope_event_id)
"""
_CHECK = f"""
    SELECT groupArrayIf((batch_index, reason), reason != ''), minIf(ms, reason = ''), maxIf(ms, reason = ''),
           uniqExactIf(toUUIDOrZero(envelope_event_id), reason = '')
    FROM (SELECT batch_index, envelope_event_id, {_REASON} AS reason, {_EVENT_MS} AS ms FROM {{staging}})
"""


@dataclass(frozen=True)
class _StagingSql:
    """The statements that read one staging table."""

    check: str
    count_stored: str
    move_all: str
    move_not_stored: str
    batch_ids: str

    @classmethod
    def of(cls, staging: str) -> "_StagingSql":
        stored_ids = _STORED_IDS.format(staging=staging)
        return cls(check=_CHECK.format(staging=staging),
                   count_stored=f"SELECT uniqExact(event_id) FROM ({stored_ids})",
                   move_all=_MOVE.format(staging=staging, and_not_stored=""),
                   move_not_stored=_MOVE.format(staging=staging,
                                                and_not_stored=f"AND toUUID(envelope_event_id) NOT IN ({stored_ids})"),
                   batch_ids=f"event_id IN (SELECT toUUIDOrZero(envelope_event_id) FROM {staging})")


@dataclass(frozen=True)
class FramedBatch:
    """A batch framed ahead of its write (by frame_batch), e.g. while the previous batch is being stored."""

    blob: bytes
    count: int


def frame_batch(messages: Sequence[tuple[bytes, int]]) -> FramedBatch:
    return FramedBatch(frame(messages), len(messages))


@dataclass
class StagedBatch:
    """A framed batch parsed by the engine into a staging table ahead of its write (ProtobufInferenceIngest.stage),
    with its invalid rows found and the event-time window of its valid ones."""

    framed: FramedBatch
    staging: str | None = None
    invalid: dict[int, str] = field(default_factory=dict)
    window: tuple[int, int] | None = None
    distinct_valid: int = 0
    unparseable: str | None = None
    # The staging table is emptied by the first write: a retry of the same batch parses it again.
    claimed: bool = False


@dataclass
class ProtobufWrite:
    stored: int
    duplicates: int
    invalid: dict[int, str]


def _unparseable(exc: Exception) -> str | None:
    text = str(exc)
    if "CANNOT_PARSE" in text or "Protobuf" in text or "PROTOBUF" in text:
        return text.strip().splitlines()[0][:300]
    return None


class ProtobufInferenceIngest:
    """write() parses (under the store's lock) and stores; or stage() parses a batch ahead, on a client of its own
    and into one of two staging tables of its own, while the previous batch is written, and write() then only
    deduplicates and moves it. stage() is called from one thread, one batch at a time, and at most one staged
    batch waits for its write while another is written (the sink's loop: services/metrics/prefetching_runner.py)."""

    def __init__(self, store: MetricsStore, schema_dir: Path | None = None) -> None:
        self.store = store
        if schema_dir is None and store.path is not None:
            # Beside the engine's data (where ClickHouse keeps format schemas by default), rewritten at each
            # start: one directory per store, not one temporary directory per sink.
            schema_dir = store.path / "format_schemas"
        if schema_dir is None:
            # No data directory of ours (a store opened on clients directly): a temporary one, removed when this
            # object goes.
            schema_dir = Path(tempfile.mkdtemp(prefix="vigil-metrics-schema-"))
            weakref.finalize(self, shutil.rmtree, schema_dir, True)
        self._schema_dir = schema_dir
        self.format_schema = write_schema(self._schema_dir)
        self._sql = {table: _StagingSql.of(table) for table in (_STAGING, *_STAGED_AHEAD)}
        self._stager: Client | None = None  # opened by the first stage()
        self._next_staging = 0

    def stage(self, batch: FramedBatch) -> StagedBatch:
        """Parses the batch into the next staging table, beside whatever the store's writer is doing. A batch the
        engine cannot parse comes back marked so (write raises UnparseableBatch); any other failure leaves the
        batch to be parsed by its write, where the sink's retries apply."""
        if self._stager is None and self.store.path is not None:
            self._stager = self.store.side_writer()
        if self._stager is None or not batch.count:
            return StagedBatch(batch)
        staging = _STAGED_AHEAD[self._next_staging]
        self._next_staging ^= 1
        try:
            return self._parse(self._stager, staging, batch)
        except UnparseableBatch as exc:
            return StagedBatch(batch, unparseable=str(exc))
        except Exception:
            log.warning("parsing ahead failed; the batch is parsed when written", exc_info=True)
            return StagedBatch(batch)

    def write(self, messages: Sequence[tuple[bytes, int]] | FramedBatch | StagedBatch) -> ProtobufWrite:
        if isinstance(messages, StagedBatch):
            staged = messages
        else:
            staged = StagedBatch(messages if isinstance(messages, FramedBatch) else frame_batch(messages))
        batch = staged.framed
        if not batch.count:
            return ProtobufWrite(0, 0, {})
        if staged.unparseable:
            raise UnparseableBatch(staged.unparseable)
        with self.store.writing() as client:
            if staged.staging is None or staged.claimed:
                staged = self._parse(client, _STAGING, batch)
            staged.claimed = True
            sql = self._sql[staged.staging]
            try:
                fresh = 0
                if staged.window is not None:
                    window = {"lo": staged.window[0], "hi": staged.window[1]}
                    # Under the store's lock nothing else writes between the count and the move: when none of the
                    # batch's ids is stored (all but replays), the move need not look them up a second time.
                    stored = client.query(sql.count_stored, parameters=window).result_rows[0][0]
                    fresh = staged.distinct_valid - stored
                    if fresh:
                        if stored:
                            client.command(sql.move_not_stored, parameters=window)
                        else:
                            client.command(sql.move_all)
                    if stored:
                        # A replay: an interrupted insert may have left these events in inference_events only.
                        repair_replayed(client, INFERENCE.name, sql.batch_ids, staged.window)
            finally:
                client.command(f"TRUNCATE TABLE {staged.staging}")
        return ProtobufWrite(fresh, batch.count - len(staged.invalid) - fresh, staged.invalid)

    def _parse(self, client: Client, staging: str, batch: FramedBatch) -> StagedBatch:
        """The batch parsed into `staging`, its invalid rows and the window of its valid ones found."""
        client.command(f"TRUNCATE TABLE {staging}")
        try:
            client.raw_insert(staging, None, batch.blob, settings={"format_schema": self.format_schema},
                              fmt="Protobuf")
            problems, lo, hi, distinct_valid = client.query(self._sql[staging].check).result_rows[0]
        except Exception as exc:
            client.command(f"TRUNCATE TABLE {staging}")
            reason = _unparseable(exc)
            if reason is not None:
                raise UnparseableBatch(reason) from exc
            raise
        return StagedBatch(batch, staging, {int(i): reason for i, reason in problems},
                           (lo, hi) if distinct_valid else None, distinct_valid)
