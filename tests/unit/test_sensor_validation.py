"""The sensor reading validator: every way a reading can be wrong gives its own reason; a good one passes."""
from __future__ import annotations

import math

import pytest

from libs.common.envelope import new_envelope
from protos import events_pb2
from services.ingest.sensors import validation as v
from services.ingest.sensors.validation import ClockLimits, definition_problem, validate_reading

NOW_NS = 1_750_000_000 * 1_000_000_000
LIMITS = ClockLimits(max_future_s=60, max_age_s=3600)
DEFINITIONS = {
    "t-1": events_pb2.SensorDefinition(sensor_id="t-1", quantity="temperature", unit="°C",
                                       min_value=-40, max_value=125),
    "open-above": events_pb2.SensorDefinition(sensor_id="open-above", quantity="pressure", unit="Pa", min_value=0),
}


def reading(sensor_id="t-1", quantity="temperature", value=21.5, unit="°C", age_s=1.0, **changes):
    r = events_pb2.SensorReading(
        envelope=new_envelope(f"sensor/{sensor_id}", "device", event_time_ns=NOW_NS - int(age_s * 1e9)),
        sensor_id=sensor_id, quantity=quantity, value=value, unit=unit)
    for path, new in changes.items():
        target, _, name = path.rpartition("__")
        message = getattr(r, target) if target else r
        if new is None:
            message.ClearField(name)
        else:
            setattr(message, name, new)
    return r


def judged(r):
    return validate_reading(r, DEFINITIONS, NOW_NS, LIMITS)


def test_a_good_reading_is_accepted():
    assert judged(reading()) is None


def test_values_on_the_range_bounds_are_accepted():
    assert judged(reading(value=-40)) is None
    assert judged(reading(value=125)) is None


def test_an_unknown_sensor_is_rejected_naming_it():
    problem = judged(reading(sensor_id="t-404"))
    assert problem.reason == v.UNKNOWN_SENSOR and "t-404" in problem.detail


@pytest.mark.parametrize("field, expected", [
    ("sensor_id", "sensor_id"), ("quantity", "quantity"), ("unit", "unit"),
    ("envelope__event_id", "envelope.event_id"), ("envelope__event_time", "envelope.event_time"),
    ("envelope", "envelope"),
])
def test_a_missing_or_empty_field_is_a_schema_problem_naming_the_field(field, expected):
    problem = judged(reading(**{field: None}))
    assert problem.reason == v.MISSING_FIELD
    assert expected in problem.detail.split(": ", 1)[1].split(", ")


def test_blank_text_counts_as_missing():
    problem = judged(reading(unit="  "))
    assert problem.reason == v.MISSING_FIELD and "unit" in problem.detail


def test_all_missing_fields_are_named_at_once():
    problem = judged(events_pb2.SensorReading(value=1.0))
    assert problem.detail == "missing or empty: envelope, sensor_id, quantity, unit"


def test_a_unit_spelled_differently_is_a_unit_mismatch():
    for unit in ("degC", "°F", "°c", "K"):
        problem = judged(reading(unit=unit))
        assert problem.reason == v.UNIT_MISMATCH
        assert "'°C'" in problem.detail and repr(unit) in problem.detail


def test_another_quantity_is_a_quantity_mismatch():
    assert judged(reading(quantity="humidity")).reason == v.QUANTITY_MISMATCH


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinities_are_not_finite(value):
    problem = judged(reading(value=value))
    assert problem.reason == v.NOT_FINITE


def test_a_value_outside_the_sensors_range_is_out_of_range_with_the_range():
    problem = judged(reading(value=125.01))
    assert problem.reason == v.OUT_OF_RANGE
    assert "[-40, 125]" in problem.detail
    assert judged(reading(value=-40.5)).reason == v.OUT_OF_RANGE


def test_an_absent_bound_is_unbounded():
    assert judged(reading("open-above", "pressure", 1e12, "Pa")) is None
    problem = judged(reading("open-above", "pressure", -1, "Pa"))
    assert problem.reason == v.OUT_OF_RANGE and "[0, +inf]" in problem.detail


def test_an_event_time_too_far_ahead_is_clock_skew_into_the_future():
    assert judged(reading(age_s=-59)) is None
    problem = judged(reading(age_s=-3 * 3600))  # a device writing local time UTC+3 as UTC
    assert problem.reason == v.EVENT_TIME_IN_FUTURE and "10800.0s ahead" in problem.detail


def test_an_event_time_too_old_is_rejected_and_the_limit_is_configurable():
    assert judged(reading(age_s=3599)) is None
    assert judged(reading(age_s=3601)).reason == v.EVENT_TIME_TOO_OLD
    assert validate_reading(reading(age_s=3601), DEFINITIONS, NOW_NS, ClockLimits(60, 7200)) is None


def test_problems_are_reported_in_the_order_a_person_fixes_them():
    # Unknown sensor before the value: nothing else can be judged without its definition.
    assert judged(reading(sensor_id="nope", value=math.nan)).reason == v.UNKNOWN_SENSOR
    # The unit before the range: a range check in the wrong unit means nothing.
    assert judged(reading(unit="K", value=300)).reason == v.UNIT_MISMATCH


@pytest.mark.parametrize("definition, problem", [
    (events_pb2.SensorDefinition(sensor_id="a", quantity="q", unit="u", min_value=2, max_value=1), "above"),
    (events_pb2.SensorDefinition(sensor_id="a", quantity="q", unit="u", max_value=math.nan), "finite"),
    (events_pb2.SensorDefinition(sensor_id="a", quantity="q"), "unit"),
])
def test_unusable_definitions_are_named(definition, problem):
    assert problem in definition_problem(definition)


def test_a_definition_with_a_range_of_one_value_is_fine():
    assert definition_problem(events_pb2.SensorDefinition(sensor_id="a", quantity="q", unit="u",
                                                          min_value=1, max_value=1)) is None
