"""Reading and writing the stack's topics from tests, with a plain confluent-kafka client."""
from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition


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
