"""Writes batches of events into the store, each event id once."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from prometheus_client import Counter, Histogram

from services.metrics.store import INFERENCE_COLUMNS, MetricsStore

ROWS_STORED = Counter("vigil_metrics_rows_stored_total", "Rows inserted", ["table"])
DUPLICATES = Counter("vigil_metrics_duplicates_total", "Events skipped because their id was stored", ["table"])
INSERT_SECONDS = Histogram("vigil_metrics_insert_seconds", "Time of one batch insert", ["table"])
BATCH_ROWS = Histogram("vigil_metrics_batch_rows", "Rows per insert", ["table"],
                       buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000))


@dataclass(frozen=True)
class WriteReport:
    stored: int
    duplicates: int


class InferenceEventSink:
    table = "inference_events"

    def __init__(self, store: MetricsStore) -> None:
        self.store = store

    def write(self, rows: Sequence[tuple[Any, ...]]) -> WriteReport:
        """rows are in INFERENCE_COLUMNS order; column 0 is the event id, column 8 the event time."""
        unique: dict[str, tuple[Any, ...]] = {}
        for row in rows:
            unique.setdefault(str(row[0]), row)
        if unique:
            times = [row[8] for row in unique.values()]
            already = self.store.stored_event_ids(self.table, list(unique), (min(times), max(times)))
            for event_id in already:
                del unique[event_id]
        fresh = list(unique.values())
        duplicates = len(rows) - len(fresh)
        if fresh:
            started = time.perf_counter()
            self.store.insert_columns(self.table, INFERENCE_COLUMNS, list(zip(*fresh)))
            INSERT_SECONDS.labels(self.table).observe(time.perf_counter() - started)
            BATCH_ROWS.labels(self.table).observe(len(fresh))
            ROWS_STORED.labels(self.table).inc(len(fresh))
        DUPLICATES.labels(self.table).inc(duplicates)
        return WriteReport(len(fresh), duplicates)
