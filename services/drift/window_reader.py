"""Reading the drift service's published windows back from vigil.drift.windows (each carries its samples): a time
range of them into a RangeSelection (window_history.py), for `vigil drift reference set` and for the service's
re-learning after a promotion (promotion.py); and the newest messages of a topic, for `vigil drift status`. A
plain confluent-kafka consumer in a throwaway group: nothing is committed, no partition is taken from a service.
Blocking: the service calls it from an executor thread."""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from libs.common.settings import KafkaSettings
from libs.common.topics import DRIFT_WINDOWS
from protos import events_pb2
from services.drift.window_history import RangeSelection
from services.drift.windows import DriftKey

# Windows are published once closed (their end plus the service's grace), some later after a restart: read this
# long past the range's end before concluding a partition holds no more of it.
LATE_S = 600.0


def _consumer(kafka: KafkaSettings) -> Consumer:
    # A throwaway group: nothing is committed, no partition is taken from a service.
    return Consumer({**kafka.client_config(), "group.id": f"vigil-drift-reader-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False, "enable.partition.eof": True})


def read_partitions(consumer: Consumer, topic: str, starts: dict[int, int], stops: dict[int, int],
                    stop_after_ms: int | None = None, timeout_s: float = 120.0,
                    progress: Callable[[str], None] | None = None) -> Iterator[Message]:
    """Each partition's messages from starts[p] up to stops[p] (exclusive), or until one is timestamped after
    `stop_after_ms`. Progress every few seconds on a long read."""
    pending = {p for p in starts if stops.get(p, 0) > starts[p]}
    if not pending:
        return
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in pending])
    total = sum(stops[p] - starts[p] for p in pending)
    read, deadline, told = 0, time.monotonic() + timeout_s, time.monotonic()
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic} partitions {sorted(pending)} not read within {timeout_s:.0f}s")
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        partition = msg.partition()
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                pending.discard(partition)
                continue
            raise RuntimeError(f"reading {topic}: {msg.error().str()}")
        if partition not in pending:
            continue
        if msg.offset() >= stops[partition] or (stop_after_ms is not None and msg.timestamp()[1] > stop_after_ms):
            pending.discard(partition)
            consumer.pause([TopicPartition(topic, partition)])  # the rest of it is past what was asked
            continue
        read += 1
        if msg.offset() + 1 >= stops[partition]:
            pending.discard(partition)
        if progress is not None and time.monotonic() - told >= 3.0:
            told = time.monotonic()
            progress(f"vigil: read {read} of at most {total} messages of {topic}")
        yield msg


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=10)
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        raise RuntimeError(f"no topic {topic}: is the stack up (make up)?")
    return sorted(metadata.topics[topic].partitions)


def windows_in_range(kafka: KafkaSettings, selection: RangeSelection, wanted: Callable[[DriftKey], bool],
                     late_s: float = LATE_S, progress: Callable[[str], None] | None = None) -> int:
    """Offers the selection every DriftWindow published from the range's start to `late_s` past its end (found per
    partition with offsets_for_times); returns how many were read."""
    consumer = _consumer(kafka)
    try:
        partitions = _partitions(consumer, DRIFT_WINDOWS)
        found = consumer.offsets_for_times([TopicPartition(DRIFT_WINDOWS, p, int(selection.start * 1000))
                                            for p in partitions], timeout=10)
        starts = {tp.partition: tp.offset for tp in found if tp.offset >= 0}  # -1: nothing that recent
        stops = {p: consumer.get_watermark_offsets(TopicPartition(DRIFT_WINDOWS, p), timeout=10)[1]
                 for p in starts}
        read = 0
        for msg in read_partitions(consumer, DRIFT_WINDOWS, starts, stops, int((selection.end + late_s) * 1000),
                                   progress=progress):
            read += 1
            try:
                event = events_pb2.DriftWindow.FromString(msg.value() or b"")
            except Exception:  # noqa: BLE001 (one unreadable message does not stop the read)
                selection.unreadable += 1
                continue
            selection.offer(event, wanted)
        return read
    finally:
        consumer.close()


def tail_of(kafka: KafkaSettings, topic: str, count: int,
            progress: Callable[[str], None] | None = None) -> Iterator[Message]:
    """The newest `count` messages of each partition of a topic."""
    consumer = _consumer(kafka)
    try:
        starts, stops = {}, {}
        for p in _partitions(consumer, topic):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            starts[p], stops[p] = max(low, high - count), high
        yield from read_partitions(consumer, topic, starts, stops, progress=progress)
    finally:
        consumer.close()
