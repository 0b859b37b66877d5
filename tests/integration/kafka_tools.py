"""Reading and writing the stack's topics from tests, with a plain confluent-kafka client."""
from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from google.protobuf.message import DecodeError


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in messages:
        producer.produce(topic, value=value, key=key)
    assert producer.flush(15) == 0, "test messages not delivered"


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex[:8]}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    finally:
        consumer.close()


def read_range(bootstrap: str, topic: str, start: dict[int, int] | None, end: dict[int, int],
               timeout_s: float = 60) -> list[Message]:
    """Every message of the topic from `start` (default: the beginning) up to `end` (exclusive)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    start = start or {p: 0 for p in end}
    pending = {p for p in end if end[p] > start.get(p, 0)}
    consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in pending])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF and msg.offset() >= end[msg.partition()]:
                    pending.discard(msg.partition())
                continue
            if msg.offset() < end[msg.partition()]:
                messages.append(msg)
            if msg.offset() + 1 >= end[msg.partition()]:
                pending.discard(msg.partition())
        assert not pending, f"partitions {pending} of {topic} not read to their end in {timeout_s}s"
        return messages
    finally:
        consumer.close()


class TopicRecorder:
    """Records every message of a topic from the moment it starts, on a thread, with its arrival time."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        import threading

        self.topic = topic
        self.records: list[tuple[float, bytes | None, bytes | None]] = []
        self._stop = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex[:8]}",
                                   "enable.auto.commit": False})
        ends = end_offsets(bootstrap, topic)
        self._consumer.assign([TopicPartition(topic, p, o) for p, o in ends.items()])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is not None and not msg.error():
                self.records.append((time.monotonic(), msg.key(), msg.value()))
        self._consumer.close()

    def since(self, t: float) -> list[tuple[float, bytes | None, bytes | None]]:
        return [r for r in list(self.records) if r[0] >= t]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def __enter__(self) -> "TopicRecorder":
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


def decodable(message_type, messages: list[Message]) -> list:
    """The messages that parse as `message_type`. The stack is shared by the whole session and some tests put
    deliberate poison on the live topics (DLQ tests), so a test reading a topic from its start passes over it."""
    parsed = []
    for message in messages:
        try:
            parsed.append(message_type.FromString(message.value()))
        except DecodeError:
            continue
    return parsed
