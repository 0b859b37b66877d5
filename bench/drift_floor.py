"""The floor under the drift service's speed: what reading a backlog costs with nothing done per event, in events
per CPU-second, for the three ways Python reads Kafka here: confluent-kafka (librdkafka), aiokafka (faust's client),
and a bare faust-streaming agent (stream.take_events, as the drift service reads). Each runs in a process of its
own (`python -m bench.drift_floor KIND BOOTSTRAP TOPIC EVENTS [faust App settings as JSON]`) and prints one JSON
line; CPU is the whole process's (every thread: librdkafka's included), from just before the client starts until
the last event is read.

The drift service cannot digest events faster than the faust floor: if the floor is under the target, so is the
service, whatever the processor costs. Beside the floors, `aiokafka_processor` runs the drift processor's whole work
(decode, record, close and score windows, snapshot states) on the batches aiokafka reads: what a service reading its
sources with its own consumer could approach (numpy on one thread, as in the service: with two, an MMD takes
several times longer on a busy 2-core machine)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

BATCH = 2000
# As the drift service runs (services/drift/__main__.py): numpy on one thread. Set before numpy loads.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")


def confluent_floor(bootstrap: str, topic: str, events: int) -> dict:
    from confluent_kafka import Consumer

    started = time.process_time()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"floor-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    read, size = 0, 0
    while read < events:
        for message in consumer.consume(BATCH, timeout=1.0):
            if message.error() is None:
                read += 1
                size += len(message.value())
    cpu = time.process_time() - started
    consumer.close()
    return {"events": read, "cpu_s": cpu, "bytes_per_event": size / max(read, 1)}


def aiokafka_floor(bootstrap: str, topic: str, events: int) -> dict:
    return _aiokafka_batches(bootstrap, topic, events, BATCH, lambda records: None)


def aiokafka_processor(bootstrap: str, topic: str, events: int) -> dict:
    """Not a floor: what the drift service's work costs read by aiokafka alone, in batches as the service takes
    them (decode, record, windows closed and scored, a state snapshot per touched subject per batch), with no
    faust in the path. The figure a service that read its sources with its own consumer could approach."""
    import base64

    from services.drift.monitor import DriftMonitor, DriftPolicy
    from services.drift.processor import DriftProcessor

    processor = DriftProcessor(DriftMonitor(DriftPolicy(window_s=60.0, grace_s=5.0)))

    def handle(records) -> None:
        processor.handle_batch(records)
        processor.take_output()
        for data in processor.take_touched_states().values():
            base64.b64encode(data)

    return _aiokafka_batches(bootstrap, topic, events, 10_000, handle)


def _aiokafka_batches(bootstrap: str, topic: str, events: int, batch: int, handle) -> dict:
    """Reads `events` records from the topic's beginning in batches of up to `batch`, each handed to `handle`."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    async def run() -> dict:
        started = time.process_time()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"floor-{uuid.uuid4().hex[:8]}",
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        read = 0
        try:
            while read < events:
                batches = await consumer.getmany(timeout_ms=1000, max_records=batch)
                records = [record for part in batches.values() for record in part if record.value is not None]
                read += len(records)
                handle(records)
            return {"events": read, "cpu_s": time.process_time() - started}
        finally:
            await consumer.stop()

    return asyncio.run(run())


def faust_floor(bootstrap: str, topic: str, events: int, overrides: dict) -> None:
    """A faust app with the drift service's settings (memory store, at least once, commits every second) and one
    agent taking batches of raw events and doing nothing with them. Prints its figures and ends the process once
    every event is read. Overrides: faust App settings, plus "take_events" (the batch) and "sensors" (false: the
    app without faust's own Monitor, which every message and event passes through)."""
    import faust

    from services.drift.faust_app import app_class

    settings = {"store": "memory://", "processing_guarantee": "at_least_once", "consumer_auto_offset_reset": "earliest",
                "topic_allow_declare": True, "web_enabled": False, "broker_commit_interval": 1.0,
                "datadir": tempfile.mkdtemp(prefix="drift-floor-"), **overrides}
    batch = settings.pop("take_events", BATCH)
    app = app_class(settings.pop("sensors", True))(f"floor-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}",
                                                   **settings)
    source = app.topic(topic, schema=faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw",
                                                  value_serializer="raw"))
    started = time.process_time()
    read = [0]

    @app.agent(source, name="floor")
    async def floor(stream):
        async for batch_events in stream.take_events(batch, within=0.5):
            read[0] += len(batch_events)
            if read[0] >= events:
                print(json.dumps({"events": read[0], "cpu_s": time.process_time() - started}), flush=True)
                os._exit(0)  # a bench process: nothing to flush, and a graceful faust stop takes seconds

    faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False).execute_from_commandline()


def measure(kind: str, bootstrap: str, topic: str, events: int, overrides: dict | None = None,
            timeout_s: float = 600) -> dict:
    """Runs one floor in a process of its own; its events per CPU-second and CPU microseconds per event."""
    command = [sys.executable, "-m", "bench.drift_floor", kind, bootstrap, topic, str(events),
               json.dumps(overrides or {})]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    # faust's worker draws a spinner (terminal escapes) on the same line as what the agent prints
    lines = [line[line.index('{"events"'):] for line in done.stdout.splitlines() if '{"events"' in line]
    if not lines:
        raise RuntimeError(f"floor {kind} printed nothing (exit {done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(lines[-1])
    return {**result, "events_per_cpu_s": result["events"] / result["cpu_s"],
            "cpu_us_per_event": result["cpu_s"] * 1e6 / result["events"]}


def main() -> int:
    kind, bootstrap, topic, events = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    overrides = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    if kind == "confluent":
        print(json.dumps(confluent_floor(bootstrap, topic, events)), flush=True)
    elif kind == "aiokafka":
        print(json.dumps(aiokafka_floor(bootstrap, topic, events)), flush=True)
    elif kind == "aiokafka_processor":
        print(json.dumps(aiokafka_processor(bootstrap, topic, events)), flush=True)
    elif kind == "faust":
        faust_floor(bootstrap, topic, events, overrides)
    else:
        raise SystemExit(f"unknown floor {kind!r}: confluent, aiokafka, aiokafka_processor or faust")
    return 0


if __name__ == "__main__":
    sys.exit(main())
