"""The in-memory sensor registry follows the compacted table's changes: the last write per key wins, a
tombstone removes, and a record the table skipped changes nothing; the table's check refuses a definition that
does not fit its key or is not usable."""
from __future__ import annotations

from libs.common.compacted import Change
from protos import events_pb2
from services.ingest.sensors.sensor_registry import SensorRegistry, registry_problem


def definition(sensor_id="t-1", unit="°C", **fields) -> events_pb2.SensorDefinition:
    return events_pb2.SensorDefinition(sensor_id=sensor_id, quantity="temperature", unit=unit, **fields)


def change(key: str, value: events_pb2.SensorDefinition | None, problem: str = "") -> Change:
    return Change(key, value, partition=0, problem=problem)


def test_changes_add_update_and_remove_sensors():
    registry = SensorRegistry()
    registry.apply([change("t-1", definition())])
    registry.apply([change("t-1", definition(unit="K"))])
    assert registry.snapshot()["t-1"].unit == "K"
    registry.apply([change("t-1", None)])
    assert "t-1" not in registry.snapshot()


def test_a_snapshot_taken_before_a_change_does_not_change_under_its_reader():
    registry = SensorRegistry()
    registry.apply([change("t-1", definition())])
    before = registry.snapshot()
    registry.apply([change("t-2", definition("t-2")), change("t-1", None)])
    assert set(before) == {"t-1"} and set(registry.snapshot()) == {"t-2"}


def test_a_skipped_record_leaves_the_sensor_as_it_was():
    registry = SensorRegistry()
    registry.apply([change("t-1", definition())])
    registry.apply([change("t-1", None, problem="not a SensorDefinition"), change("t-9", None, problem="bad")])
    assert registry.snapshot()["t-1"].unit == "°C" and set(registry.snapshot()) == {"t-1"}


def test_the_table_refuses_a_definition_of_another_key_or_an_unusable_one():
    assert registry_problem("t-1", definition()) is None
    assert "holds a definition of 't-2'" in registry_problem("t-1", definition("t-2"))
    assert registry_problem("t-1", definition(min_value=10, max_value=0))
    assert registry_problem("t-1", definition(unit=""))


def test_a_tombstone_of_an_unknown_sensor_is_harmless():
    registry = SensorRegistry()
    registry.apply([change("ghost", None)])
    assert dict(registry.snapshot()) == {}
