"""`python -m bench.metrics_sink`: the metrics sink's sustained speed, Kafka → ClickHouse, beside the store's raw
column-insert speed, measured in one run.

1. raw      the store alone: pre-built columns of inference events (3 detections each) inserted in batches of
            the sink's size, into a fresh chdb store: no Kafka, no decoding, no dedupe lookup.
2. engine   the sink's own path for inference events without Kafka: serialized events parsed by the engine
            (FORMAT Protobuf), deduplicated against the store and moved into inference_events.
3. sink     a backlog of the same events produced to vigil.inference while the sink is down, then the sink
            (its own process, as deployed) started: events/s from its start until every event is stored, i.e.
            the catch-up speed after an outage, with decoding, the dedupe lookup, the inserts and the
            materialized views (detections, rollups) included; and the same from the moment it is ready.
            Progress is read from the sink's own counter on its ops port (asking the store would queue behind
            the sink's writes); at the end the store is asked whether every event is there once. The sink's
            and Kafka's CPU time per event are read from /proc: unlike events/s, they hardly move when other
            processes take the cores.

Each measurement is made --repeat times (the backlog is produced once; before each drain the sink's store and
its group's offsets are deleted) and reported as median, min and max. Kafka and the sink run on this machine as
separate processes and share its cores with this script and whatever else runs; the ratios are the figures to
compare across machines."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

from bench.common import machine_description, process_cpu_s, produce, say
from protos import events_pb2

# 36 bytes, the length of a UUID's text: replaced in the serialized templates by each event's own ids.
_EVENT_ID_PLACEHOLDER = "eeeeeeee-eeee-4eee-8eee-eeeeeeeeeeee"
_FRAME_ID_PLACEHOLDER = "ffffffff-ffff-4fff-8fff-ffffffffffff"
LABELS = ("person", "car", "bicycle", "truck", "bus", "dog")


class InferenceEventFactory:
    """Serialized InferenceResult events with 3 detections each, fast: a few templates are serialized once and
    each event is a template with its ids written in (ids are fixed-length text, so the bytes stay valid)."""

    def __init__(self, camera_ids: list[str], templates_per_camera: int = 32, run: str | None = None,
                 event_time_ns: int | None = None) -> None:
        self.run = (run or uuid.uuid4().hex)[:8]
        now = event_time_ns or time.time_ns()
        self.templates: list[tuple[bytes, bytes]] = []
        for c, camera_id in enumerate(camera_ids):
            for t in range(templates_per_camera):
                env = events_pb2.Envelope(event_id=_EVENT_ID_PLACEHOLDER, source=f"camera/{camera_id}",
                                          schema_version=1, trace_id=uuid.uuid4().hex, producer="bench")
                env.event_time.FromNanoseconds(now - (templates_per_camera - t) * 200_000_000)
                env.ingest_time.FromNanoseconds(now - (templates_per_camera - t) * 200_000_000 + 5_000_000)
                result = events_pb2.InferenceResult(
                    envelope=env, camera_id=camera_id, frame_event_id=_FRAME_ID_PLACEHOLDER, frame_sequence=t,
                    model=events_pb2.ModelRef(name="yolov3-tiny", version="1", precision="f32"),
                    detections=[events_pb2.Detection(
                        label=LABELS[(c + t + d) % len(LABELS)], class_id=d, score=0.5 + d / 10,
                        box=events_pb2.Box(x1=10 + 40 * d, y1=20, x2=50 + 40 * d, y2=120)) for d in range(3)],
                    stage_latency_ms={"queue": 1.0 + t, "decode": 2.5, "preprocess": 1.5, "infer": 20.0 + t,
                                      "postprocess": 0.5},
                    width=768, height=576)
                self.templates.append((camera_id.encode(), result.SerializeToString()))

    def event_id(self, index: int) -> str:
        return f"{self.run}-0000-4000-8000-{index:012x}"

    def message(self, index: int) -> tuple[bytes, bytes]:
        """The event number `index` (the same index always gives the same event, so re-sending it is a duplicate)."""
        # Runs of consecutive events share a template, so event time mostly advances with the index, as in a
        # live stream (a batch then spans a short time range, which the dedupe lookup relies on).
        key, template = self.templates[(index // 1000) % len(self.templates)]
        value = template.replace(_EVENT_ID_PLACEHOLDER.encode(), self.event_id(index).encode(), 1) \
                        .replace(_FRAME_ID_PLACEHOLDER.encode(), f"{self.run}-1111-4000-8000-{index:012x}".encode(), 1)
        return key, value


def produce_events(bootstrap: str, topic: str, factory: InferenceEventFactory, indexes) -> int:
    return produce(bootstrap, topic, (factory.message(index) for index in indexes), **{"compression.type": "lz4"})


def raw_insert_speed(factory: InferenceEventFactory, events: int, batch: int) -> float:
    """Events/s of MetricsStore.insert_columns alone, views included, on a fresh store."""
    from services.metrics.rows import INFERENCE, inference_row
    from services.metrics.store import MetricsStore

    rows = [inference_row(events_pb2.InferenceResult.FromString(factory.message(i)[1]), 0) for i in range(events)]
    columns = [list(zip(*rows[start:start + batch])) for start in range(0, events, batch)]
    path = Path(tempfile.mkdtemp(prefix="vigil-bench-chdb-"))
    store = MetricsStore.open(path)
    try:
        store.migrate()
        started = time.perf_counter()
        for batch_columns in columns:
            store.insert_columns(INFERENCE.name, INFERENCE.columns, batch_columns)
        return events / (time.perf_counter() - started)
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)


def raw_protobuf_speed(factory: InferenceEventFactory, events: int, batch: int) -> float:
    """Events/s of the sink's own engine-parsed path (services/metrics/protobuf_ingest.py) without Kafka:
    serialized events framed, parsed by the engine, deduplicated and moved into inference_events."""
    from services.metrics.sink import EventSink
    from services.metrics.store import MetricsStore

    batches = [[(factory.message(i)[1], 1_700_000_000_000) for i in range(start, min(start + batch, events))]
               for start in range(0, events, batch)]
    path = Path(tempfile.mkdtemp(prefix="vigil-bench-chdb-"))
    store = MetricsStore.open(path)
    try:
        store.migrate()
        sink = EventSink(store, engine_parses_inference=True)
        started = time.perf_counter()
        for messages in batches:
            sink.write_inference_protobuf(messages)
        return events / (time.perf_counter() - started)
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)


def _rows_stored(ops_port: int) -> float:
    """The sink's own count of inference rows stored (its ops endpoint): asking the store instead would queue
    behind the sink's writes for the store's lock, and add to the work measured."""
    with urllib.request.urlopen(f"http://127.0.0.1:{ops_port}/metrics", timeout=5) as response:
        body = response.read().decode()
    found = re.search(r'^vigil_metrics_rows_stored_total\{table="inference_events"\} (\S+)$', body, re.M)
    return float(found.group(1)) if found else 0.0


def _warm_group_coordinator(bootstrap: str, topic: str) -> None:
    """A new broker creates its internal offsets topic when the first consumer group commits (seconds). Done here,
    before the first run, as on any broker that has served a group before: it is Kafka's one-time cost, not the
    sink's start."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "vigil-bench-warm-up"})
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()


def _reset_sink(stack, sink_only) -> None:
    """Stops the sink and forgets what it did: its store and its consumer group's offsets."""
    from confluent_kafka.admin import AdminClient

    sink_only.down(progress=lambda _: None)
    admin = AdminClient({"bootstrap.servers": stack.config.kafka_bootstrap})
    deadline = time.monotonic() + 60
    while True:
        try:
            for future in admin.delete_consumer_groups(["vigil-metrics"], request_timeout=10).values():
                future.result()
            break
        except Exception as exc:  # the group may still be settling after the sink left it
            if "GROUP_ID_NOT_FOUND" in str(exc):
                break
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    shutil.rmtree(stack.paths.data("clickhouse"), ignore_errors=True)


def sink_speed(events: int, batch: int, factory: InferenceEventFactory, repeat: int) -> list[dict[str, float]]:
    """Events/s of the sink catching up a backlog of `events` in Kafka, from its start to the last row stored;
    `repeat` times over the same backlog, each time with a fresh store and the group's offsets deleted."""
    from cli.stack.local import LocalStack, StackPorts
    from cli.stack.supervisor import Supervisor
    from libs.common.topics import CATALOG, INFERENCE, ensure_topics
    from tests.integration.conftest import query

    state = Path(tempfile.mkdtemp(prefix="vigil-bench-sink-"))
    stack = LocalStack(state=state, ports=StackPorts.free(), extra_env={"metrics": {
        "VIGIL_METRICS_BATCH_MAX_EVENTS": str(batch), "VIGIL_METRICS_LIVE_FRAMES": "false"}})
    specs = {s.name: s for s in stack.specs()}
    kafka_only = Supervisor(stack.paths, [specs["kafka"]])
    sink_only = Supervisor(stack.paths, [specs["metrics"]])
    with_sink = Supervisor(stack.paths, [specs["kafka"], specs["metrics"]])
    runs = []
    try:
        kafka_only.up(progress=say)
        kafka_pid = kafka_only.running_pid("kafka")
        ensure_topics({"bootstrap.servers": stack.config.kafka_bootstrap}, 1, CATALOG)
        started = time.perf_counter()
        produce_events(stack.config.kafka_bootstrap, INFERENCE, factory, range(events))
        say(f"      produced {events} events in {time.perf_counter() - started:.1f}s")
        _warm_group_coordinator(stack.config.kafka_bootstrap, INFERENCE)
        for run in range(repeat):
            if run:
                _reset_sink(stack, sink_only)
            kafka_cpu = process_cpu_s(kafka_pid)
            started = time.perf_counter()
            sink_only.up(progress=lambda _: None)
            ready_s = time.perf_counter() - started
            sink_pid = sink_only.running_pid("metrics")
            sink_cpu = process_cpu_s(sink_pid)
            while _rows_stored(stack.config.ports.metrics_ops) < events:
                time.sleep(0.05)
            total_s = time.perf_counter() - started
            cpu_s, kafka_cpu_s = process_cpu_s(sink_pid) - sink_cpu, process_cpu_s(kafka_pid) - kafka_cpu
            stored = query(stack, "SELECT count() AS n, uniqExact(event_id) AS u FROM inference_events")[0]
            runs.append({"events": events, "stored": stored["n"], "distinct": stored["u"], "startup_s": ready_s,
                         "seconds": total_s, "events_per_s": events / total_s,
                         "events_per_s_after_start": events / max(total_s - ready_s, 1e-9),
                         "sink_cpu_us_per_event": cpu_s * 1e6 / events,
                         "kafka_cpu_us_per_event": kafka_cpu_s * 1e6 / events,
                         "load_average_1m": os.getloadavg()[0]})
            r = runs[-1]
            say(f"      run {run + 1}: {r['events_per_s']:,.0f} events/s ({r['events_per_s_after_start']:,.0f} after "
                f"its {ready_s:.1f}s start); sink CPU {r['sink_cpu_us_per_event']:.1f} us/event, Kafka "
                f"{r['kafka_cpu_us_per_event']:.1f}; load {r['load_average_1m']:.1f}")
            if stored["n"] != events or stored["u"] != events:
                raise RuntimeError(f"stored {stored} of {events} events")
        return runs
    except Exception:
        say(f"--- last lines of metrics.log ---\n{with_sink.log_tail('metrics', 20)}")
        raise
    finally:
        with_sink.down(progress=say)
        shutil.rmtree(state, ignore_errors=True)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values)), "min": round(min(values)), "max": round(max(values))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the backlog the sink drains")
    parser.add_argument("--raw-events", type=int, default=200_000, help="events inserted by the raw measurement")
    parser.add_argument("--batch", type=int, default=100_000,
                        help="the sink's batch size (VIGIL_METRICS_BATCH_MAX_EVENTS)")
    parser.add_argument("--repeat", type=int, default=3, help="times each measurement is made")
    parser.add_argument("--out", type=Path, default=Path("bench/results/metrics_sink.json"))
    args = parser.parse_args()

    factory = InferenceEventFactory([f"bench-{i}" for i in range(8)])
    load_before = os.getloadavg()[0]
    raw, raw_protobuf = [], []
    for run in range(args.repeat):
        say(f"[1+2/3] run {run + 1}: raw column inserts into chdb, then the sink's engine-parsed path without Kafka, "
            f"{args.raw_events} events each in batches of {args.batch} ...")
        raw.append(raw_insert_speed(factory, args.raw_events, args.batch))
        raw_protobuf.append(raw_protobuf_speed(factory, args.raw_events, args.batch))
        say(f"      raw {raw[-1]:,.0f} events/s, engine path {raw_protobuf[-1]:,.0f} events/s")
    say(f"[3/3] the sink draining a backlog of {args.events} events from Kafka, {args.repeat} times ...")
    runs = sink_speed(args.events, args.batch, factory, args.repeat)
    raw_m, engine_m = statistics.median(raw), statistics.median(raw_protobuf)
    sink_m = statistics.median(r["events_per_s"] for r in runs)
    after_m = statistics.median(r["events_per_s_after_start"] for r in runs)
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "load_average_1m": {"before": round(load_before, 1), "after": round(os.getloadavg()[0], 1)},
        "detections_per_event": 3,
        "batch_events": args.batch,
        "repeat": args.repeat,
        "raw_insert_events_per_s": spread(raw),
        "engine_parsed_path_events_per_s": spread(raw_protobuf),
        "sink_events_per_s": spread([r["events_per_s"] for r in runs]),
        "sink_events_per_s_after_start": spread([r["events_per_s_after_start"] for r in runs]),
        "sink_startup_s": [round(r["startup_s"], 2) for r in runs],
        "sink_cpu_us_per_event": [round(r["sink_cpu_us_per_event"], 2) for r in runs],
        "kafka_cpu_us_per_event": [round(r["kafka_cpu_us_per_event"], 2) for r in runs],
        "sink_to_raw_ratio": round(sink_m / raw_m, 3),
        "sink_after_start_to_raw_ratio": round(after_m / raw_m, 3),
        "sink_after_start_to_engine_path_ratio": round(after_m / engine_m, 3),
        "backlog": {k: runs[-1][k] for k in ("events", "stored", "distinct")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"\nmedians of {args.repeat}: sink {sink_m:,.0f} events/s from its start / raw insert {raw_m:,.0f} events/s "
          f"= {sink_m / raw_m:.2f}; after its start {after_m:,.0f} events/s = {after_m / raw_m:.2f} of raw, "
          f"{after_m / engine_m:.2f} of its own path without Kafka ({engine_m:,.0f} events/s). "
          f"Targets: >= 100,000 events/s, >= 0.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
