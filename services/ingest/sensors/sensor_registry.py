"""The sensor registry: the compacted table vigil.sensors.registry (the latest definition per sensor, keyed by
sensor id; a tombstone removes a sensor), and this replica's in-memory view of it. The view is copy-on-write, so a
validating batch takes one consistent snapshot without a lock while the follower applies changes."""
from __future__ import annotations

import threading
from types import MappingProxyType
from typing import Mapping

from prometheus_client import Gauge

from libs.common.compacted import Change, CompactedTable, TableFollower
from libs.common.logs import get_logger
from libs.common.topics import SENSORS_REGISTRY
from protos import events_pb2
from services.ingest.sensors.validation import definition_problem

log = get_logger(__name__)

SENSORS_DEFINED = Gauge("vigil_ingest_sensors_defined", "Sensors in the registry view of this replica")


def registry_problem(sensor_id: str, definition: events_pb2.SensorDefinition) -> str | None:
    """Why a definition cannot be the registry's entry for `sensor_id` (None when it can). The key is the
    authority on which sensor a record is about: that is what compaction keeps by. A record refused here is
    skipped, and the sensor keeps its last definition."""
    if definition.sensor_id != sensor_id:
        return f"key {sensor_id!r} holds a definition of {definition.sensor_id!r}"
    return definition_problem(definition)


def sensor_registry_table(client_config: dict[str, str], client_id: str,
                          topic: str = SENSORS_REGISTRY) -> CompactedTable[events_pb2.SensorDefinition]:
    return CompactedTable(client_config, topic, client_id, validate=registry_problem)


class SensorRegistry:
    def __init__(self) -> None:
        self._definitions: Mapping[str, events_pb2.SensorDefinition] = MappingProxyType({})
        self._lock = threading.Lock()  # serialises writers only

    def snapshot(self) -> Mapping[str, events_pb2.SensorDefinition]:
        return self._definitions

    def follower(self, table: CompactedTable[events_pb2.SensorDefinition]) -> TableFollower:
        """Keeps this view current: the table whole, then each change (logged, the table as a whole is not)."""
        follower = table.follower(lambda changes: self.apply(changes, log_changes=follower.loaded.is_set()))
        return follower

    def apply(self, changes: list[Change], log_changes: bool = False) -> None:
        with self._lock:
            current = dict(self._definitions)
            for change in changes:
                if change.problem:  # skipped by the table, logged and counted there: the sensor is unchanged
                    continue
                existed = current.pop(change.key, None) is not None
                if change.value is not None:
                    current[change.key] = change.value
                if log_changes:
                    log.info("sensor registry changed", sensor_id=change.key,
                             change="removed" if change.value is None else "updated" if existed else "added")
            self._definitions = MappingProxyType(current)
            SENSORS_DEFINED.set(len(current))
