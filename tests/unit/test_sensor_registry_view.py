"""The in-memory sensor registry follows the compacted topic's records: the last write per key wins, a
tombstone removes, and a bad record changes nothing."""
from __future__ import annotations

from protos import events_pb2
from services.ingest.sensors.registry import SensorRegistry


def definition(sensor_id="t-1", unit="°C", **fields) -> bytes:
    return events_pb2.SensorDefinition(sensor_id=sensor_id, quantity="temperature", unit=unit,
                                       **fields).SerializeToString()


def test_records_add_update_and_remove_sensors():
    registry = SensorRegistry()
    assert registry.apply(b"t-1", definition()) == "added"
    assert registry.apply(b"t-1", definition(unit="K")) == "updated"
    assert registry.snapshot()["t-1"].unit == "K"
    assert registry.apply(b"t-1", None) == "removed"
    assert "t-1" not in registry.snapshot()


def test_a_snapshot_taken_before_a_change_does_not_change_under_its_reader():
    registry = SensorRegistry()
    registry.apply(b"t-1", definition())
    before = registry.snapshot()
    registry.apply(b"t-2", definition("t-2"))
    registry.apply(b"t-1", None)
    assert set(before) == {"t-1"} and set(registry.snapshot()) == {"t-2"}


def test_bad_records_are_ignored_and_the_sensor_keeps_its_last_definition():
    registry = SensorRegistry()
    registry.apply(b"t-1", definition())
    assert registry.apply(b"t-1", b"\xff\xff not protobuf").startswith("ignored")
    assert registry.apply(b"t-1", definition(min_value=10, max_value=0)).startswith("ignored")
    assert registry.apply(b"t-1", definition("t-2")).startswith("ignored")  # key and content disagree
    assert registry.apply(None, definition()).startswith("ignored")
    assert registry.snapshot()["t-1"].unit == "°C" and not registry.snapshot()["t-1"].HasField("min_value")


def test_a_tombstone_of_an_unknown_sensor_is_harmless():
    registry = SensorRegistry()
    assert registry.apply(b"ghost", None).startswith("ignored")
    assert dict(registry.snapshot()) == {}
