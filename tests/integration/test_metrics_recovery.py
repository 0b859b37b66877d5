"""The metrics sink under load and under SIGKILL, on a stack of its own: real Kafka and the sink process (with its
embedded ClickHouse engine), nothing else, on free ports in a temporary directory, always stopped."""
from __future__ import annotations

import secrets
import sys
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from bench.metrics_sink import InferenceEventFactory, produce_events
from cli.stack.local import LocalStack, StackPorts
from cli.stack.supervisor import Supervisor
from libs.common.topics import INFERENCE
from tests.integration.conftest import QUERY_API_TOKEN, query, wait_for
from tests.integration.kafka_tools import end_offsets

pytestmark = pytest.mark.integration


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def sink_stack(tmp_path_factory, monkeypatch_module):
    # The query API behind a token, as in the shared stack: query() sends the one in this process's environment.
    token = secrets.token_urlsafe(16)
    monkeypatch_module.setenv(QUERY_API_TOKEN, token)
    stack = LocalStack(state=tmp_path_factory.mktemp("vigil-metrics-recovery"), ports=StackPorts.free(), extra_env={
        "metrics": {"VIGIL_METRICS_BATCH_MAX_EVENTS": "50000", "VIGIL_METRICS_LIVE_FRAMES": "false",
                    QUERY_API_TOKEN: token}})
    specs = {spec.name: spec for spec in stack.specs()}
    supervisor = Supervisor(stack.paths, [specs["kafka"], specs["metrics"]])
    try:
        supervisor.up(progress=_progress)
        yield stack, supervisor
    finally:
        if supervisor.running_pid("metrics"):
            _progress(f"--- last lines of metrics.log ---\n{supervisor.log_tail('metrics', 10)}")
        supervisor.down(progress=_progress)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def committed_everything(stack) -> bool:
    """The sink's consumer group has committed every partition of vigil.inference up to its end."""
    ends = end_offsets(stack.config.kafka_bootstrap, INFERENCE)
    consumer = Consumer({"bootstrap.servers": stack.config.kafka_bootstrap, "group.id": "vigil-metrics"})
    try:
        committed = consumer.committed([TopicPartition(INFERENCE, p) for p in ends], timeout=10)
    finally:
        consumer.close()
    # A partition that never had a message has nothing to commit.
    return all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0 for tp in committed)


def counts(stack, cameras: str) -> dict:
    return query(stack, (
        "SELECT count() AS rows, uniqExact(event_id) AS distinct_ids, "
        f"(SELECT count() FROM detections WHERE camera_id LIKE '{cameras}') AS detections, "
        f"(SELECT sum(frames) FROM inference_minute WHERE camera_id LIKE '{cameras}') AS rolled_up "
        f"FROM inference_events WHERE camera_id LIKE '{cameras}'"))[0]


def stored(stack, cameras: str) -> int:
    return query(stack, f"SELECT count() AS n FROM inference_events WHERE camera_id LIKE '{cameras}'")[0]["n"]


def test_one_million_events_through_kafka_are_stored_once_each(sink_stack):
    stack, _ = sink_stack
    events = 1_000_000
    factory = InferenceEventFactory([f"million-{i}" for i in range(8)])
    started = time.monotonic()
    # Every event once, and one in a hundred a second time (a producer's retry, a replayed partition).
    sent = produce_events(stack.config.kafka_bootstrap, INFERENCE, factory,
                          [*range(events), *range(0, events, 100)])
    _progress(f"produced {sent} messages in {time.monotonic() - started:.0f}s")
    wait_for(lambda: stored(stack, "million-%") >= events, 600, interval_s=2, what="a million rows")
    wait_for(lambda: committed_everything(stack), 120, interval_s=1, what="every offset committed")
    _progress(f"stored {events} events {time.monotonic() - started:.0f}s after the first was produced")
    result = counts(stack, "million-%")
    assert result == {"rows": events, "distinct_ids": events, "detections": 3 * events, "rolled_up": events}


def test_sigkill_mid_batch_then_restart_loses_no_event_and_stores_none_twice(sink_stack):
    stack, supervisor = sink_stack
    events = 400_000
    factory = InferenceEventFactory([f"kill-{i}" for i in range(4)], run=uuid.uuid4().hex)
    produce_events(stack.config.kafka_bootstrap, INFERENCE, factory, range(events))
    seen = 0
    for kill in range(2):
        # Kill while the sink is working through the backlog, i.e. inside a batch of 50,000.
        seen = wait_for(lambda: (n := stored(stack, "kill-%")) > seen and n, 120, interval_s=0.2,
                        what=f"progress before kill {kill + 1}")
        assert seen < events, "the backlog was drained before the kill; nothing was interrupted"
        supervisor.kill("metrics")
        _progress(f"SIGKILL {kill + 1} with {seen} of {events} rows stored")
        supervisor.up(progress=_progress)
    wait_for(lambda: stored(stack, "kill-%") >= events, 300, interval_s=1, what="the backlog stored after restarts")
    wait_for(lambda: committed_everything(stack), 120, interval_s=1, what="every offset committed")
    result = counts(stack, "kill-%")
    # No event lost, none twice: in the events, in the detections derived from them, and in the rollups.
    assert result == {"rows": events, "distinct_ids": events, "detections": 3 * events, "rolled_up": events}
