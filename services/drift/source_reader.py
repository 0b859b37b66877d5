"""The drift service's four source topics read by an aiokafka consumer of its own, inside the faust app
(VIGIL_DRIFT_SOURCE_READER=aiokafka): faust's stream path costs 61-66 us per event before any work is done
(README, Benchmarks), more than the 50 us a 20,000 events/s service may spend. faust keeps the rest: the state
table and its changelog, the idle-window timer, the producer, the references agent.

Each batch: read (getmany) -> handled (the processor, outputs published, touched states written to the table) ->
the producer flushed (outputs and changelog durable) -> the batch's offsets committed. A SIGKILL re-reads only
messages whose state may not be in the changelog, and the offsets applied in the state skip those that are
(processor.py): exact per subject, as with the faust agent. The consumer has a group of its own,
f"{group_id}-sources", with manual commits."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from libs.common.logs import get_logger
from libs.common.settings import KafkaSettings
from services.drift.processor import SOURCE_TOPICS
from services.drift.settings import DriftSettings

log = get_logger(__name__)

Handler = Callable[[Sequence[ConsumerRecord]], Awaitable[None]]


def consumer_settings(settings: DriftSettings, kafka: KafkaSettings) -> dict:
    config = {"bootstrap_servers": kafka.bootstrap_servers, "group_id": f"{settings.group_id}-sources",
              "enable_auto_commit": False, "auto_offset_reset": "earliest" if settings.from_beginning else "latest",
              "security_protocol": kafka.security_protocol,
              # A killed worker's partitions come back after the session timeout (as faust's: 10 s).
              "session_timeout_ms": 10_000, "heartbeat_interval_ms": 3_000,
              "max_partition_fetch_bytes": 4 * 1024 * 1024}
    if kafka.sasl_mechanism:
        config.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=kafka.sasl_username,
                      sasl_plain_password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None)
    return config


async def take_batch(consumer: AIOKafkaConsumer, max_events: int, max_wait_s: float) -> list[ConsumerRecord]:
    """Up to max_events records: waits up to max_wait_s for the first, then takes what is already fetched (a
    backlog fills the batch, a trickle is handed on at once)."""
    records: list[ConsumerRecord] = []
    timeout_ms = int(max_wait_s * 1000)
    deadline = time.monotonic() + max_wait_s
    while len(records) < max_events:
        batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_events - len(records))
        taken = [record for part in batches.values() for record in part]
        if not taken:
            break
        records.extend(taken)
        if time.monotonic() >= deadline:
            break
        timeout_ms = 0
    return records


def next_offsets(records: Sequence[ConsumerRecord]) -> dict[TopicPartition, OffsetAndMetadata]:
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        if record.offset >= offsets.get(tp, -1):
            offsets[tp] = record.offset
    return {tp: OffsetAndMetadata(offset + 1, "") for tp, offset in offsets.items()}


async def read_sources(app: faust.App, settings: DriftSettings, kafka: KafkaSettings, handle: Handler,
                       on_recovered: Callable[[], None]) -> None:
    """Runs until cancelled (the app stopping). Starts once faust's table recovery is complete and the state is
    restored (on_recovered): a batch handled before would be recorded into subjects whose state is still coming."""
    await app.tables.recovery.completed.wait()
    on_recovered()
    consumer = AIOKafkaConsumer(*SOURCE_TOPICS, **consumer_settings(settings, kafka))
    await consumer.start()
    log.info("reading the sources with aiokafka", group_id=f"{settings.group_id}-sources")
    pending: dict[TopicPartition, OffsetAndMetadata] = {}
    try:
        while True:
            records = await take_batch(consumer, settings.batch_max_events, settings.batch_max_wait_s)
            if not records:
                continue
            await handle(records)
            # Outputs and changelog durable before the offsets that would skip their messages are committed.
            await app.producer.flush()
            pending = next_offsets(records)
            await consumer.commit(pending)
            pending = {}
    finally:
        try:
            if pending:  # stopped between a flush and its commit: what was flushed is committed
                await consumer.commit(pending)
        finally:
            await consumer.stop()
