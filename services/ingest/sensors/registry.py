"""The in-memory view of the sensor registry: the latest definition per sensor, as the compacted topic
vigil.sensors.registry says (a tombstone removes a sensor). Copy-on-write, so a validating batch takes one
consistent snapshot without a lock while the follower applies changes."""
from __future__ import annotations

import threading
from types import MappingProxyType
from typing import Mapping

from google.protobuf.message import DecodeError
from prometheus_client import Gauge

from libs.common.logs import get_logger
from protos import events_pb2
from services.ingest.sensors.validation import definition_problem

log = get_logger(__name__)

SENSORS_DEFINED = Gauge("vigil_ingest_sensors_defined", "Sensors in the registry view of this replica")


class SensorRegistry:
    def __init__(self) -> None:
        self._definitions: Mapping[str, events_pb2.SensorDefinition] = MappingProxyType({})
        self._lock = threading.Lock()  # serialises writers only

    def snapshot(self) -> Mapping[str, events_pb2.SensorDefinition]:
        return self._definitions

    def apply(self, key: bytes | None, value: bytes | None) -> str:
        """Applies one registry record; returns what it did ("added", "updated", "removed", "ignored: ...").
        The key is the authority on which sensor a record is about: that is what compaction keeps by."""
        if not key:
            return self._ignored("record without a key")
        sensor_id = key.decode("utf-8", "replace")
        if value is None:
            return self._replace(sensor_id, None)
        try:
            definition = events_pb2.SensorDefinition.FromString(value)
        except DecodeError as exc:
            return self._ignored(f"sensor {sensor_id!r}: not a SensorDefinition: {exc}")
        if definition.sensor_id != sensor_id:
            return self._ignored(f"key {sensor_id!r} holds a definition of {definition.sensor_id!r}")
        problem = definition_problem(definition)
        if problem:
            return self._ignored(f"sensor {sensor_id!r}: {problem}")
        return self._replace(sensor_id, definition)

    def _replace(self, sensor_id: str, definition: events_pb2.SensorDefinition | None) -> str:
        with self._lock:
            current = dict(self._definitions)
            existed = current.pop(sensor_id, None) is not None
            if definition is not None:
                current[sensor_id] = definition
            self._definitions = MappingProxyType(current)
            SENSORS_DEFINED.set(len(current))
        if definition is None:
            return "removed" if existed else "ignored: removal of an unknown sensor"
        return "updated" if existed else "added"

    @staticmethod
    def _ignored(why: str) -> str:
        # A bad record must not take the registry down; the sensor it meant to change keeps its last state.
        log.warning("sensor registry record ignored", why=why)
        return f"ignored: {why}"
