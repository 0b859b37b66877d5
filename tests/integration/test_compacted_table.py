"""CompactedTable against a real Kafka broker (started for this module alone, on free ports): put, delete,
snapshot and follow over compacted topics of one and several partitions, empty ones, malformed records skipped,
and a group of followers sharing the partitions."""
from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import REGISTRY

from cli.stack import kafka
from cli.stack.component import StackPaths
from libs.common.cache_dir import default_cache_dir
from libs.common.compacted import Change, CompactedTable
from protos import events_pb2
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import produce
from tests.integration.stack_process import free_ports, running

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory) -> str:
    state = tmp_path_factory.mktemp("kafka")
    paths = StackPaths(state=state / "state", cache=default_cache_dir())
    kafka.install(paths.cache)
    port, controller_port = free_ports(2)
    with running(kafka.spec(paths, port=port, controller_port=controller_port), Path(state) / "logs"):
        yield f"127.0.0.1:{port}"


@pytest.fixture
def new_table(bootstrap):
    """Makes a table over a new compacted topic of `partitions` partitions."""
    def make(partitions: int = 1, validate=None) -> CompactedTable:
        topic = f"vigil.test.table-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, partitions, 1, config={"cleanup.policy": "compact"})])[topic].result(30)
        return CompactedTable({"bootstrap.servers": bootstrap}, topic, "vigil-test",
                              message=events_pb2.SensorDefinition, validate=validate)
    return make


def sensor(sensor_id: str, unit: str = "°C") -> events_pb2.SensorDefinition:
    return events_pb2.SensorDefinition(sensor_id=sensor_id, quantity="temperature", unit=unit)


class Recorder:
    """A follower of the table on a thread, keeping every list of changes it was handed."""

    def __init__(self, table: CompactedTable, group: str | None = None) -> None:
        self.batches: list[list[Change]] = []
        self.follower = table.follower(self.batches.append, group=group, poll_s=0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.follower.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> "Recorder":
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive()

    def changes(self) -> list[Change]:
        return [change for batch in list(self.batches) for change in batch]


def skipped(topic: str, reason: str) -> float:
    return REGISTRY.get_sample_value("vigil_compacted_records_skipped_total", {"topic": topic, "reason": reason}) or 0


def test_an_empty_table_snapshots_empty_and_its_follower_is_loaded_at_once(new_table):
    table = new_table(partitions=3)
    assert table.snapshot(timeout_s=20) == {}
    with Recorder(table) as recorder:
        assert recorder.follower.loaded.wait(20)
        assert recorder.follower.ready() == (True, f"0 keys of {table.topic} on 3 partitions")
        assert recorder.changes() == []


def test_a_snapshot_holds_the_last_value_of_each_key_over_several_partitions_and_no_deleted_key(new_table):
    table = new_table(partitions=4)
    for i in range(40):
        table.put(f"s-{i}", sensor(f"s-{i}"))
    for i in range(0, 40, 2):
        table.put(f"s-{i}", sensor(f"s-{i}", unit="K"))
    for i in range(0, 40, 5):
        table.delete(f"s-{i}")
    snapshot = table.snapshot(timeout_s=20)
    expected = {f"s-{i}": ("K" if i % 2 == 0 else "°C") for i in range(40) if i % 5}
    assert {key: value.unit for key, value in snapshot.items()} == expected
    assert all(isinstance(value, events_pb2.SensorDefinition) for value in snapshot.values())


def test_a_follower_hands_over_the_table_once_then_each_change_made_after(new_table):
    table = new_table(partitions=3)
    for i in range(6):
        table.put(f"s-{i}", sensor(f"s-{i}"))
        table.put(f"s-{i}", sensor(f"s-{i}", unit="K"))
    table.delete("s-0")
    with Recorder(table) as recorder:
        assert recorder.follower.loaded.wait(20)
        # One change per key still in the table, its latest value; the deleted key is not mentioned.
        initial = recorder.changes()
        assert sorted((c.key, c.value.unit) for c in initial) == [(f"s-{i}", "K") for i in range(1, 6)]
        table.put("s-9", sensor("s-9"))
        table.put("s-1", sensor("s-1", unit="mK"))
        table.delete("s-2")
        table.delete("never-there")
        later = wait_for(lambda: recorder.changes()[len(initial):] if len(recorder.changes()) >= len(initial) + 3
                         else None, 20, what="three changes after the snapshot")
        assert sorted((c.key, c.value.unit if c.value else None) for c in later) == [
            ("s-1", "mK"), ("s-2", None), ("s-9", "°C")]
        assert set(recorder.follower.view) == {"s-1", "s-3", "s-4", "s-5", "s-9"}


def test_malformed_records_are_skipped_counted_and_reported_and_the_key_keeps_its_value(new_table, bootstrap):
    table = new_table(partitions=2)
    table.put("good", sensor("good"))
    table.put("bad", sensor("bad"))
    produce(bootstrap, table.topic, [(b"bad", b"\xff\xff not a protobuf"), (b"", sensor("keyless").SerializeToString()),
                                     (b"new-and-bad", b"\xff\xff")])
    before = skipped(table.topic, "undecodable"), skipped(table.topic, "no_key")
    snapshot = table.snapshot(timeout_s=20)
    assert {key: value.sensor_id for key, value in snapshot.items()} == {"good": "good", "bad": "bad"}
    assert skipped(table.topic, "undecodable") == before[0] + 2 and skipped(table.topic, "no_key") == before[1] + 1
    with Recorder(table) as recorder:
        assert recorder.follower.loaded.wait(20)
        by_key = {c.key: c for c in recorder.changes()}
        assert set(by_key) == {"good", "bad", "new-and-bad"}
        assert by_key["bad"].value.sensor_id == "bad" and "not a SensorDefinition" in by_key["bad"].problem
        assert by_key["new-and-bad"].value is None and by_key["new-and-bad"].problem
        assert not by_key["good"].problem
        # The follower goes on after a bad record that arrives while it follows.
        produce(bootstrap, table.topic, [(b"good", b"\xff")])
        table.put("later", sensor("later"))
        wait_for(lambda: "later" in recorder.follower.view, 20, what="the change after a bad record")
        assert recorder.follower.view["good"].sensor_id == "good"


def test_a_tables_check_refuses_a_put_and_readers_skip_a_value_that_fails_it(new_table, bootstrap):
    def validate(key, definition):
        return None if definition.sensor_id == key else f"key {key!r} holds {definition.sensor_id!r}"

    table = new_table(validate=validate)
    table.put("t-1", sensor("t-1"))
    with pytest.raises(ValueError, match="holds 't-2'"):
        table.put("t-1", sensor("t-2"))
    with pytest.raises(TypeError):
        table.put("t-1", events_pb2.CameraConfig(camera_id="t-1"))
    produce(bootstrap, table.topic, [(b"t-1", sensor("t-2").SerializeToString())])
    assert table.snapshot(timeout_s=20)["t-1"].sensor_id == "t-1"
    assert skipped(table.topic, "invalid") == 1


def test_a_group_of_followers_shares_the_partitions_and_a_leavers_keys_go_to_the_one_left(new_table):
    table = new_table(partitions=4)
    keys = {f"cam-{i}" for i in range(16)}
    for key in keys:
        table.put(key, sensor(key))
    group = f"vigil-test-{uuid.uuid4().hex[:8]}"
    with Recorder(table, group) as first:
        wait_for(lambda: set(first.follower.view) == keys, 30, what="the first member holding every key")
        with Recorder(table, group) as second:
            wait_for(lambda: second.follower.view and first.follower.view
                     and set(first.follower.view) | set(second.follower.view) == keys
                     and not set(first.follower.view) & set(second.follower.view), 60,
                     what="the keys split between the two members")
            moved = {c.key for c in first.changes() if c.moved}
            assert moved == set(second.follower.view)
        wait_for(lambda: set(first.follower.view) == keys, 60, what="the member left holding every key again")
