"""Materialized views brought level with their source table for the events of a replayed batch.

An insert into inference_events (or camera_health, dead_letters) writes the table first and its views (detections,
the per-minute rollups) after, each as parts of its own: the engine commits them one after another, never as one.
A SIGKILL in between leaves the table holding events that some view has not got. Offsets are committed only after
the insert, so the events of an interrupted insert are always delivered again, and the sink finds their ids stored:
that replay is when it makes the views whole (repair), under the writer's lock, after the batch's own insert:

- rows derived one to many (detections): the replayed events' derived rows that the view table lacks, by its key
  (event id, detection index), are derived again from the source with the view's own SELECT;
- per-minute rollups: for each minute a replayed event falls in, the rollup's count (frames, samples, ...) is
  compared with the same count over the source's rows of that minute. A view's part holds whole blocks, so a
  minute the view missed rows of counts fewer; such a minute is deleted from the rollup and computed again from
  the source (quantile states cannot be topped up, only recomputed). A SIGKILL between that delete and the insert
  leaves the minute empty in the rollup: the batch is not committed, so it is replayed and the minute found short
  again. A SIGKILL during the delete leaves its mutation to be resumed by the engine later: the next repair kills
  it before it compares.

A batch without stored ids (all but replays) costs nothing here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.client import Client
from prometheus_client import Counter

from libs.common.logs import get_logger
from services.metrics import migrations

log = get_logger(__name__)

ROWS_REPAIRED = Counter("vigil_metrics_view_rows_repaired_total",
                        "Rows of a view derived again for replayed events an interrupted insert left out", ["table"])
MINUTES_REPAIRED = Counter("vigil_metrics_view_minutes_repaired_total",
                           "Minutes of a rollup recomputed because an interrupted insert left them short", ["table"])


@dataclass(frozen=True)
class DerivedRows:
    """A table of rows a view derives from the source's rows, told apart by `key` (the event id first); `counted` is
    how many the source's rows derive."""

    table: str
    select: str
    key: tuple[str, ...]
    counted: str


@dataclass(frozen=True)
class Rollup:
    """A per-minute rollup a view fills from the source; `rolled` is a count in the rollup per minute, `counted` the
    same count over the source's rows."""

    table: str
    select: str
    rolled: str
    counted: str


@dataclass(frozen=True)
class Views:
    source: str
    rows: tuple[DerivedRows, ...] = ()
    rollups: tuple[Rollup, ...] = ()


VIEWS = {views.source: views for views in (
    Views("inference_events",
          rows=(DerivedRows("detections", migrations._DETECTIONS_SELECT, ("event_id", "detection_index"),
                            "sum(length(labels))"),),
          rollups=(Rollup("inference_minute", migrations._INFERENCE_MINUTE_SELECT, "sum(frames)", "count()"),
                   Rollup("latency_minute", migrations._LATENCY_MINUTE_SELECT, "sum(samples)",
                          "sum(length(mapKeys(stage_latency_ms)) + 1)"),
                   Rollup("detections_minute", migrations._DETECTIONS_MINUTE_SELECT, "sum(detections)",
                          "sum(length(labels))"))),
    Views("camera_health",
          rollups=(Rollup("camera_minute", migrations._CAMERA_MINUTE_SELECT, "sum(reports)", "count()"),)),
    Views("dead_letters",
          rollups=(Rollup("dead_letters_minute", migrations._DEAD_LETTERS_MINUTE_SELECT, "sum(letters)", "count()"),)),
)}


@dataclass
class Repaired:
    """What a repair wrote: rows derived again per table, minutes recomputed per rollup."""

    rows: dict[str, int] = field(default_factory=dict)
    minutes: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.rows or self.minutes)


def _from_source(select: str, source: str, where: str) -> str:
    """The view's SELECT over only the source's rows that `where` keeps."""
    clause = f"FROM {source}"
    if select.count(clause) != 1:
        raise ValueError(f"a view's SELECT must read {source} exactly once: {select}")
    return select.replace(clause, f"FROM (SELECT * FROM {source} WHERE {where}) AS {source}")


_WINDOW = ("event_time BETWEEN fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
           "AND fromUnixTimestamp64Milli({hi:Int64}, 'UTC')")
_MINUTES = ("event_time >= toDateTime({first:UInt32}, 'UTC') AND event_time < toDateTime({last:UInt32}, 'UTC') + 60 "
            "AND toUInt32(toStartOfMinute(event_time)) IN {minutes:Array(UInt32)}")


def _kill_interrupted_deletes(client: Client, tables: list[str]) -> None:
    """A repair's DELETE is a mutation, written to disk before it is applied: a SIGKILL during it leaves one that
    the engine resumes after the restart, in the background, whenever. Applied after this repair compared the
    counts (still whole), it would empty the minute for good. The sink's own mutations run to their end before
    the statement returns, so one not done here was interrupted: it is killed (the parts it reached keep its
    deletes, which the comparison below then finds short)."""
    params = {"tables": tables}
    pending = client.query("SELECT table, mutation_id FROM system.mutations WHERE database = currentDatabase() "
                           "AND table IN {tables:Array(String)} AND NOT is_done", parameters=params).result_rows
    if pending:
        log.warning("interrupted view repairs killed", mutations=[f"{table}/{mutation}" for table, mutation in pending])
        client.command("KILL MUTATION WHERE database = currentDatabase() AND table IN {tables:Array(String)} SYNC",
                       parameters=params)


def repair_views(client: Client, source: str, ids: str, window: tuple[int, int],
                 parameters: dict[str, Any] | None = None) -> Repaired:
    """Makes `source`'s views whole for the events `ids` selects (an SQL condition on event_id, with `parameters`)
    whose event times lie in `window` (ms since the epoch). The caller holds the writer's lock."""
    views = VIEWS.get(source)
    repaired = Repaired()
    if views is None:
        return repaired
    params = {**(parameters or {}), "lo": window[0], "hi": window[1]}
    events = f"{_WINDOW} AND {ids}"
    for derived in views.rows:
        # Counting first is cheaper than deriving the rows to compare them: the views are whole at most replays.
        derivable, held = client.query(
            f"SELECT (SELECT {derived.counted} FROM {source} WHERE {events}), "
            f"(SELECT count() FROM {derived.table} WHERE {events})", parameters=params).result_rows[0]
        if held >= derivable:
            continue
        key = ", ".join(derived.key)
        missing = (f"SELECT * FROM ({_from_source(derived.select, source, events)}) "
                   f"WHERE ({key}) NOT IN (SELECT {key} FROM {derived.table} WHERE {events})")
        count = client.query(f"SELECT count() FROM ({missing})", parameters=params).result_rows[0][0]
        if count:
            client.command(f"INSERT INTO {derived.table} {missing}", parameters=params)
            repaired.rows[derived.table] = count
    if not views.rollups:
        return repaired
    minutes = [row[0] for row in client.query(
        f"SELECT DISTINCT toUInt32(toStartOfMinute(event_time)) FROM {source} WHERE {events}",
        parameters=params).result_rows]
    if not minutes:
        return repaired
    _kill_interrupted_deletes(client, [rollup.table for rollup in views.rollups])
    for rollup in views.rollups:
        span = {"first": min(minutes), "last": max(minutes), "minutes": minutes}
        short = [row[0] for row in client.query(
            f"SELECT m FROM (SELECT toUInt32(toStartOfMinute(event_time)) AS m, {rollup.counted} AS n "
            f"               FROM {source} WHERE {_MINUTES} GROUP BY m) AS counted "
            f"LEFT JOIN (SELECT toUInt32(minute) AS m, {rollup.rolled} AS n FROM {rollup.table} "
            f"           WHERE toUInt32(minute) IN {{minutes:Array(UInt32)}} GROUP BY m) AS rolled USING (m) "
            "WHERE counted.n != rolled.n", parameters=span).result_rows]
        if not short:
            continue
        span = {"first": min(short), "last": max(short), "minutes": short}
        client.command(f"DELETE FROM {rollup.table} WHERE toUInt32(minute) IN {{minutes:Array(UInt32)}}",
                       parameters=span)
        client.command(f"INSERT INTO {rollup.table} {_from_source(rollup.select, source, _MINUTES)}",
                       parameters=span)
        repaired.minutes[rollup.table] = len(short)
    return repaired


def repair_replayed(client: Client, source: str, ids: str, window: tuple[int, int],
                    parameters: dict[str, Any] | None = None) -> Repaired:
    """repair_views, for a batch that held stored ids (a replay); logs and counts what it wrote."""
    repaired = repair_views(client, source, ids, window, parameters)
    for table, rows in repaired.rows.items():
        ROWS_REPAIRED.labels(table).inc(rows)
    for table, minutes in repaired.minutes.items():
        MINUTES_REPAIRED.labels(table).inc(minutes)
    if repaired:
        log.warning("views repaired for replayed events", source=source, rows=repaired.rows, minutes=repaired.minutes)
    return repaired
