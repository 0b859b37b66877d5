"""Reading a compacted registry topic (sensors, models, cameras for the CLI) whole, then following it.

No consumer group offsets: every reader needs every key, and every start must rebuild its view from the
compacted log, so all partitions are assigned at the beginning and nothing is ever committed."""
from __future__ import annotations

import threading
import uuid
from typing import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from libs.common.logs import get_logger
from libs.common.ops import Heartbeat

log = get_logger(__name__)

# One batch of (key, value) in log order; a None value is a tombstone.
Records = list[tuple[bytes | None, bytes | None]]


class CompactedTopicFollower:
    """Hands the topic's records to `on_batch` in log order, from the beginning, until the stop event.
    `loaded` is set once every partition has been read to the end it had when reading started."""

    def __init__(self, client_config: dict[str, str], topic: str, on_batch: Callable[[Records], None],
                 reader_name: str, heartbeat: Heartbeat | None = None, poll_s: float = 0.2,
                 max_batch: int = 200) -> None:
        self.topic = topic
        self.on_batch = on_batch
        self.poll_s = poll_s
        self.max_batch = max_batch
        self.loaded = threading.Event()
        self.heartbeat = heartbeat or Heartbeat(max_age_s=30)
        self._config = {
            **client_config,
            # Required by the client, never joined: assign() and no commits.
            "group.id": f"{reader_name}-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }

    def run(self, stop: threading.Event) -> None:
        consumer = Consumer(self._config)
        try:
            partitions = self._wait_for_partitions(consumer, stop)
            if partitions is None:
                return
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            unread = set(partitions)
            log.info("following a registry topic", topic=self.topic, partitions=len(partitions))
            while not stop.is_set():
                self.heartbeat.beat()
                records: Records = []
                for msg in consumer.consume(self.max_batch, self.poll_s):
                    err = msg.error()
                    if err is None:
                        records.append((msg.key(), msg.value()))
                    elif err.code() == KafkaError._PARTITION_EOF:
                        unread.discard(msg.partition())
                    elif err.fatal():
                        raise RuntimeError(f"fatal Kafka error: {err.str()}")
                    else:
                        log.warning("kafka error", topic=self.topic, error=err.str())
                if records:
                    self.on_batch(records)
                if not unread and not self.loaded.is_set():
                    self.loaded.set()
                    log.info("registry topic loaded", topic=self.topic)
        finally:
            consumer.close()

    def _wait_for_partitions(self, consumer: Consumer, stop: threading.Event) -> list[int] | None:
        while not stop.is_set():
            self.heartbeat.beat()
            try:
                topic = consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
                if topic is not None and topic.error is None and topic.partitions:
                    return sorted(topic.partitions)
                log.warning("registry topic not there yet", topic=self.topic)
            except Exception as exc:  # the broker is not reachable yet: keep trying, liveness stays green
                log.warning("cannot list the registry topic", topic=self.topic, error=str(exc))
            stop.wait(1.0)
        return None


def read_compacted_topic(client_config: dict[str, str], topic: str, on_batch: Callable[[Records], None],
                         reader_name: str, timeout_s: float = 30.0) -> None:
    """Reads the topic once to its end (for a command that lists a registry), handing records to on_batch."""
    follower = CompactedTopicFollower(client_config, topic, on_batch, reader_name)
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(stop,), name=f"read:{topic}", daemon=True)
    thread.start()
    loaded = follower.loaded.wait(timeout_s)
    stop.set()
    thread.join()
    if not loaded:
        raise TimeoutError(f"{topic} not read to its end within {timeout_s:.0f}s")
