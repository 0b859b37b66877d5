"""The runner every service's Kafka loop uses (libs/common/kafka.py KafkaRunner): one poison message is dead-lettered
while the rest of its batch goes through, a Retryable batch is handed over again without committing, offsets are
committed only once the batch's outputs are delivered, and a stop lets the batch in hand finish. Kafka is replaced
by a scripted consumer and a recording producer (this is the runner's own logic; the services' integration tests
run it on real Kafka)."""
from __future__ import annotations

import threading

import pytest

from libs.common.kafka import (
    DLQ_ORIGIN_OFFSET, DLQ_ORIGIN_PARTITION, DLQ_ORIGIN_TOPIC, DLQ_REASON, DLQ_SERVICE, DeliveryFailed, KafkaRunner,
    Outbound, Rejected, Retryable,
)
from libs.common.settings import KafkaSettings

TOPIC = "vigil.frames"
DLQ = KafkaSettings(bootstrap_servers="127.0.0.1:1").dlq_topic


class Msg:
    def __init__(self, offset: int, value: bytes = b"ok", partition: int = 0) -> None:
        self._offset, self._value, self._partition = offset, value, partition

    def topic(self): return TOPIC
    def partition(self): return self._partition
    def offset(self): return self._offset
    def value(self): return self._value
    def key(self): return b"k%d" % self._offset
    def headers(self): return [("trace", b"t%d" % self._offset)]
    def error(self): return None


class ScriptedConsumer:
    """Hands out the given batches, then sets the stop event; records consumes, commits and close in order."""

    def __init__(self, batches, events: list, stop: threading.Event) -> None:
        self.batches, self.events, self.stop = list(batches), events, stop

    def subscribe(self, topics, on_assign=None, on_revoke=None):
        pass

    def consume(self, num_messages, timeout):
        if not self.batches:
            self.stop.set()
            return []
        batch = self.batches.pop(0)
        self.events.append(("consumed", [m.offset() for m in batch]))
        return batch

    def commit(self, offsets, asynchronous):
        assert asynchronous is False
        self.events.append(("committed", sorted((o.topic, o.partition, o.offset) for o in offsets)))

    def close(self):
        self.events.append(("closed",))


class RecordingProducer:
    """Records what is produced; flush() delivers it, or fails as a broker that refuses the writes would."""

    def __init__(self, events: list, fail_flush: bool = False) -> None:
        self.events, self.fail_flush = events, fail_flush
        self.pending: list[Outbound] = []
        self.delivered: list[Outbound] = []

    def produce(self, out: Outbound) -> None:
        self.pending.append(out)

    def poll(self, timeout_s=0):
        pass

    def flush(self, timeout_s=60.0):
        if self.fail_flush:
            self.events.append(("flush failed", len(self.pending)))
            raise DeliveryFailed("vigil.detections: broker down")
        self.delivered += self.pending
        self.events.append(("delivered", [out.value for out in self.pending]))
        self.pending = []


def runner_over(batches, handler, events, fail_flush=False):
    stop = threading.Event()
    producer = RecordingProducer(events, fail_flush)
    runner = KafkaRunner(KafkaSettings(bootstrap_servers="127.0.0.1:1"), service="test-service", group_id="g",
                         topics=[TOPIC], handler=handler, producer=producer, max_batch=10, max_wait_s=0,
                         consumer=ScriptedConsumer(batches, events, stop))
    return runner, producer, stop


def echo(batch):
    return [[Outbound("vigil.detections", m.value())] for m in batch]


def test_one_poison_message_is_dead_lettered_and_the_rest_of_its_batch_is_processed():
    events: list = []

    def handler(batch):
        if any(m.value() == b"poison" for m in batch):
            raise ValueError("cannot parse poison")
        return echo(batch)

    runner, producer, stop = runner_over([[Msg(0, b"a"), Msg(1, b"poison"), Msg(2, b"c")]], handler, events)
    runner.run(stop)

    good = [out for out in producer.delivered if out.topic == "vigil.detections"]
    assert [out.value for out in good] == [b"a", b"c"]
    [dead] = [out for out in producer.delivered if out.topic == DLQ]
    assert dead.value == b"poison" and dead.key == b"k1"
    assert dead.headers[DLQ_REASON] == b"unhandled_error"
    assert dead.headers[DLQ_SERVICE] == b"test-service"
    assert (dead.headers[DLQ_ORIGIN_TOPIC], dead.headers[DLQ_ORIGIN_PARTITION], dead.headers[DLQ_ORIGIN_OFFSET]) \
        == (TOPIC.encode(), b"0", b"1")
    assert dead.headers["trace"] == b"t1", "the original headers travel with the dead letter"
    # The whole batch counts as processed: committed past the poison message.
    assert ("committed", [(TOPIC, 0, 3)]) in events


def test_a_rejection_the_handler_returns_goes_to_the_dlq_with_its_reason():
    events: list = []

    def handler(batch):
        return [Rejected("malformed_event", "not a Frame") if m.value() == b"bad" else [] for m in batch]

    runner, producer, stop = runner_over([[Msg(5, b"bad"), Msg(6)]], handler, events)
    runner.run(stop)

    [dead] = producer.delivered
    assert dead.topic == DLQ
    assert dead.headers[DLQ_REASON] == b"malformed_event"
    assert dead.headers[DLQ_ORIGIN_OFFSET] == b"5"
    assert ("committed", [(TOPIC, 0, 7)]) in events


def test_a_retryable_batch_is_handed_over_again_and_nothing_is_committed_meanwhile():
    events: list = []
    calls = []

    def handler(batch):
        calls.append([m.offset() for m in batch])
        events.append(("handled", len(calls)))
        if len(calls) < 3:
            raise Retryable("store is down")
        return echo(batch)

    runner, producer, stop = runner_over([[Msg(0), Msg(1)]], handler, events)
    runner.run(stop)

    assert calls == [[0, 1]] * 3, "the same batch, whole, each time"
    first_commit = next(i for i, e in enumerate(events) if e[0] == "committed")
    assert events.index(("handled", 3)) < first_commit
    assert [e for e in events if e[0] == "committed"] == [("committed", [(TOPIC, 0, 2)])]


def test_a_stop_while_retrying_commits_nothing_so_the_batch_is_redelivered():
    events: list = []
    stop_holder: list[threading.Event] = []

    def handler(batch):
        stop_holder[0].set()  # SIGTERM arrives while the store is down
        raise Retryable("store is down")

    runner, producer, stop = runner_over([[Msg(0)], [Msg(1)]], handler, events)
    stop_holder.append(stop)
    runner.run(stop)

    assert not [e for e in events if e[0] in ("committed", "delivered")]
    assert events == [("consumed", [0]), ("closed",)], "nothing more is consumed after the stop"


def test_offsets_are_committed_only_after_the_outputs_are_delivered():
    events: list = []
    runner, producer, stop = runner_over([[Msg(0, b"a"), Msg(1, b"b")], [Msg(2, b"c", partition=1)]], echo, events)
    runner.run(stop)

    assert events == [
        ("consumed", [0, 1]), ("delivered", [b"a", b"b"]), ("committed", [(TOPIC, 0, 2)]),
        ("consumed", [2]), ("delivered", [b"c"]), ("committed", [(TOPIC, 1, 3)]),
        ("closed",),
    ]


def test_a_failed_delivery_commits_nothing_and_stops_the_runner():
    events: list = []
    runner, producer, stop = runner_over([[Msg(0)], [Msg(1)]], echo, events, fail_flush=True)
    with pytest.raises(DeliveryFailed):
        runner.run(stop)

    assert not [e for e in events if e[0] == "committed"]
    # The consumer still leaves the group, and the undelivered batch is redelivered to whoever takes over.
    assert events == [("consumed", [0]), ("flush failed", 1), ("closed",)]


def test_a_stop_during_a_batch_lets_it_finish_deliver_and_commit_before_closing():
    events: list = []
    stop_holder: list[threading.Event] = []

    def handler(batch):
        stop_holder[0].set()  # SIGTERM arrives mid-batch
        events.append(("handled", [m.offset() for m in batch]))
        return echo(batch)

    runner, producer, stop = runner_over([[Msg(0, b"a")], [Msg(1, b"b")]], handler, events)
    stop_holder.append(stop)
    runner.run(stop)

    assert events == [
        ("consumed", [0]), ("handled", [0]), ("delivered", [b"a"]), ("committed", [(TOPIC, 0, 1)]), ("closed",),
    ]


def test_with_a_checkpoint_offsets_are_held_until_the_handler_has_made_its_work_durable():
    events: list = []
    durable_after = {"batches": 2}
    seen: list = []

    def handler(batch):
        seen.extend(m.offset() for m in batch)
        return [[] for _ in batch]

    def checkpoint(final):
        if final or len(seen) >= durable_after["batches"] * 2:
            events.append(("durable", list(seen), final))
            seen.clear()
            return [Outbound("vigil.datasets", b"version")]
        return None

    stop = threading.Event()
    producer = RecordingProducer(events)
    runner = KafkaRunner(KafkaSettings(bootstrap_servers="127.0.0.1:1"), service="test-service", group_id="g",
                         topics=[TOPIC], handler=handler, producer=producer, max_batch=10, max_wait_s=0,
                         consumer=ScriptedConsumer([[Msg(0), Msg(1)], [Msg(2), Msg(3)], [Msg(4)]], events, stop),
                         checkpoint=checkpoint)
    runner.run(stop)

    commits = [e for e in events if e[0] == "committed"]
    # Nothing committed after the first batch; after the second, once the version announcing them was delivered.
    assert events.index(("durable", [0, 1, 2, 3], False)) < events.index(("delivered", [b"version"])) \
        < events.index(("committed", [(TOPIC, 0, 4)]))
    assert ("consumed", [2, 3]) in events and events.index(("consumed", [2, 3])) < events.index(commits[0])
    # The stop makes the rest durable and commits it before the consumer closes.
    assert ("durable", [4], True) in events
    assert commits == [("committed", [(TOPIC, 0, 4)]), ("committed", [(TOPIC, 0, 5)])]
    assert events[-1] == ("closed",)
