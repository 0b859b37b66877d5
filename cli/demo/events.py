"""The loop's events as they happen: a consumer on a thread reads the topics the loop speaks on from their end at
start, decodes each event into its message type (topics.py) and keeps it with its arrival time, so the demo can wait
for "the first DriftAlert raised for this camera" and say how long after the drift it came."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition
from google.protobuf.message import DecodeError, Message

from libs.common.topics import message_type


@dataclass(frozen=True)
class Seen:
    topic: str
    at: float  # arrival, epoch seconds
    event: Message


class EventLog:
    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.topics = topics
        self.seen: list[Seen] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"vigil-demo-{uuid.uuid4().hex[:8]}",
                                   "enable.auto.commit": False})
        partitions = []
        for topic in topics:
            metadata = self._consumer.list_topics(topic, timeout=10).topics[topic]
            partitions += [TopicPartition(topic, p, OFFSET_END) for p in metadata.partitions]
        self._consumer.assign(partitions)
        self._assigned = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-events", daemon=True)
        self._thread.start()
        self._assigned.wait(15)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                message = self._consumer.poll(0.2)
                self._assigned.set()
                if message is None or message.error():
                    if message is not None and message.error().code() != KafkaError._PARTITION_EOF:
                        print(f"[demo] kafka: {message.error().str()}", flush=True)
                    continue
                kind = message_type(message.topic())
                try:
                    event = kind.FromString(message.value() or b"")
                except DecodeError:
                    continue  # poison on a shared topic: the owners dead-letter it
                with self._changed:
                    self.seen.append(Seen(message.topic(), time.time(), event))
                    self._changed.notify_all()
        finally:
            self._consumer.close()

    def wait_for(self, topic: str, matches: Callable[[Message], bool], timeout_s: float, what: str,
                 since: float = 0.0) -> Seen:
        """The first event of `topic` that arrived at or after `since` and `matches`; TimeoutError naming `what`."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for seen in self.seen:
                    if seen.topic == topic and seen.at >= since and matches(seen.event):
                        return seen
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {what} within {timeout_s:.0f} s")
                self._changed.wait(min(left, 1.0))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
