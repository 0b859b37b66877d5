"""A compacted Kafka topic as a keyed table of protobuf values (the camera registry, the sensor registry, the model
announcements): `put` and `delete` write it, `snapshot` reads it whole once, a `TableFollower` delivers the table
as it is and then every change to it.

A table is read from the beginning on every start and nothing is ever committed: each reader needs each key's
latest value, which is what compaction keeps. A record the table cannot use (no key, not the topic's message type,
or refused by the table's `validate`) is skipped: the key keeps its last good value, the record is logged and
counted in vigil_compacted_records_skipped_total, and a follower is told with a Change whose `problem` says why.
Nothing goes to the dead-letter topic: the record stays in the log until a later put or delete of its key
replaces it, and a registry's writer checks its values before it puts them."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message as KafkaMessage, Producer, TopicPartition
from google.protobuf.message import DecodeError, Message
from prometheus_client import Counter

from libs.common.logs import get_logger
from libs.common.ops import Heartbeat
from libs.common.topics import message_type

log = get_logger(__name__)

V = TypeVar("V", bound=Message)

SKIPPED = Counter("vigil_compacted_records_skipped_total", "Records of a compacted table skipped (the key keeps "
                  "its last good value), by topic and reason: no_key, undecodable, invalid", ["topic", "reason"])


class TableWriteFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Change(Generic[V]):
    """One key of the table, as it is after a record: `value` None when the key is gone (deleted, or with
    `moved`, its partition went to another member of the follower's group). With `problem`, the record was
    skipped and `value` is the key's last good value (None if it has none)."""
    key: str
    value: V | None
    partition: int
    problem: str = ""
    moved: bool = False


OnChange = Callable[[list[Change]], None]


class CompactedTable(Generic[V]):
    """`message` defaults to the catalog's type for the topic. `validate(key, value)` returns why a value is not
    one the table holds (None when it is): put refuses it, readers skip it."""

    def __init__(self, client_config: dict[str, str], topic: str, client_id: str, message: type[V] | None = None,
                 validate: Callable[[str, V], str | None] | None = None) -> None:
        message = message or message_type(topic)
        if message is None:
            raise ValueError(f"{topic} has no message type in the topic catalog: pass one")
        self.client_config = client_config
        self.topic = topic
        self.client_id = client_id
        self.message: type[V] = message
        self.validate = validate

    def put(self, key: str, value: V, timeout_s: float = 30.0) -> None:
        """Writes the key's value; returns once the broker has it (every replica in sync), else raises."""
        if not isinstance(value, self.message):
            raise TypeError(f"{self.topic} holds {self.message.__name__}, not {type(value).__name__}")
        problem = self.validate(key, value) if self.validate else None
        if problem:
            raise ValueError(f"not a value of {self.topic} for {key!r}: {problem}")
        self._write(key, value.SerializeToString(), timeout_s)

    def delete(self, key: str, timeout_s: float = 30.0) -> None:
        """Writes the key's tombstone: every reader drops the key, and compaction the key's older values."""
        self._write(key, None, timeout_s)

    def _write(self, key: str, value: bytes | None, timeout_s: float) -> None:
        if not key:
            raise ValueError("a table key must not be empty")
        # A producer per write: writes are rare (a registry change), and none is left connected in between.
        errors: list[str] = []
        producer = Producer({**self.client_config, "client.id": self.client_id, "enable.idempotence": True,
                             "acks": "all"})
        producer.produce(self.topic, key=key.encode(), value=value,
                         on_delivery=lambda err, _msg: err and errors.append(err.str()))
        if producer.flush(timeout_s) or errors:
            raise TableWriteFailed(f"{self.topic} did not take the change of {key!r}: {errors or 'timed out'}")

    def snapshot(self, timeout_s: float = 30.0) -> dict[str, V]:
        """The table as of now: every partition read from the beginning to the end offset it had when reading
        started, tombstoned keys left out. Raises TimeoutError when that takes longer than timeout_s."""
        follower = TableFollower(self, on_change=None)
        if not follower._run(threading.Event(), until_loaded=True, deadline=time.monotonic() + timeout_s):
            raise TimeoutError(f"{self.topic} not read to its end within {timeout_s:.0f}s")
        return dict(follower.view)

    def follower(self, on_change: OnChange, group: str | None = None, heartbeat: Heartbeat | None = None,
                 poll_s: float = 0.2, max_batch: int = 200) -> "TableFollower[V]":
        """A follower of the whole table, or with `group`, of the partitions Kafka assigns this member of the
        group (the keys move between members as they join and leave)."""
        return TableFollower(self, on_change, group, heartbeat, poll_s, max_batch)


class TableFollower(Generic[V]):
    """`run(stop)` hands `on_change` each partition's table once read to the end it had when assigned (one list,
    a key's latest state only), then every record after it, in log order. `loaded` is set once every assigned
    partition has been read that far; `heartbeat` beats every poll; `view` is the table as read so far."""

    def __init__(self, table: CompactedTable[V], on_change: OnChange | None, group: str | None = None,
                 heartbeat: Heartbeat | None = None, poll_s: float = 0.2, max_batch: int = 200) -> None:
        self.table = table
        self.topic = table.topic
        self.on_change = on_change
        self.group = group
        self.poll_s = poll_s
        self.max_batch = max_batch
        self.heartbeat = heartbeat or Heartbeat(max_age_s=30)
        self.loaded = threading.Event()
        self.view: dict[str, V] = {}
        self._partition_of: dict[str, int] = {}  # every key with a value or a skipped record
        self._assigned: set[int] = set()
        self._loading: dict[int, int] = {}  # partition -> end offset to reach before it counts as read
        self._initial: dict[int, dict[str, Change]] = {}  # partition -> its keys' latest change while loading
        self._pending: list[Change] = []

    def run(self, stop: threading.Event) -> None:
        self._run(stop, until_loaded=False, deadline=None)

    def ready(self) -> tuple[bool, str]:
        if not self._assigned:
            return False, f"no partitions of {self.topic} assigned (yet)"
        if self._loading:
            return False, f"reading {self.topic}: {len(self._loading)} partitions to go"
        return True, f"{len(self.view)} keys of {self.topic} on {len(self._assigned)} partitions"

    def _run(self, stop: threading.Event, until_loaded: bool, deadline: float | None) -> bool:
        config = {
            **self.table.client_config,
            "client.id": self.table.client_id,
            "enable.auto.commit": False,
            # The end of a partition marks it read even when compaction removed its last offsets.
            "enable.partition.eof": True,
        }
        if self.group is None:  # required by the client, never joined: assign() and no commits
            config["group.id"] = f"{self.table.client_id}-{uuid.uuid4().hex[:12]}"
        else:
            config.update({
                "group.id": self.group,
                # Cooperative: a member joining or leaving moves only the partitions that must move.
                "partition.assignment.strategy": "cooperative-sticky",
                # A dead member's partitions move after this long without its heartbeats.
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1_000,
            })
        consumer = Consumer(config)
        try:
            if self.group is None:
                partitions = self._wait_for_partitions(consumer, stop, deadline)
                if partitions is None:
                    return False
                log.info("following a compacted table", topic=self.topic, partitions=len(partitions))
                self._start_loading(consumer, partitions)
                consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            else:
                consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                   on_lost=self._on_revoke)
            while not stop.is_set():
                if until_loaded and self._all_read():
                    return True
                if deadline is not None and time.monotonic() > deadline:
                    return False
                self.heartbeat.beat()
                for msg in consumer.consume(self.max_batch, self.poll_s):
                    self._handle(msg)
                    if until_loaded and self._all_read():
                        return True  # records after the end offsets are not the snapshot's
                self._deliver()
            return False
        finally:
            consumer.close()

    def _wait_for_partitions(self, consumer: Consumer, stop: threading.Event,
                             deadline: float | None) -> list[int] | None:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            self.heartbeat.beat()
            try:
                topic = consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
                if topic is not None and topic.error is None and topic.partitions:
                    return sorted(topic.partitions)
                log.warning("compacted table's topic not there yet", topic=self.topic)
            except Exception as exc:  # the broker is not reachable yet: keep trying, liveness stays green
                log.warning("cannot list the compacted table's topic", topic=self.topic, error=str(exc))
            stop.wait(1.0)
        return None

    def _start_loading(self, consumer: Consumer, partitions: list[int]) -> None:
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10)
            self._assigned.add(partition)
            if high > low:
                self._loading[partition] = high
                self._initial[partition] = {}
        self._deliver()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            tp.offset = OFFSET_BEGINNING
        self._start_loading(consumer, [tp.partition for tp in partitions])
        log.info("compacted table partitions assigned", topic=self.topic,
                 partitions=sorted(tp.partition for tp in partitions))
        # Explicitly, so that the offsets set above are the ones used (cooperative protocol: incremental).
        consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions}
        for key, partition in list(self._partition_of.items()):
            if partition in revoked:
                del self._partition_of[key]
                self.view.pop(key, None)
                if partition not in self._loading:  # its followers were told of the key: tell them it left
                    self._pending.append(Change(key, None, partition, moved=True))
        for partition in revoked:
            self._loading.pop(partition, None)
            self._initial.pop(partition, None)
        self._assigned -= revoked
        self._deliver()
        consumer.incremental_unassign(partitions)

    def _handle(self, msg: KafkaMessage) -> None:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                self._loaded_partition(msg.partition())
            elif err.fatal():
                raise RuntimeError(f"fatal Kafka error: {err.str()}")
            else:
                log.warning("kafka error", topic=self.topic, error=err.str())
            return
        partition = msg.partition()
        change = self._apply(partition, msg.key(), msg.value())
        if change is not None:
            if partition in self._initial:
                self._initial[partition].pop(change.key, None)  # keeps the keys in the order of their last change
                self._initial[partition][change.key] = change
            else:
                self._pending.append(change)
        if partition in self._loading and msg.offset() + 1 >= self._loading[partition]:
            self._loaded_partition(partition)

    def _apply(self, partition: int, raw_key: bytes | None, raw: bytes | None) -> Change | None:
        key = (raw_key or b"").decode("utf-8", "replace")
        if not key:
            self._skipped("no_key", key, partition, "a record without a key")
            return None
        if raw is None:
            known = self._partition_of.pop(key, None) is not None
            self.view.pop(key, None)
            return Change(key, None, partition) if known else None
        try:
            value = self.table.message.FromString(raw)
        except DecodeError as exc:
            return self._skipped("undecodable", key, partition, f"not a {self.table.message.__name__}: {exc}")
        problem = self.table.validate(key, value) if self.table.validate else None
        if problem:
            return self._skipped("invalid", key, partition, problem)
        self.view[key] = value
        self._partition_of[key] = partition
        return Change(key, value, partition)

    def _skipped(self, reason: str, key: str, partition: int, problem: str) -> Change | None:
        # A bad record must not take the table down: the key keeps its last good value.
        SKIPPED.labels(self.topic, reason).inc()
        log.warning("compacted table record skipped", topic=self.topic, key=key, partition=partition,
                    problem=problem)
        if not key:
            return None
        self._partition_of[key] = partition
        return Change(key, self.view.get(key), partition, problem=problem)

    def _loaded_partition(self, partition: int) -> None:
        if self._loading.pop(partition, None) is None:
            return
        initial = self._initial.pop(partition, {})
        # A key whose last record is its tombstone is not in the table: nobody needs to hear of it.
        self._pending.extend(c for c in initial.values() if c.value is not None or c.problem)

    def _all_read(self) -> bool:
        return bool(self._assigned) and not self._loading

    def _deliver(self) -> None:
        if self._pending:
            changes, self._pending = self._pending, []
            if self.on_change is not None:
                self.on_change(changes)
        # Only once handed over: whoever waits for `loaded` finds the table's changes applied.
        if self._all_read() and not self.loaded.is_set():
            self.loaded.set()
            log.info("compacted table loaded", topic=self.topic, keys=len(self.view))
