"""The sink's Kafka loop (services/metrics/prefetching_runner.py): the next batch is consumed and prepared while the
current one is stored, yet every batch is committed only after it is stored, in order. Kafka is replaced by a
scripted consumer here (this is the loop's own logic; tests/integration/test_metrics_*.py run it on real Kafka)."""
from __future__ import annotations

import threading

import pytest

from libs.common.kafka import Rejected
from libs.common.settings import KafkaSettings
from services.metrics.prefetching_runner import PrefetchingKafkaRunner


class Msg:
    def __init__(self, offset: int, value: bytes = b"ok") -> None:
        self._offset, self._value = offset, value

    def topic(self): return "vigil.inference"
    def partition(self): return 0
    def offset(self): return self._offset
    def value(self): return self._value
    def key(self): return None
    def headers(self): return None
    def error(self): return None


class ScriptedConsumer:
    """Hands out the given batches, then empty ones; records what happens in which order."""

    def __init__(self, batches, events: list, stop: threading.Event) -> None:
        self.batches, self.events, self.stop = list(batches), events, stop
        self.on_revoke = None

    def subscribe(self, topics, on_assign=None, on_revoke=None):
        self.on_revoke = on_revoke

    def consume(self, num_messages, timeout):
        if not self.batches:
            self.stop.set()
            return []
        batch = self.batches.pop(0)
        if batch == "rebalance":
            self.on_revoke(self, [])
            return []
        self.events.append(("consumed", batch[0].offset()))
        return batch

    def commit(self, offsets, asynchronous):
        self.events.append(("committed", offsets[0].offset))

    def close(self):
        self.events.append(("closed",))


class NoProducer:
    def __init__(self): self.produced = []
    def produce(self, out): self.produced.append(out)
    def poll(self, timeout_s=0): pass
    def flush(self, timeout_s=60.0): pass


def runner_over(batches, handler, prepare, events):
    stop = threading.Event()
    runner = PrefetchingKafkaRunner(KafkaSettings(bootstrap_servers="127.0.0.1:1"), service="test", group_id="g",
                                    topics=["vigil.inference"], handler=handler, prepare=prepare,
                                    producer=NoProducer(), max_batch=10, max_wait_s=0)
    runner._consumer = ScriptedConsumer(batches, events, stop)
    return runner, stop


def test_the_next_batch_is_consumed_and_prepared_while_the_current_one_is_stored():
    events: list = []
    storing_first = threading.Event()
    second_prepared = threading.Event()

    def prepare(batch):
        events.append(("prepared", batch[0].offset(), threading.current_thread().name))
        if batch[0].offset() == 10:
            second_prepared.set()
        return list(batch)

    def handle(batch):
        if batch[0].offset() == 0:
            storing_first.set()
            # Storing the first batch does not end until the second has been consumed and prepared beside it.
            assert second_prepared.wait(5), "the next batch was not prepared while this one was stored"
        events.append(("stored", batch[0].offset(), threading.current_thread().name))
        return [[] for _ in batch]

    runner, stop = runner_over([[Msg(0), Msg(1)], [Msg(10), Msg(11)], [Msg(20)]], handle, prepare, events)
    runner.run(stop)
    stored = [e for e in events if e[0] == "stored"]
    assert [e[1] for e in stored] == [0, 10, 20]
    assert {e[2] for e in stored} != {threading.current_thread().name}, "batches are stored on the store thread"
    assert all(e[2] == threading.current_thread().name for e in events if e[0] == "prepared")
    # Each batch's offsets are committed after it is stored and before the next one is stored, in order.
    order = [e[:2] for e in events if e[0] in ("stored", "committed")]
    assert order == [("stored", 0), ("committed", 2), ("stored", 10), ("committed", 12), ("stored", 20),
                     ("committed", 21)]
    assert events[-1] == ("closed",)


def test_a_rebalance_waits_for_the_batch_in_flight_to_be_committed():
    events: list = []
    release = threading.Event()

    def handle(batch):
        release.wait(5)
        events.append(("stored", batch[0].offset()))
        return [[] for _ in batch]

    def prepare(batch):
        release.set()
        return list(batch)

    runner, stop = runner_over([[Msg(0)], "rebalance"], handle, prepare, events)
    original = runner._on_revoke

    def on_revoke(consumer, partitions):
        original(consumer, partitions)
        events.append(("revoked",))

    runner._on_revoke = on_revoke
    runner.run(stop)
    assert events.index(("committed", 1)) < events.index(("revoked",))


def test_a_batch_that_cannot_be_delivered_stops_the_loop_and_nothing_after_it_is_committed():
    events: list = []

    def handle(batch):
        return [Rejected("invalid_event", "bad") for _ in batch]

    runner, stop = runner_over([[Msg(0)], [Msg(10)], [Msg(20)]], handle, list, events)

    class FailingProducer(NoProducer):
        def flush(self, timeout_s=60.0):
            raise RuntimeError("dead letters undelivered")

    runner.producer = FailingProducer()
    with pytest.raises(RuntimeError, match="undelivered"):
        runner.run(stop)
    assert not [e for e in events if e[0] == "committed"]
    assert events[-1] == ("closed",)
