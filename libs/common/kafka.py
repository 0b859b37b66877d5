"""Kafka for every service: an idempotent producer, and one runner that owns the consume loop.

The runner gives at-least-once delivery: a batch is consumed, handed to the service's handler, its outputs
are produced and *delivered*, and only then are the batch's offsets committed. A message the handler cannot
process goes to the dead-letter topic with the reason and its origin in headers, and counts as processed,
so one poison message never stops a partition or crash-loops a service. SIGTERM (the stop event) lets the
batch in hand finish, flush and commit before the consumer closes."""
from __future__ import annotations

import threading
from collections import Counter as Tally
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Histogram

from libs.common.logs import get_logger
from libs.common.ops import Heartbeat
from libs.common.settings import KafkaSettings

log = get_logger(__name__)

CONSUMED = Counter("vigil_kafka_consumed_total", "Messages consumed", ["topic"])
PRODUCED = Counter("vigil_kafka_produced_total", "Messages produced and delivered", ["topic"])
DEAD_LETTERED = Counter("vigil_kafka_dead_lettered_total", "Messages sent to the dead-letter topic", ["topic"])
BATCH_SECONDS = Histogram(
    "vigil_kafka_batch_seconds", "Time to handle, deliver and commit one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Header names on dead letters. Values are UTF-8.
DLQ_REASON = "vigil.dlq.reason"
DLQ_ERROR = "vigil.dlq.error"
DLQ_SERVICE = "vigil.dlq.service"
DLQ_ORIGIN_TOPIC = "vigil.dlq.origin.topic"
DLQ_ORIGIN_PARTITION = "vigil.dlq.origin.partition"
DLQ_ORIGIN_OFFSET = "vigil.dlq.origin.offset"


@dataclass(frozen=True)
class Outbound:
    """A message a handler wants produced."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: dict[str, bytes] = field(default_factory=dict)


class Rejected(Exception):
    """Raised (or returned) by a handler for a message that can never be processed: it goes to the DLQ."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Retryable(Exception):
    """Raised by a handler when the batch failed for a reason that will pass (a store is down): the runner
    waits and hands it the same batch again, committing nothing meanwhile."""


# For each input message, in order: the messages to produce, or the reason it was rejected.
Outcome = list[Outbound] | Rejected
BatchHandler = Callable[[Sequence[Message]], list[Outcome]]
# A handler that makes its work durable now and then (e.g. a dataset version every N messages) rather than per
# batch: called after every consume, with final=True at a stop or before partitions are revoked. It answers None
# while nothing is durable yet (the offsets consumed so far are held), or the messages announcing what it made
# durable (maybe none): those are produced and delivered, then every held offset is committed. With final=True it
# must make everything durable (or raise: nothing is committed and the messages are read again).
Checkpoint = Callable[[bool], "list[Outbound] | None"]


def producer_config(kafka: KafkaSettings, client_id: str, **overrides: str | int) -> dict[str, object]:
    return {
        **kafka.client_config(),
        "client.id": client_id,
        # Idempotence: broker-side dedupe of the producer's own retries, and ordering per partition.
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        **overrides,
    }


class DeliveryFailed(RuntimeError):
    pass


class DeliveringProducer:
    """A producer whose flush() tells whether everything produced since the last flush was delivered."""

    def __init__(self, config: dict[str, object]) -> None:
        self._producer = Producer(config)
        self._errors: list[str] = []
        self._lock = threading.Lock()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            with self._lock:
                self._errors.append(f"{msg.topic()}: {err.str()}")
        else:
            PRODUCED.labels(msg.topic()).inc()

    def produce(self, out: Outbound) -> None:
        while True:
            try:
                self._producer.produce(
                    out.topic, value=out.value, key=out.key, headers=list(out.headers.items()) or None,
                    on_delivery=self._on_delivery,
                )
                return
            except BufferError:
                # The local queue is full: serve delivery callbacks until there is room.
                self._producer.poll(0.1)

    def poll(self, timeout_s: float = 0) -> None:
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 60.0) -> None:
        remaining = self._producer.flush(timeout_s)
        with self._lock:
            errors, self._errors = self._errors, []
        if remaining:
            raise DeliveryFailed(f"{remaining} messages still undelivered after {timeout_s}s")
        if errors:
            raise DeliveryFailed("; ".join(errors[:5]))


def dead_letter(msg: Message, rejection: Rejected, service: str, dlq_topic: str) -> Outbound:
    headers = dict((k, v) for k, v in (msg.headers() or []) if v is not None)
    headers.update({
        DLQ_REASON: rejection.reason.encode(),
        DLQ_ERROR: (rejection.detail or rejection.reason).encode()[:4096],
        DLQ_SERVICE: service.encode(),
        DLQ_ORIGIN_TOPIC: (msg.topic() or "").encode(),
        DLQ_ORIGIN_PARTITION: str(msg.partition()).encode(),
        DLQ_ORIGIN_OFFSET: str(msg.offset()).encode(),
    })
    return Outbound(dlq_topic, msg.value() or b"", msg.key(), headers)


def per_message(handle: Callable[[Message], list[Outbound]]) -> BatchHandler:
    """Adapts a one-message handler to the runner: a Rejected it raises becomes that message's outcome."""

    def handle_batch(batch: Sequence[Message]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for msg in batch:
            try:
                outcomes.append(handle(msg))
            except Rejected as rejected:
                outcomes.append(rejected)
        return outcomes

    return handle_batch


Event = TypeVar("Event")


def decode_each(batch: Sequence[Message], message_type: type[Event]
                ) -> tuple[list[Event], list[int], list[Outcome | None]]:
    """Each message of a batch parsed as a protobuf `message_type`: the events, their positions in the batch,
    and one outcome per message, a malformed_event rejection where it does not parse and None elsewhere, for
    the batch handler to fill."""
    events, positions = [], []
    outcomes: list[Outcome | None] = [None] * len(batch)
    for i, msg in enumerate(batch):
        try:
            events.append(message_type.FromString(msg.value() or b""))
            positions.append(i)
        except DecodeError as exc:
            outcomes[i] = Rejected("malformed_event", f"not a {message_type.DESCRIPTOR.name} event: {exc}")
    return events, positions, outcomes


class KafkaRunner:
    """Consume → handle → produce → commit, at least once, until the stop event is set."""

    def __init__(
        self,
        kafka: KafkaSettings,
        service: str,
        group_id: str,
        topics: list[str],
        handler: BatchHandler,
        producer: DeliveringProducer | None = None,
        max_batch: int = 64,
        max_wait_s: float = 0.05,
        heartbeat: Heartbeat | None = None,
        consumer_overrides: dict[str, object] | None = None,
        on_assigned: Callable[[Consumer, list[TopicPartition]], None] | None = None,
        consumer: Consumer | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.kafka = kafka
        # None: each batch's offsets are committed once its outputs are delivered. Given: held until it answers.
        self.checkpoint = checkpoint
        self._held: dict[tuple[str, int], int] = {}
        # Called with the consumer and the newly assigned partitions before their first message is consumed
        # (e.g. to rebuild state kept per key from the log); readiness waits for it.
        self.on_assigned = on_assigned
        self.service = service
        self.topics = topics
        self.handler = handler
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.heartbeat = heartbeat or Heartbeat(max_age_s=60)
        self.assigned = threading.Event()
        self.producer = producer or DeliveringProducer(producer_config(kafka, client_id=service))
        # `consumer` is given only by unit tests of this loop (a scripted stand-in); services let it be built here.
        self._consumer = consumer or Consumer({
            **kafka.client_config(),
            "group.id": group_id,
            "client.id": service,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # Fail over quickly when a replica dies, without rebalancing on every slow batch.
            "session.timeout.ms": 10_000,
            "max.poll.interval.ms": 300_000,
            **(consumer_overrides or {}),
        })

    def run(self, stop: threading.Event) -> None:
        self._consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("consuming", topics=self.topics, max_batch=self.max_batch)
        try:
            while not stop.is_set():
                self.heartbeat.beat()
                batch = self._consumer.consume(self.max_batch, self.max_wait_s)
                self.producer.poll(0)
                messages = [m for m in batch if not self._is_error(m)]
                if messages:
                    self._process(messages, stop)
                if self.checkpoint is not None:
                    self._checkpoint(final=False)
            if self.checkpoint is not None:
                self._checkpoint(final=True)
        finally:
            # Everything handled has been delivered and committed by _process; closing leaves the group
            # at once so that partitions move to a survivor without waiting for the session timeout.
            self._consumer.close()
            log.info("consumer closed")

    def _process(self, messages: list[Message], stop: threading.Event) -> None:
        started = time.perf_counter()
        # One counter update per topic and batch: a label lookup per message costs more than the sink's
        # own work per event at tens of thousands of events per second.
        for topic, count in Tally(msg.topic() for msg in messages).items():
            CONSUMED.labels(topic).inc(count)
        outcomes = self._handle(messages, stop)
        if outcomes is None:  # stopped while retrying: commit nothing, the batch is redelivered
            return
        for msg, outcome in zip(messages, outcomes):
            if isinstance(outcome, Rejected):
                DEAD_LETTERED.labels(msg.topic()).inc()
                log.warning("dead-lettered", reason=outcome.reason, detail=outcome.detail[:300],
                            topic=msg.topic(), partition=msg.partition(), offset=msg.offset())
                self.producer.produce(dead_letter(msg, outcome, self.service, self.kafka.dlq_topic))
            else:
                for out in outcome:
                    self.producer.produce(out)
        # Raises if anything was not delivered: we must not commit then, and the process exits so the
        # supervisor restarts it and the batch is redelivered.
        self.producer.flush()
        if self.checkpoint is None:
            self._commit(self._next_offsets(messages))
        else:
            for key, offset in self._next_offsets(messages).items():
                self._held[key] = max(self._held.get(key, -1), offset)
        BATCH_SECONDS.observe(time.perf_counter() - started)

    def _checkpoint(self, final: bool) -> None:
        """Asks the handler whether its work is durable; if so, delivers its announcements and commits the held
        offsets."""
        announced = self.checkpoint(final)
        if announced is None:
            return
        for out in announced:
            self.producer.produce(out)
        self.producer.flush()
        held, self._held = self._held, {}
        if held:
            self._commit(held)

    def _handle(self, messages: list[Message], stop: threading.Event) -> list[Outcome] | None:
        backoff = 0.5
        while True:
            try:
                outcomes = self.handler(messages)
                if len(outcomes) != len(messages):
                    raise RuntimeError(f"handler returned {len(outcomes)} outcomes for {len(messages)} messages")
                return outcomes
            except Retryable as exc:
                log.warning("batch will be retried", error=str(exc), backoff_s=backoff)
                if stop.wait(backoff):
                    return None
                backoff = min(backoff * 2, 30.0)
                self.heartbeat.beat()
            except Exception:
                # A bug or an input the handler did not anticipate: isolate it message by message, so
                # the good ones go through and only the culprits are dead-lettered.
                log.exception("batch failed; handling its messages one at a time")
                return [self._handle_alone(msg) for msg in messages]

    def _handle_alone(self, msg: Message) -> Outcome:
        try:
            return self.handler([msg])[0]
        except Rejected as rejected:
            return rejected
        except Retryable:
            raise  # propagate: the whole service is unable to proceed, not this message
        except Exception as exc:
            return Rejected("unhandled_error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")

    @staticmethod
    def _next_offsets(messages: list[Message]) -> dict[tuple[str, int], int]:
        next_offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (msg.topic(), msg.partition())
            next_offsets[key] = max(next_offsets.get(key, -1), msg.offset() + 1)
        return next_offsets

    def _commit(self, next_offsets: dict[tuple[str, int], int]) -> None:
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()], asynchronous=False
            )
        except KafkaException as exc:
            # A rebalance took the partitions away: the outputs are delivered, and the new owner will
            # handle these messages again; downstream dedupe by event id absorbs the repeat.
            log.warning("commit failed; batch will be redelivered", error=str(exc))

    def _is_error(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() == KafkaError._PARTITION_EOF:
            return True
        if err.fatal():
            raise RuntimeError(f"fatal Kafka error: {err.str()}")
        log.warning("kafka error", error=err.str())
        return True

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        if self.on_assigned is not None and partitions:
            self.on_assigned(_consumer, partitions)
        self.assigned.set()

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        if self.checkpoint is not None and self._held:
            # What was read from them is made durable and committed while they are still ours.
            self._checkpoint(final=True)
