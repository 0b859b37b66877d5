"""The metrics sink when its store fails, on real Kafka and the real embedded ClickHouse engine: a table that
refuses some rows (a CHECK constraint), then a table taken away (DETACH) and given back (ATTACH).

The sink runs in this process, wired as services/metrics/__main__.py wires it (handler, prefetching runner, store
health with its announcer on vigil.monitoring, the readiness check behind a real /readyz): the embedded engine
allows one process per data directory, and the test must reach into the store to break it."""
from __future__ import annotations

import gc
import json
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from cli.stack.local import LocalStack, StackPorts
from cli.stack.supervisor import Supervisor
from libs.common.envelope import new_envelope
from libs.common.kafka import DeliveringProducer, producer_config
from libs.common.ops import Health, OpsServer
from libs.common.settings import KafkaSettings
from libs.common.topics import DLQ, INFERENCE, MONITORING, ensure_topics
from protos import events_pb2
from services.metrics.kafka_adapter import SINK_TOPICS, MetricsBatchHandler, store_status_announcer
from services.metrics.prefetching_runner import PrefetchingKafkaRunner
from services.metrics.sink import EventSink
from services.metrics.store import MetricsStore
from services.metrics.store_failures import StoreHealth
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import TopicRecorder, produce

pytestmark = pytest.mark.integration

FAILURES_UNREADY = 3


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def kafka_bootstrap(tmp_path_factory):
    stack = LocalStack(state=tmp_path_factory.mktemp("vigil-metrics-failures"), ports=StackPorts.free())
    supervisor = Supervisor(stack.paths, [spec for spec in stack.specs() if spec.name == "kafka"])
    try:
        supervisor.up(progress=_progress)
        ensure_topics({"bootstrap.servers": stack.config.kafka_bootstrap})
        yield stack.config.kafka_bootstrap
    finally:
        supervisor.down(progress=_progress)


class RunningSink:
    def __init__(self, bootstrap: str, store: MetricsStore) -> None:
        kafka = KafkaSettings(bootstrap_servers=bootstrap)
        self.store = store
        self.health = StoreHealth(FAILURES_UNREADY, on_change=store_status_announcer(
            DeliveringProducer(producer_config(kafka, client_id="metrics-status"))))
        handler = MetricsBatchHandler(EventSink(store), kafka.dlq_topic, health=self.health)
        self.runner = PrefetchingKafkaRunner(
            kafka, service="metrics", group_id=f"test-metrics-{uuid.uuid4().hex[:8]}",
            topics=[*SINK_TOPICS, kafka.dlq_topic], handler=handler, prepare=handler.prepare,
            max_batch=1000, max_wait_s=0.2)
        self.ops = OpsServer("127.0.0.1", 0, Health(readiness={"store_writable": self.health.check})).start()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.runner.run, args=(self.stop,), name="sink")
        self.thread.start()

    def readyz(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ops.port}/readyz", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def count(self, sql: str) -> int:
        return self.store.query_readonly(sql)["rows"][0][0]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        self.ops.stop()
        # Their producers' threads would go on calling a stopped Kafka until collected.
        self.runner = self.health = None
        gc.collect()


@pytest.fixture(scope="module")
def sink(kafka_bootstrap, tmp_path_factory):
    store = MetricsStore.open(tmp_path_factory.mktemp("chdb"))
    store.migrate()
    with store.writing() as client:
        client.command("ALTER TABLE inference_events ADD CONSTRAINT no_poison CHECK NOT startsWith(camera_id, 'poison')")
    running = RunningSink(kafka_bootstrap, store)
    try:
        wait_for(running.runner.assigned.is_set, 60, what="partitions assigned")
        yield running
    finally:
        running.close()
        store.close()


def inference_event(camera_id: str) -> bytes:
    frame = new_envelope(f"camera/{camera_id}", "ingest")
    return events_pb2.InferenceResult(
        envelope=new_envelope(f"camera/{camera_id}", "inference"), camera_id=camera_id, frame_event_id=frame.event_id,
        model=events_pb2.ModelRef(name="yolov3-tiny", version="1"), width=768, height=576,
        detections=[events_pb2.Detection(label="person", score=0.9, box=events_pb2.Box(x1=1, y1=2, x2=3, y2=4))],
    ).SerializeToString()


def test_messages_the_store_refuses_go_to_the_dlq_with_the_reason_and_the_rest_is_stored(sink, kafka_bootstrap):
    run = uuid.uuid4().hex[:8]
    events = [(f"good-{run}".encode(), inference_event(f"good-{run}")) for _ in range(30)]
    events[7] = (f"poison-{run}".encode(), inference_event(f"poison-{run}"))
    events[22] = (f"poison-{run}".encode(), inference_event(f"poison-{run}"))
    with TopicRecorder(kafka_bootstrap, DLQ) as dlq:
        produce(kafka_bootstrap, INFERENCE, events)
        wait_for(lambda: sink.count(f"SELECT count() FROM inference_events WHERE camera_id = 'good-{run}'") >= 28,
                 60, what="the good events stored")
        letters = wait_for(lambda: len(dlq.records) >= 2 and dlq.records, 60, what="two dead letters")
    assert sorted(key for _, key, _ in letters) == [f"poison-{run}".encode()] * 2
    # The sink reads the dead-letter topic back: each letter's reason and origin, as stored.
    wait_for(lambda: sink.count(f"SELECT count() FROM dead_letters WHERE message_key = 'poison-{run}' "
                                "AND reason = 'store_rejected' AND origin_topic = 'vigil.inference' "
                                "AND error LIKE '%no_poison%'") == 2, 60, what="the dead letters stored")
    assert sink.count(f"SELECT count() FROM inference_events WHERE camera_id = 'good-{run}'") == 28
    assert sink.count(f"SELECT count() FROM inference_events WHERE camera_id = 'poison-{run}'") == 0
    assert sink.readyz()[0] == 200


def service_statuses(recorder: TopicRecorder) -> list[events_pb2.ServiceStatus]:
    events = [events_pb2.MonitoringEvent.FromString(value) for _, _, value in recorder.since(0)]
    return [e.service_status for e in events if e.WhichOneof("detail") == "service_status"]


def test_a_store_that_takes_nothing_makes_the_sink_unready_and_reported_until_it_is_back(sink, kafka_bootstrap):
    run = uuid.uuid4().hex[:8]
    with TopicRecorder(kafka_bootstrap, MONITORING) as monitoring:
        with sink.store.writing() as client:
            client.command("DETACH TABLE inference_events")
        try:
            produce(kafka_bootstrap, INFERENCE, [(b"outage", inference_event(f"outage-{run}")) for _ in range(5)])
            status, body = wait_for(lambda: (r := sink.readyz())[0] == 503 and r, 90, what="/readyz 503")
            detail = body["checks"]["store_writable"]["detail"]
            assert f"{FAILURES_UNREADY} failed attempts in a row" in detail and "inference_events" in detail
            down = wait_for(lambda: service_statuses(monitoring), 30, what="the store reported unavailable")
            assert (down[0].service, down[0].component, down[0].state) == ("metrics", "store", "unavailable")
            assert down[0].failures == FAILURES_UNREADY and "inference_events" in down[0].reason
            assert sink.runner.heartbeat.check()[0], "still live: retrying, not wedged"
        finally:
            with sink.store.writing() as client:
                client.command("ATTACH TABLE inference_events")
        wait_for(lambda: sink.readyz()[0] == 200, 90, what="/readyz 200 again")
        wait_for(lambda: len(service_statuses(monitoring)) >= 2, 30, what="the store reported available")
        assert [s.state for s in service_statuses(monitoring)] == ["unavailable", "available"]
    wait_for(lambda: sink.count(f"SELECT count() FROM inference_events WHERE camera_id = 'outage-{run}'") == 5, 60,
             what="the events of the outage stored")
    # The sink stores its own reports too (from vigil.monitoring, once the store is back).
    wait_for(lambda: sink.count("SELECT count() FROM monitoring_events WHERE kind = 'service_status' "
                                "AND subject = 'metrics/store'") >= 2, 60, what="the reports stored")
