"""Writes batches of rows into the store's tables, each event id once per table.

Delivery from Kafka is at least once, so a batch may hold events already stored (a replay after a crash, a
rebalance). Before inserting, the sink asks the store which of the batch's ids it holds and drops those; the
tables are ReplacingMergeTrees keyed by the id as the second line of defence. A table's rows are one
column-oriented insert; materialized views in the engine derive detections and the per-minute rollups from it.
A batch holding stored ids (a replay) then has those views made whole (services/metrics/view_repair.py): an
insert interrupted between its table and its views is always replayed, since offsets commit after the insert."""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from prometheus_client import Counter, Gauge, Histogram

from services.metrics.protobuf_ingest import FramedBatch, ProtobufInferenceIngest, ProtobufWrite, StagedBatch
from services.metrics.rows import INFERENCE, TABLES, TableSpec
from services.metrics.store import MetricsStore
from services.metrics.view_repair import repair_replayed

ROWS_STORED = Counter("vigil_metrics_rows_stored_total", "Rows inserted", ["table"])
DUPLICATES = Counter("vigil_metrics_duplicates_total", "Events skipped because their id was stored", ["table"])
INSERT_SECONDS = Histogram("vigil_metrics_insert_seconds", "Time of one batch insert", ["table"],
                           buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
BATCH_ROWS = Histogram("vigil_metrics_batch_rows", "Rows per insert", ["table"],
                       buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000, 100000, 200000))
ROWS_PER_SECOND = Gauge("vigil_metrics_rows_per_second", "Rows stored per second over the last 10 s", ["table"])


@dataclass
class WriteReport:
    stored: int = 0
    duplicates: int = 0
    per_table: dict[str, int] = field(default_factory=dict)


class RateWindow:
    """Rows per second over a sliding window, per table (for the gauge and the dashboard)."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._events: dict[str, collections.deque[tuple[float, int]]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def add(self, table: str, rows: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._events[table]
            events.append((now, rows))
            while events and events[0][0] < now - self.window_s:
                events.popleft()
            return sum(n for _, n in events) / self.window_s


def _dedupe_within(rows: Sequence[tuple[Any, ...]], spec: TableSpec) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """The batch's rows once each, keyed by (event id, the spec's row key): an event's rows are inserted together,
    so an event whose id is stored has all its rows stored."""
    key_indexes = [spec.columns.index(column) for column in spec.row_key]
    unique: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        unique.setdefault((str(row[spec.id_index]), *(row[i] for i in key_indexes)), row)
    return unique


class EventSink:
    def __init__(self, store: MetricsStore, engine_parses_inference: bool | None = None) -> None:
        self.store = store
        self.rates = RateWindow()
        # Inference events parsed by the engine (services/metrics/protobuf_ingest.py) where it can read our
        # schema file, i.e. the embedded engine; else decoded here.
        if engine_parses_inference is None:
            engine_parses_inference = store.embedded
        self.protobuf = ProtobufInferenceIngest(store) if engine_parses_inference else None

    def write_inference_protobuf(self, messages: Sequence[tuple[bytes, int]] | FramedBatch | StagedBatch
                                 ) -> ProtobufWrite:
        """Serialized InferenceResults with their Kafka timestamps (or a batch of them framed, or staged, already);
        raises UnparseableBatch if one is not an InferenceResult."""
        started = time.perf_counter()
        written = self.protobuf.write(messages)
        table = INFERENCE.name
        if written.stored:
            INSERT_SECONDS.labels(table).observe(time.perf_counter() - started)
            BATCH_ROWS.labels(table).observe(written.stored)
            ROWS_STORED.labels(table).inc(written.stored)
        ROWS_PER_SECOND.labels(table).set(self.rates.add(table, written.stored))
        DUPLICATES.labels(table).inc(written.duplicates)
        return written

    def write(self, rows_by_table: Mapping[str, Sequence[tuple[Any, ...]]]) -> WriteReport:
        report = WriteReport()
        for table, rows in rows_by_table.items():
            if not rows:
                continue
            stored, duplicates = self._write_table(TABLES[table], rows)
            report.stored += stored
            report.duplicates += duplicates
            report.per_table[table] = stored
        return report

    def _write_table(self, spec: TableSpec, rows: Sequence[tuple[Any, ...]]) -> tuple[int, int]:
        unique = _dedupe_within(rows, spec)
        times = [row[spec.time_index] for row in unique.values()]
        already = self.store.stored_event_ids(spec.name, sorted({key[0] for key in unique}),
                                              None if spec.ids_across_time else (min(times), max(times)))
        fresh = [row for key, row in unique.items() if key[0] not in already]
        duplicates = len(rows) - len(fresh)
        if fresh:
            started = time.perf_counter()
            self.store.insert_columns(spec.name, spec.columns, list(zip(*fresh)))
            INSERT_SECONDS.labels(spec.name).observe(time.perf_counter() - started)
            BATCH_ROWS.labels(spec.name).observe(len(fresh))
            ROWS_STORED.labels(spec.name).inc(len(fresh))
        if already:
            # A replay: an interrupted insert may have left these events in the table but not in its views.
            with self.store.writing() as client:
                repair_replayed(client, spec.name, "event_id IN {ids:Array(UUID)}", (min(times), max(times)),
                                {"ids": sorted({key[0] for key in unique})})
        ROWS_PER_SECOND.labels(spec.name).set(self.rates.add(spec.name, len(fresh)))
        DUPLICATES.labels(spec.name).inc(duplicates)
        return len(fresh), duplicates
