"""The metrics store: ClickHouse through clickhouse-connect, either the embedded engine (chdb, owned by this
process: one writer per data directory) or a ClickHouse server by URL. Same SQL either way."""
from __future__ import annotations

import contextlib
import re
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from libs.common.logs import get_logger
from services.metrics.migrations import MIGRATIONS

log = get_logger(__name__)



# For inserts of rows already unique by event id: merging the block on insert (optimize_on_insert) costs about
# half of an insert into inference_events with its views, and the replacing engines still merge in the background.
INSERT_SETTINGS = {"optimize_on_insert": 0, "parallel_view_processing": 1}


class QueryRefused(ValueError):
    """An ad-hoc query the store will not run (it writes, or it reads what it may not)."""


class QueryLimitExceeded(RuntimeError):
    """A query the engine stopped because it needed more memory or time than a query may take; the store, the
    sink and other queries go on."""


# The engine's codes for a query stopped at one of its limits.
_LIMIT_ERRORS = {241: "memory", 159: "time"}
_ERROR_CODE = re.compile(r"Code: (\d+)\.")


# What ad-hoc SQL may read: the store's own tables, and table functions that read no data at all. The engine's
# analyzer names every table a query touches (through subqueries, CTEs, joins, views); chdb has no users or
# grants to deny the system database, so its query tree is checked instead of the text.
ALLOWED_TABLE_FUNCTIONS = frozenset({"numbers", "zeros", "generateSeries", "generate_series"})
# A SELECT without FROM reads system.one, a single row with a zero: harmless.
ALLOWED_SYSTEM_TABLES = frozenset({"system.one"})
_TREE_TABLE = re.compile(r"^\s*TABLE id: \d+.*?table_name: (\S+)")
_TREE_TABLE_FUNCTION = re.compile(r"^\s*TABLE_FUNCTION id: \d+.*?table_function_name: (\w+)")


def open_client(store_path: Path, clickhouse_url: str | None, settings: dict[str, Any] | None = None) -> Client:
    if clickhouse_url:
        return clickhouse_connect.get_client(dsn=clickhouse_url, settings=settings)
    store_path.mkdir(parents=True, exist_ok=True)
    return clickhouse_connect.get_client(interface="chdb", path=str(store_path), settings=settings)


DEFAULT_QUERY_MAX_MEMORY_BYTES = 512 * 1024 * 1024


def readonly_settings(max_rows: int | None, max_seconds: float,
                      max_memory_bytes: int = DEFAULT_QUERY_MAX_MEMORY_BYTES) -> dict[str, Any]:
    # Enforced by the engine for the whole session of the reading client: each query may take this much time
    # and memory (the embedded engine shares the sink's process: a query without a memory limit could take it
    # down). `readonly` comes last: once it is set, the session may change no other setting.
    rows = {"max_result_rows": max_rows, "result_overflow_mode": "throw"} if max_rows is not None else {}
    return {"max_execution_time": max_seconds, "timeout_overflow_mode": "throw", "max_memory_usage": max_memory_bytes,
            **rows, "readonly": 1}


class MetricsStore:
    """The sink writes through one client; ad-hoc queries go through a second one whose session is
    read-only from its first statement, so no query text can ever write, and whose queries are held to a time and
    memory limit by the engine.

    The writer and the readers never wait for each other: the sink's inserts take one lock (the writing client's
    statements in turn), queries another (the reading clients' sessions in turn), and the engine runs a query
    beside an insert. So no query, however long, holds up ingestion."""

    @classmethod
    def open(cls, store_path: Path, clickhouse_url: str | None = None, query_max_rows: int = 10_000,
             query_max_seconds: float = 10.0,
             query_max_memory_bytes: int = DEFAULT_QUERY_MAX_MEMORY_BYTES) -> "MetricsStore":
        writer = open_client(store_path, clickhouse_url)
        reader = open_client(store_path, clickhouse_url,
                             readonly_settings(query_max_rows, query_max_seconds, query_max_memory_bytes))
        # Explains ad-hoc queries (never runs them): read-only too, without the row limit on its answer.
        inspector = open_client(store_path, clickhouse_url,
                                readonly_settings(None, query_max_seconds, query_max_memory_bytes))
        return cls(writer, reader, inspector, path=None if clickhouse_url else store_path)

    def __init__(self, client: Client, reader: Client, inspector: Client | None = None,
                 path: Path | None = None) -> None:
        self._client = client
        self._reader = reader
        self._inspector = inspector or reader
        # The embedded engine's data directory (None for a server): files the engine reads live beside its data.
        self.path = path
        self._side_writers: list[Client] = []
        # Each client is synchronous (one statement at a time in its session): the writer's users take turns under
        # one lock, the readers' under another. The two never wait for each other.
        self._lock = threading.Lock()
        self._query_lock = threading.Lock()

    def migrate(self) -> list[int]:
        with self._lock:
            self._client.command(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, "
                "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version"
            )
            applied = {row[0] for row in self._client.query("SELECT version FROM schema_migrations").result_rows}
            done = []
            for version, name, sql in MIGRATIONS:
                if version in applied:
                    continue
                self._client.command(sql)
                # A statement, not client.insert(): that one imports pandas on its first call (a second or more
                # of every fresh start).
                self._client.command("INSERT INTO schema_migrations (version, name) VALUES ({v:UInt32}, {n:String})",
                                     parameters={"v": version, "n": name})
                log.info("migration applied", version=version, name=name)
                done.append(version)
            return done

    def stored_event_ids(self, table: str, event_ids: Sequence[str], time_range: tuple[int, int] | None
                         ) -> set[str]:
        """Which of these event ids the table already holds. The time range (the events' own event_time
        span, in ms since the epoch) lets the engine skip all but a few granules; None looks at every row."""
        if not event_ids:
            return set()
        within = ("event_time BETWEEN fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
                  "AND fromUnixTimestamp64Milli({hi:Int64}, 'UTC') AND ") if time_range else ""
        with self._lock:
            rows = self._client.query(
                f"SELECT DISTINCT toString(event_id) FROM {table} WHERE {within}event_id IN {{ids:Array(UUID)}}",
                parameters={"ids": list(event_ids), **({"lo": time_range[0], "hi": time_range[1]}
                                                       if time_range else {})},
            ).result_rows
        return {row[0] for row in rows}

    def insert_columns(self, table: str, column_names: Sequence[str], columns: Sequence[Sequence[Any]]) -> None:
        """Rows unique by event id (the sink dedupes before it inserts), so the engine need not merge the block on
        insert; materialized views run side by side."""
        with self._lock:
            self._client.insert(table, list(columns), column_names=list(column_names), column_oriented=True,
                                settings=INSERT_SETTINGS)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Client]:
        """The writing client, for several statements in a row that nothing else may interleave with."""
        with self._lock:
            yield self._client

    @property
    def embedded(self) -> bool:
        """The embedded engine (not a server): it reads files of this machine, protobuf schemas among them."""
        return self.path is not None

    def side_writer(self) -> Client | None:
        """A second writing client of the embedded engine, for statements that run beside the writer's on tables
        only they touch (parsing the next batch into a staging table of its own); None for a server. Closed with
        the store."""
        if not self.embedded:
            return None
        client = open_client(self.path, None)
        self._side_writers.append(client)
        return client

    def query_readonly(self, sql: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Runs the query in the read-only session, within the engine's row, time and memory limits; a query
        stopped at a limit raises QueryLimitExceeded (and nothing else is affected)."""
        with self._query_lock:
            try:
                result = self._reader.query(sql, parameters=parameters)
            except Exception as exc:
                message = str(exc)
                if "(READONLY)" in message:
                    raise QueryRefused("refused: the query API is read-only") from exc
                self._raise_if_limit(exc)
                raise
            columns = list(result.column_names)
            if not columns:
                # The embedded engine names no columns when no row comes back; the caller still wants them.
                columns = self._described_columns(sql, parameters)
        return {"columns": columns, "rows": [list(r) for r in result.result_rows]}

    def _raise_if_limit(self, exc: Exception) -> None:
        code = _ERROR_CODE.search(str(exc))
        limit = _LIMIT_ERRORS.get(int(code.group(1))) if code else None
        if limit is None:
            return
        settings = self._reader.get_client_setting
        if limit == "memory":
            allowed = f"{int(settings('max_memory_usage') or 0) / 2**20:.0f} MiB"
            what = "more memory than a query may use"
        else:
            allowed = f"{float(settings('max_execution_time') or 0):g} s"
            what = "longer than a query may run"
        raise QueryLimitExceeded(f"query stopped: it needed {what} ({allowed}); narrow its time window or "
                                 f"aggregate over a rollup table. Engine: {str(exc).strip().splitlines()[0][:300]}"
                                 ) from exc

    def _described_columns(self, sql: str, parameters: dict[str, Any] | None) -> list[str]:
        try:
            described = self._reader.query(f"DESCRIBE ({sql.strip().rstrip(';')})", parameters=parameters)
        except Exception:
            return []
        return [row[0] for row in described.result_rows]

    def query_adhoc(self, sql: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Ad-hoc SQL from a user: refused unless it only reads the store's own tables; then run read-only,
        within the engine's time and row limits."""
        self._check_reads_only_store_tables(sql, parameters)
        return self.query_readonly(sql, parameters)

    def _check_reads_only_store_tables(self, sql: str, parameters: dict[str, Any] | None) -> None:
        with self._query_lock:
            try:
                database = self._inspector.command("SELECT currentDatabase()")
                tree = self._inspector.query(f"EXPLAIN QUERY TREE {sql}", parameters=parameters).result_rows
            except Exception as exc:
                message = str(exc)
                if "(READONLY)" in message:
                    raise QueryRefused("refused: the query API is read-only") from exc
                if "(SYNTAX_ERROR)" in message and not re.match(r"(?is)^\s*(select|with)\b", sql):
                    raise QueryRefused("refused: the query API is read-only and answers SELECT queries only") from exc
                raise
        for (line,) in tree:
            table = _TREE_TABLE.match(line)
            if table and table.group(1) not in ALLOWED_SYSTEM_TABLES \
                    and not table.group(1).startswith(f"{database}."):
                raise QueryRefused(f"refused: {table.group(1)} is not a table of the metrics store "
                                   "(system tables and other databases are not readable here)")
            function = _TREE_TABLE_FUNCTION.match(line)
            if function and function.group(1) not in ALLOWED_TABLE_FUNCTIONS:
                raise QueryRefused(f"refused: table function {function.group(1)}() is not allowed here")

    def close(self) -> None:
        with self._lock, self._query_lock:
            if self._inspector is not self._reader:
                self._inspector.close()
            self._reader.close()
            for client in self._side_writers:
                client.close()
            self._client.close()
