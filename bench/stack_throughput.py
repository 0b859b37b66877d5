"""What the whole-stack benchmarks share: a private stack on free ports, and the rate at which it stores
inference events (counted in ClickHouse by the time inference produced them)."""
from __future__ import annotations

import os
import secrets
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from cli.stack.local import LocalStack, StackPorts

QUERY_API_TOKEN = "VIGIL_METRICS_API_TOKEN"


@contextmanager
def bench_stack(state: Path, cache: Path, extra_env: dict[str, dict[str, str]] | None = None,
                progress=print) -> Iterator[LocalStack]:
    """A stack of its own (free ports, its own state dir), up until the block ends, then down. Its query API
    is behind a token of this run's, which `query` sends."""
    token = secrets.token_urlsafe(16)
    env = {name: dict(values) for name, values in (extra_env or {}).items()}
    env.setdefault("metrics", {})[QUERY_API_TOKEN] = token
    previous = os.environ.get(QUERY_API_TOKEN)
    os.environ[QUERY_API_TOKEN] = token
    stack = LocalStack(state=state, cache=cache, ports=StackPorts.free(), extra_env=env)
    try:
        stack.supervisor.up(progress=progress)
        yield stack
    finally:
        stack.supervisor.down(progress=progress)
        if previous is None:
            os.environ.pop(QUERY_API_TOKEN, None)
        else:
            os.environ[QUERY_API_TOKEN] = previous


def query(stack: LocalStack, sql: str) -> list[dict]:
    from tests.integration.conftest import query as query_api
    return query_api(stack, sql)


def stored_rows(stack: LocalStack, where: str = "1") -> int:
    return query(stack, f"SELECT count() AS n FROM inference_events WHERE {where}")[0]["n"]


def produced_between(started: datetime, ended: datetime) -> str:
    """A WHERE clause: events inference produced in [started, ended)."""
    return " AND ".join(f"produced_time {op} toDateTime64('{moment.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]}', 3, 'UTC')"
                        for op, moment in ((">=", started), ("<", ended)))


def wait_for_rows(stack: LocalStack, rows: int = 50, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while stored_rows(stack) < rows:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the pipeline stored fewer than {rows} rows in {timeout_s:.0f} s")
        time.sleep(1)


def pipeline_throughput(stack: LocalStack, seconds: float, settle_s: float = 5.0) -> float:
    """Inference events per second produced during a window of `seconds`, counted once they are stored.

    Counted by the time inference produced them, `settle_s` after the window: the sink stores in batches of up
    to a second while it already reads the next, so counting rows as they land would be off by a batch at
    either end of the window (a few percent of 15 s)."""
    wait_for_rows(stack)
    started = datetime.now(timezone.utc)
    time.sleep(seconds)
    ended = datetime.now(timezone.utc)
    time.sleep(settle_s)
    return stored_rows(stack, produced_between(started, ended)) / (ended - started).total_seconds()


def frames_produced(stack: LocalStack) -> int:
    from libs.common.topics import FRAMES
    from tests.integration.kafka_tools import end_offsets
    return sum(end_offsets(stack.config.kafka_bootstrap, FRAMES).values())


def skip_backlog(stack: LocalStack, group: str = "vigil-inference") -> None:
    """Moves the (stopped) inference group to the end of vigil.frames, so it starts on fresh frames."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient
    from libs.common.topics import FRAMES
    from tests.integration.kafka_tools import end_offsets

    ends = end_offsets(stack.config.kafka_bootstrap, FRAMES)
    admin = AdminClient({"bootstrap.servers": stack.config.kafka_bootstrap})
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(FRAMES, p, o) for p, o in ends.items()])
    for future in admin.alter_consumer_group_offsets([request]).values():
        future.result(timeout=30)
