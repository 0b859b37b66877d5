"""Whether a sensor reading may enter vigil.sensors: checked against its sensor's definition and the clock.
Transport-free: a reading is accepted as it is, or rejected with one precise reason and a detail for people.

Units are compared exactly (case and spelling): "mV" and "MV" differ by 10^9, and a table of "equivalent"
spellings would let the same quantity reach consumers spelled two ways while we forward readings unchanged.
The registry's unit is the one spelling a device must use."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from protos import events_pb2

UNKNOWN_SENSOR = "unknown_sensor"
MISSING_FIELD = "missing_field"
QUANTITY_MISMATCH = "quantity_mismatch"
UNIT_MISMATCH = "unit_mismatch"
NOT_FINITE = "not_finite"
OUT_OF_RANGE = "out_of_range"
EVENT_TIME_IN_FUTURE = "event_time_in_future"
EVENT_TIME_TOO_OLD = "event_time_too_old"

_NS = 1_000_000_000


@dataclass(frozen=True)
class InvalidReading:
    reason: str
    detail: str


@dataclass(frozen=True)
class ClockLimits:
    """How far a reading's event time may be from our clock: ahead (a device clock running fast, a time zone
    written as UTC) and behind (a device replaying a buffer, a clock reset to 1970)."""

    max_future_s: float = 60.0
    max_age_s: float = 3600.0


def _blank(text: str) -> bool:
    return not text.strip()


def missing_fields(reading: events_pb2.SensorReading) -> list[str]:
    missing = [name for name in ("sensor_id", "quantity", "unit") if _blank(getattr(reading, name))]
    if not reading.HasField("envelope"):
        return ["envelope"] + missing
    if _blank(reading.envelope.event_id):
        missing.append("envelope.event_id")
    if not reading.envelope.HasField("event_time"):
        missing.append("envelope.event_time")
    return missing


def definition_problem(definition: events_pb2.SensorDefinition) -> str | None:
    """Why a definition cannot be used, or None. The CLI refuses such a definition; the registry ignores it."""
    blank = [name for name in ("sensor_id", "quantity", "unit") if _blank(getattr(definition, name))]
    if blank:
        return "missing or empty: " + ", ".join(blank)
    for bound in ("min_value", "max_value"):
        if definition.HasField(bound) and not math.isfinite(getattr(definition, bound)):
            return f"{bound} is not a finite number"
    if definition.HasField("min_value") and definition.HasField("max_value") \
            and definition.min_value > definition.max_value:
        return f"min_value {definition.min_value:g} is above max_value {definition.max_value:g}"
    return None


def _range_text(definition: events_pb2.SensorDefinition) -> str:
    low = f"{definition.min_value:g}" if definition.HasField("min_value") else "-inf"
    high = f"{definition.max_value:g}" if definition.HasField("max_value") else "+inf"
    return f"[{low}, {high}]"


def validate_reading(
    reading: events_pb2.SensorReading,
    definitions: Mapping[str, events_pb2.SensorDefinition],
    now_ns: int,
    limits: ClockLimits,
) -> InvalidReading | None:
    """None when the reading is valid; otherwise the first problem, in the order a person would fix them."""
    missing = missing_fields(reading)
    if missing:
        return InvalidReading(MISSING_FIELD, "missing or empty: " + ", ".join(missing))
    sensor_id = reading.sensor_id
    definition = definitions.get(sensor_id)
    if definition is None:
        return InvalidReading(UNKNOWN_SENSOR, f"sensor {sensor_id!r} is not in the sensor registry")
    if reading.quantity != definition.quantity:
        return InvalidReading(QUANTITY_MISMATCH, f"sensor {sensor_id!r} measures {definition.quantity!r}, "
                                                 f"the reading says {reading.quantity!r}")
    if reading.unit != definition.unit:
        return InvalidReading(UNIT_MISMATCH, f"sensor {sensor_id!r} reads in {definition.unit!r}, "
                                             f"the reading says {reading.unit!r}")
    value = reading.value
    if not math.isfinite(value):
        return InvalidReading(NOT_FINITE, f"value is {value!r}")
    if (definition.HasField("min_value") and value < definition.min_value) or \
            (definition.HasField("max_value") and value > definition.max_value):
        return InvalidReading(OUT_OF_RANGE, f"value {value:g} {reading.unit} is outside {_range_text(definition)} "
                                            f"of sensor {sensor_id!r}")
    event_ns = reading.envelope.event_time.ToNanoseconds()
    ahead_s = (event_ns - now_ns) / _NS
    if ahead_s > limits.max_future_s:
        return InvalidReading(EVENT_TIME_IN_FUTURE, f"event time is {ahead_s:.1f}s ahead of ingest's clock "
                                                    f"(at most {limits.max_future_s:g}s allowed)")
    if -ahead_s > limits.max_age_s:
        return InvalidReading(EVENT_TIME_TOO_OLD, f"event time is {-ahead_s:.1f}s old "
                                                  f"(at most {limits.max_age_s:g}s allowed)")
    return None
