"""The drift service on faust-streaming: a consumer of the service's own (source_reader.py; faust's stream path
costs more per event than the 20,000 events/s target allows) or, VIGIL_DRIFT_SOURCE_READER=faust, a faust agent
reads vigil.frames, vigil.inference, vigil.inference.shadow and vigil.inference.sensors in batches and hands them
to the DriftProcessor; a timer closes the windows of subjects gone silent; a second agent follows
vigil.drift.references (references set by hand), a third vigil.rollouts (a promoted model's training cameras
re-learn their input references: promotion.py). Every subject's state (open windows, the windows collected towards
its reference, its alert, the offsets applied) is a value of the faust Table "drift-state", whose changelog topic
rebuilds it after a restart or a SIGKILL.

Delivery is at least once, made exact per subject: the changelog is flushed before the offsets are committed (by
source_reader.py for its consumer, by faust for its agent), and the state carries the offsets it has applied, so
messages read again after a crash are skipped (processor.py). Derived events have ids that are pure functions of
what they describe, so a window closed twice is one event downstream.

The table is written through the producer's partitioner (use_partitioner), not co-partitioned with any one source
topic: a subject's state sits in one changelog partition whichever topic fed it. So one worker holds every subject
(the service runs one replica)."""
from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from dataclasses import dataclass, field

import faust

from libs.common.kafka import DLQ_ERROR, DLQ_ORIGIN_OFFSET, DLQ_ORIGIN_PARTITION, DLQ_ORIGIN_TOPIC, DLQ_REASON, \
    DLQ_SERVICE, Outbound, Rejected
from libs.common.logs import get_logger
from libs.common.ops import Heartbeat
from libs.common.settings import KafkaSettings
from libs.common.topics import DRIFT_REFERENCES, ROLLOUTS
from protos import events_pb2
from services.drift.processor import SOURCE_TOPICS, DriftProcessor, ProcessorOutput, reference_announcement
from services.drift.promotion import Promotion, apply_promotion, plan_promotion, promotion_of, relearnt_references
from services.drift.references import ReferenceStore
from services.drift.settings import DriftSettings
from services.drift.source_reader import read_sources
from services.drift.window_reader import windows_in_range

log = get_logger(__name__)
SERVICE = "drift"
RAW = faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


@dataclass
class DriftApp:
    app: faust.App
    heartbeat: Heartbeat
    # Set once the table is rebuilt and the processor restored from it: readiness.
    restored: asyncio.Event | None = None
    failure: BaseException | None = None
    _ready: list[bool] = field(default_factory=lambda: [False])

    def ready(self) -> tuple[bool, str]:
        return (True, "state restored, consuming") if self._ready[0] else (False, "restoring state from changelog")


class QuietApp(faust.App):
    """faust's App without its Monitor sensor, which every message and event passes through (counters, clocks,
    per-stream lookups) only for faust's own web views, which the service does not serve."""

    def on_init_dependencies(self):
        dependencies = super().on_init_dependencies()
        self.sensors.remove(self.monitor)
        return dependencies


def app_class(sensors: bool) -> type[faust.App]:
    return faust.App if sensors else QuietApp


def broker_urls(kafka: KafkaSettings) -> list[str]:
    return [f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",") if server.strip()]


def _broker_credentials(kafka: KafkaSettings):
    if not kafka.sasl_mechanism:
        return None
    return faust.SASLCredentials(username=kafka.sasl_username,
                                 password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
                                 mechanism=kafka.sasl_mechanism)


def dead_letter(message, rejection: Rejected, dlq_topic: str) -> Outbound:
    """The message as it came (a faust Message or an aiokafka ConsumerRecord: topic, partition, offset, key, value
    and headers), with the reason and its origin in headers."""
    headers = {k: v for k, v in (message.headers or []) if v is not None} if not isinstance(message.headers, dict) \
        else dict(message.headers)
    headers.update({DLQ_REASON: rejection.reason.encode(), DLQ_ERROR: (rejection.detail or rejection.reason).encode(),
                    DLQ_SERVICE: SERVICE.encode(), DLQ_ORIGIN_TOPIC: message.topic.encode(),
                    DLQ_ORIGIN_PARTITION: str(message.partition).encode(),
                    DLQ_ORIGIN_OFFSET: str(message.offset).encode()})
    return Outbound(dlq_topic, message.value or b"", message.key, headers)


def build_app(settings: DriftSettings, kafka: KafkaSettings, processor: DriftProcessor,
              references: ReferenceStore) -> DriftApp:
    # faust's Monitor sensor only feeds faust's own web views: without them, every message and event skips it.
    app = app_class(sensors=settings.web_port is not None)(
        settings.group_id, broker=broker_urls(kafka), broker_credentials=_broker_credentials(kafka),
        store="memory://", processing_guarantee="at_least_once",
        # A monitor starts from now: a first start does not replay a week of results into its references.
        consumer_auto_offset_reset="earliest" if settings.from_beginning else "latest",
        topic_replication_factor=kafka.replication_factor, topic_allow_declare=True,
        web_enabled=settings.web_port is not None, web_host=settings.web_host, web_port=settings.web_port or 6066,
        web_bind=settings.web_host, datadir=str(settings.data_dir), broker_commit_interval=1.0,
        # A killed worker's partitions come back after the session timeout: 10 s, not faust's default 60 s.
        broker_session_timeout=10.0, broker_heartbeat_interval=3.0,
        producer_max_request_size=4 * 1024 * 1024,
        # faust's repaired Cython fast paths (opt-in in 0.15.3): the stream takes events already queued without
        # awaiting the channel, the conductor decodes a message once. ~5 us of faust's ~70 per event, measured.
        cython_optimizations=True,
    )
    heartbeat = Heartbeat(max_age_s=max(60.0, settings.window_s))
    drift = DriftApp(app, heartbeat)

    async def on_agent_crash(agent, exc: BaseException) -> None:
        """An agent that crashes leaves a worker running without it: the service stops instead (non-zero exit,
        its supervisor restarts it). A poison message never gets here: the processor dead-letters it."""
        drift.failure = exc
        log.error("agent crashed; stopping the service", agent=getattr(agent, "name", agent),
                  error=f"{type(exc).__name__}: {exc}")
        os.kill(os.getpid(), signal.SIGTERM)
    # Values are the processor's compressed state as base64 text: a table with a raw-bytes schema kept faust's
    # streams from ever starting (measured with faust-streaming 0.15.3), one with str values works.
    state = app.Table("drift-state", key_type=str, value_type=str, partitions=1, use_partitioner=True)
    announcements = app.topic(DRIFT_REFERENCES, schema=RAW)
    topics: dict[str, faust.TopicT] = {}
    # When the agent last took a batch (or the state was restored): monotonic seconds.
    last_read = [time.monotonic()]
    idle_after_s = max(5.0, settings.grace_s)

    def restore_once() -> None:
        if drift._ready[0]:
            return
        count = 0
        for _subject, data in state.items():
            processor.restore(base64.b64decode(data))
            count += 1
        last_read[0] = time.monotonic()
        log.info("drift state restored", subjects=count)
        drift._ready[0] = True

    def clock() -> float:
        """How far the clock may close windows. While events flow, no further than the newest event read: after a
        restart the rest of a restored window's events are still in the backlog, and the wall clock would close
        it short, its backlog then dropped as late (a SIGKILL mid-window lost half the window so). When nothing
        has come for a while (every subject silent), the wall clock."""
        now = time.time()
        if time.monotonic() - last_read[0] >= idle_after_s:
            return now
        return min(now, processor.newest_event_time or 0.0)

    async def publish(output: ProcessorOutput, dead: list[Outbound] = ()) -> None:
        loop = asyncio.get_running_loop()
        messages = [*output.messages, *dead]
        for profile in output.references:
            ref = await loop.run_in_executor(None, references.put, profile)
            messages.append(reference_announcement(profile, ref))
            log.info("reference built", subject=str(profile.key), windows=profile.windows,
                     object=f"s3://{ref.bucket}/{ref.key}")
        for out in messages:
            topic = topics.get(out.topic) or topics.setdefault(out.topic, app.topic(out.topic, schema=RAW))
            await topic.send(key=out.key, value=out.value, headers=list(out.headers.items()) or None)
        for subject, data in processor.take_touched_states().items():
            state[subject] = base64.b64encode(data).decode()

    async def handle(messages) -> None:
        rejected = processor.handle_batch(messages)
        dead = [dead_letter(messages[index], rejection, kafka.dlq_topic) for index, rejection in rejected]
        await publish(processor.take_output(), dead)
        last_read[0] = time.monotonic()
        heartbeat.beat()

    agents = []
    if settings.source_reader == "faust":
        @app.agent(app.topic(*SOURCE_TOPICS, schema=RAW), name="drift-watch")
        async def watch(stream):
            async for events in stream.take_events(settings.batch_max_events, within=settings.batch_max_wait_s):
                restore_once()
                # faust's messages as they are: they carry topic, partition, offset and value like a SourceMessage
                await handle([event.message for event in events])
        agents.append(watch)
    else:
        @app.task
        async def read_with_aiokafka():
            try:
                await read_sources(app, settings, kafka, handle, restore_once)
            except Exception as exc:  # noqa: BLE001 (the service stops instead of running without its reader)
                await on_agent_crash("drift-sources", exc)
                raise

    @app.agent(announcements, name="drift-references")
    async def follow_references(stream):
        loop = asyncio.get_running_loop()
        async for event in stream.events():
            value = event.message.value
            if not value:
                continue  # a tombstone: the subject's reference was removed; the next windows build a new one
            try:
                announcement = events_pb2.DriftReference.FromString(value)
                profile = await loop.run_in_executor(None, references.get, announcement)
            except Exception as exc:  # noqa: BLE001 (a bad announcement must not stop the watch)
                log.warning("reference not loaded", error=f"{type(exc).__name__}: {exc}")
                continue
            current = processor.monitor.references.get(profile.key)
            if current is None or current.to_json_bytes() != profile.to_json_bytes():
                processor.monitor.set_reference(profile)
                log.info("reference set", subject=announcement.subject, source=announcement.source,
                         set_by=announcement.set_by)

    async def accept_promotion(promotion: Promotion) -> None:
        """The input references of the cameras a promoted model was trained on, re-learnt from their recent
        windows read back from vigil.drift.windows (in a thread), or dropped to be learnt afresh (promotion.py)."""
        await app.tables.recovery.completed.wait()
        restore_once()
        now = time.time()
        plan = plan_promotion(processor.monitor, promotion, now)
        for camera, why in plan.skipped.items():
            log.info("reference kept after a promotion", camera=camera, promotion=promotion.source, why=why)
        if not plan.relearn:
            return

        def read(selection, wanted) -> None:
            windows_in_range(kafka, selection, wanted, late_s=0.0)
        try:
            profiles, thin = await asyncio.get_running_loop().run_in_executor(
                None, relearnt_references, plan, processor.monitor, now, read)
        except Exception as exc:  # noqa: BLE001 (unreadable history: learnt afresh from the next windows)
            log.warning("recent windows not read back; references learnt afresh", promotion=promotion.source,
                        error=f"{type(exc).__name__}: {exc}")
            profiles, thin = [], [r.key for r in plan.relearn]
        output = apply_promotion(processor.monitor, plan, profiles, thin, processor.touched)
        for key in thin:
            log.info("reference dropped after a promotion: learnt afresh from the next windows", subject=str(key),
                     promotion=promotion.source)
        await publish(output)

    @app.agent(app.topic(ROLLOUTS, schema=RAW), name="drift-rollouts")
    async def follow_rollouts(stream):
        """Promotions: from the group's committed offset (the latest at a first start: promotions told before the
        service existed are history its references already reflect, or not its business)."""
        async for event in stream.events():
            try:
                promotion = promotion_of(event.message.value or b"")
            except ValueError as exc:  # not the drift service's to dead-letter: the topic is the controller's
                log.warning("rollout event not read", error=str(exc), offset=event.message.offset)
                continue
            if promotion is not None:
                await accept_promotion(promotion)
                heartbeat.beat()

    @app.timer(interval=max(1.0, min(5.0, settings.window_s / 6)))
    async def close_idle_windows():
        if not app.tables.recovery.completed.is_set():
            return
        restore_once()
        await publish(processor.take_output(clock(), close_idle=True))
        heartbeat.beat()

    # In place of the app's own handler, which only tells the consumer (faust sets it as the agents are made).
    for agent in (*agents, follow_references, follow_rollouts):
        agent._on_error = on_agent_crash  # noqa: SLF001
    return drift
