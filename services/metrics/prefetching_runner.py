"""The sink's Kafka loop: libs.common's KafkaRunner (at least once: a batch's offsets are committed only after it is
stored and its dead letters delivered), with the next batch consumed and prepared while the current one is stored.

The engine releases the GIL while it works, so consuming from librdkafka and framing the next batch (Python) run
beside the insert of the current one (C++) instead of after it. Batches are still stored and committed one at a
time and in order, by one store thread; on a rebalance the batch in flight is finished (and committed) before the
partitions are given up.

Garbage collection: a batch holds tens of thousands of Kafka messages, which the cyclic collector traverses; its
automatic full passes came every batch or two at 0.1 s each, a fifth of the sink's Python time. During the loop
the process collects on a timer instead (reference counting frees the batches themselves; only cycles wait)."""
from __future__ import annotations

import gc
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

from confluent_kafka import Consumer, Message, TopicPartition

from libs.common.kafka import KafkaRunner
from libs.common.logs import get_logger

log = get_logger(__name__)

Prepare = Callable[[Sequence[Message]], Sequence[Message]]


class PrefetchingKafkaRunner(KafkaRunner):
    """Consume → prepare (this thread) | handle → deliver → commit (the store thread, one batch at a time).

    `prepare` turns a consumed batch into what the handler is then given (e.g. the same messages with their
    payloads framed); it must not touch the store."""

    def __init__(self, *args, prepare: Prepare = list, gc_interval_s: float = 30.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prepare = prepare
        self.gc_interval_s = gc_interval_s
        self._in_flight: Future | None = None

    def run(self, stop: threading.Event) -> None:
        self._consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("consuming", topics=self.topics, max_batch=self.max_batch, prefetch=True)
        store_thread = ThreadPoolExecutor(1, thread_name_prefix="store-batches")
        gc_was_enabled = gc.isenabled()
        gc.freeze()  # what start-up built lives as long as the process: out of every pass
        gc.disable()
        collected_at = time.monotonic()
        try:
            while not stop.is_set():
                self.heartbeat.beat()
                if time.monotonic() - collected_at > self.gc_interval_s:
                    gc.collect()
                    collected_at = time.monotonic()
                batch = self._consumer.consume(self.max_batch, self.max_wait_s)
                self.producer.poll(0)
                messages = [m for m in batch if not self._is_error(m)]
                prepared = self.prepare(messages) if messages else None
                # The previous batch must be stored and committed before the next one starts: raises what
                # storing it raised (e.g. dead letters undelivered), which ends the loop with nothing committed.
                self._finish_in_flight()
                if prepared:
                    self._in_flight = store_thread.submit(self._process, prepared, stop)
            self._finish_in_flight()
        finally:
            if gc_was_enabled:
                gc.enable()
            store_thread.shutdown(wait=True)
            # As KafkaRunner.run: everything handled is committed; leave the group at once.
            self._consumer.close()
            log.info("consumer closed")

    def _finish_in_flight(self) -> None:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Called from consume(): the batch being stored came from these partitions; commit it while they are ours.
        try:
            self._finish_in_flight()
        except Exception:
            log.exception("the batch in flight failed during a rebalance; it will be redelivered")
            raise
        finally:
            super()._on_revoke(consumer, partitions)
