"""The sink when the store fails a batch: bisect to the messages the store refuses, bounded retries then
readiness false and a report, recovery (services/metrics/store_failures.py as pure logic, then the batch handler
against the real embedded engine with a constraint that refuses a row and a table taken away)."""
from __future__ import annotations

import pytest

from libs.common.envelope import new_envelope
from libs.common.kafka import Rejected, Retryable
from protos import events_pb2
from services.metrics.kafka_adapter import MetricsBatchHandler
from services.metrics.rows import monitoring_rows
from services.metrics.sink import EventSink
from services.metrics.store import MetricsStore
from services.metrics.store_failures import StoreHealth, is_rejection, isolate_rejections
from tests.unit.test_metrics_protobuf_ingest import KafkaMessage, inference_result

REFUSED = Exception("Code: 469. DB::Exception: Constraint `c` is violated at row 1. (VIOLATED_CONSTRAINT)")
GONE = Exception("Code: 60. DB::Exception: Unknown table expression identifier 'inference_events'. (UNKNOWN_TABLE)")


class ConnectionRefused(Exception):
    pass


def test_rejections_are_told_from_store_failures():
    assert is_rejection(REFUSED)
    assert is_rejection(Exception("Code: 376. DB::Exception: Cannot parse uuid. (CANNOT_PARSE_UUID)"))
    assert not is_rejection(GONE)
    assert not is_rejection(Exception("Code: 241. DB::Exception: Memory limit exceeded. (MEMORY_LIMIT_EXCEEDED)"))
    assert not is_rejection(Exception("Code: 252. DB::Exception: Too many parts. (TOO_MANY_PARTS)"))
    assert not is_rejection(ConnectionRefused("HTTPConnectionPool: Max retries exceeded ([Errno 111])"))


def bisecting_store(poison: set[int], calls: list[tuple[int, int]], gone_after: int | None = None):
    def store(lo, hi):
        calls.append((lo, hi))
        if gone_after is not None and len(calls) > gone_after:
            raise GONE
        if poison & set(range(lo, hi)):
            raise REFUSED
        return [f"stored {i}" for i in range(lo, hi)]
    return store


def test_bisect_isolates_each_refused_message_and_stores_the_rest():
    calls: list[tuple[int, int]] = []
    results = isolate_rejections(16, bisecting_store({3, 11}, calls), REFUSED)
    assert [i for i, r in enumerate(results) if isinstance(r, BaseException)] == [3, 11]
    assert all(results[i] == f"stored {i}" for i in range(16) if i not in (3, 11))
    # Two poisons in 16: log2(16) levels on each side, not 16 single writes.
    assert len(calls) <= 2 * 2 * 4 and (3, 4) in calls and (11, 12) in calls


def test_a_single_refused_message_is_refused_without_another_write():
    calls: list[tuple[int, int]] = []
    assert isolate_rejections(1, bisecting_store({0}, calls), REFUSED) == [REFUSED] and calls == []


def test_a_store_that_fails_otherwise_while_bisecting_fails_the_batch():
    with pytest.raises(Exception, match="UNKNOWN_TABLE"):
        isolate_rejections(8, bisecting_store({5}, [], gone_after=1), REFUSED)


def test_after_n_failures_in_a_row_the_store_is_unavailable_until_a_success():
    changes = []
    health = StoreHealth(failures_unready=3, on_change=lambda *change: changes.append(change))
    health.failed(GONE)
    health.failed(GONE)
    assert health.check()[0] and changes == [], "two failures: still ready (a blip is retried quietly)"
    health.failed(GONE)
    ready, detail = health.check()
    assert not ready and "3 failed attempts in a row" in detail and "UNKNOWN_TABLE" in detail
    assert changes == [(False, str(GONE), 3)]
    health.failed(GONE)
    assert len(changes) == 1, "reported once per outage"
    health.succeeded()
    assert health.check()[0] and changes[1][:1] == (True,) and changes[1][2] == 0
    health.succeeded()
    assert len(changes) == 2


def test_a_service_status_is_a_monitoring_row():
    event = events_pb2.MonitoringEvent(
        envelope=new_envelope("service/metrics", "metrics"),
        service_status=events_pb2.ServiceStatus(service="metrics", component="store", state="unavailable",
                                                reason="gone", failures=5))
    (row,) = monitoring_rows(event)["monitoring_events"]
    assert row[4:6] == ("service_status", "metrics/store")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = MetricsStore.open(tmp_path_factory.mktemp("chdb"))
    store.migrate()
    with store.writing() as client:
        client.command("ALTER TABLE inference_events ADD CONSTRAINT no_poison CHECK camera_id != 'poison'")
    yield store
    store.close()


def count(store, camera_id: str) -> int:
    return store.query_readonly(f"SELECT count() FROM inference_events WHERE camera_id = '{camera_id}'")["rows"][0][0]


@pytest.mark.parametrize("engine", [True, False])
def test_a_batch_the_store_refuses_is_split_and_only_the_refused_messages_are_dead_lettered(store, engine):
    handler = MetricsBatchHandler(EventSink(store, engine_parses_inference=engine), "vigil.dlq")
    status = events_pb2.MonitoringEvent(
        envelope=new_envelope("camera/c", "ingest"),
        camera_status=events_pb2.CameraStatus(camera_id=f"split-{engine}", state=events_pb2.CAMERA_STATE_ONLINE))
    batch = [KafkaMessage("vigil.inference", inference_result(f"split-{engine}").SerializeToString()) for _ in range(9)]
    batch[2] = KafkaMessage("vigil.inference", inference_result("poison").SerializeToString())
    batch[7] = KafkaMessage("vigil.inference", inference_result("poison").SerializeToString())
    batch.insert(5, KafkaMessage("vigil.monitoring", status.SerializeToString()))
    outcomes = handler(handler.prepare(batch) if engine else batch)
    refused = [i for i, o in enumerate(outcomes) if isinstance(o, Rejected)]
    assert refused == [2, 8]
    assert outcomes[2].reason == "store_rejected" and "no_poison" in outcomes[2].detail
    assert count(store, f"split-{engine}") == 7 and count(store, "poison") == 0
    assert store.query_readonly(f"SELECT count() FROM camera_health WHERE camera_id = 'split-{engine}'")["rows"] \
        == [[1]]
    assert handler.health.check()[0]


def test_a_dead_letter_the_store_refuses_is_never_dead_lettered_again(store):
    handler = MetricsBatchHandler(EventSink(store), "vigil.dlq")
    with store.writing() as client:
        client.command("ALTER TABLE dead_letters ADD CONSTRAINT no_poison CHECK reason != 'poison'")
    try:
        outcomes = handler([KafkaMessage("vigil.dlq", b"x", offset=1, headers=[("vigil.dlq.reason", b"poison")]),
                            KafkaMessage("vigil.dlq", b"y", offset=2, headers=[("vigil.dlq.reason", b"fine")])])
    finally:
        with store.writing() as client:
            client.command("ALTER TABLE dead_letters DROP CONSTRAINT no_poison")
    assert outcomes == [[], []]
    assert store.query_readonly("SELECT groupArray(reason) FROM dead_letters")["rows"] == [[["fine"]]]


def test_a_store_that_takes_nothing_is_retried_then_unready_until_it_stores_again(store):
    changes = []
    handler = MetricsBatchHandler(EventSink(store), "vigil.dlq",
                                  health=StoreHealth(3, on_change=lambda *change: changes.append(change)))
    batch = [KafkaMessage("vigil.inference", inference_result("outage").SerializeToString()) for _ in range(4)]
    with store.writing() as client:
        client.command("DETACH TABLE inference_events")
    try:
        for attempt in range(3):
            with pytest.raises(Retryable, match="UNKNOWN_TABLE|Unknown table"):
                handler(batch)
            assert handler.health.check()[0] == (attempt < 2)
    finally:
        with store.writing() as client:
            client.command("ATTACH TABLE inference_events")
    assert [c[0] for c in changes] == [False]
    assert handler(batch) == [[], [], [], []]
    assert handler.health.check()[0] and [c[0] for c in changes] == [False, True]
    assert count(store, "outage") == 4
