"""JSON readings: the published schema decides what is well formed; a well-formed one becomes the same
protobuf SensorReading a device could have sent."""
from __future__ import annotations

import json
import math

import pytest
from jsonschema import Draft202012Validator

from services.ingest.sensors.json_readings import (
    MALFORMED_JSON, SCHEMA, SCHEMA_VIOLATION, InvalidJsonReading, event_id_for_position, parse_json,
    reading_from_json, rfc3339_to_ns,
)

GOOD = {"sensor_id": "t-1", "quantity": "temperature", "value": 21.5, "unit": "°C",
        "event_time": "2025-06-15T12:00:00.250Z"}


def test_the_published_schema_is_itself_a_valid_json_schema():
    Draft202012Validator.check_schema(SCHEMA)


def test_a_good_json_reading_becomes_a_sensor_reading_keeping_the_devices_event_id():
    r = reading_from_json({**GOOD, "event_id": "dev-42", "labels": {"site": "north"}}, "ingest")
    assert (r.sensor_id, r.quantity, r.value, r.unit) == ("t-1", "temperature", 21.5, "°C")
    assert r.envelope.event_id == "dev-42"
    assert r.envelope.source == "sensor/t-1" and r.envelope.producer == "ingest"
    assert r.envelope.event_time.ToNanoseconds() == rfc3339_to_ns("2025-06-15T12:00:00.250Z")
    assert r.envelope.trace_id and r.envelope.ingest_time.seconds > 0
    assert dict(r.labels) == {"site": "north"}


def test_without_an_event_id_the_given_fallback_is_used():
    position_id = event_id_for_position("vigil.sensors.raw", 2, 17)
    assert position_id == event_id_for_position("vigil.sensors.raw", 2, 17) != event_id_for_position(
        "vigil.sensors.raw", 2, 18)
    assert reading_from_json(GOOD, "ingest", position_id).envelope.event_id == position_id


@pytest.mark.parametrize("text, ns", [
    ("1970-01-01T00:00:01Z", 1_000_000_000),
    ("1970-01-01T01:00:00.000000001+01:00", 1),
    ("2025-06-15T12:00:00.25-02:00", rfc3339_to_ns("2025-06-15T14:00:00.250Z")),
])
def test_rfc3339_times_keep_their_offset_and_nanoseconds(text, ns):
    assert rfc3339_to_ns(text) == ns


@pytest.mark.parametrize("change, where", [
    ({"sensor_id": ""}, "sensor_id"),
    ({"unit": None}, "'unit' is a required property"),
    ({"value": "21.5"}, "value: '21.5' is not of type 'number'"),
    ({"value": True}, "value: True is not of type 'number'"),
    ({"event_time": "2025-06-15 12:00:00"}, "event_time"),
    ({"event_time": "2025-06-15T12:00:00"}, "event_time"),  # no offset: a time zone bug waiting to happen
    ({"event_time": "2025-02-30T12:00:00Z"}, "event_time"),
    ({"colour": "red"}, "'colour' was unexpected"),
    ({"labels": {"site": 3}}, "labels/site"),
    ({"value": 10 ** 400}, "value: too large"),
])
def test_a_reading_breaking_the_schema_is_a_schema_violation_saying_where(change, where):
    item = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(InvalidJsonReading) as caught:
        reading_from_json(item, "ingest")
    assert caught.value.reason == SCHEMA_VIOLATION and where in caught.value.detail


def test_not_an_object_is_a_schema_violation():
    with pytest.raises(InvalidJsonReading, match="is not of type 'object'"):
        reading_from_json([GOOD], "ingest")


def test_json_nan_passes_the_schema_and_is_left_for_the_validator():
    # NaN is not JSON, but most JSON encoders write it; the validator rejects it as not_finite, the same
    # reason a protobuf reading gets.
    item = parse_json(json.dumps({**GOOD, "value": math.nan}).encode())
    assert math.isnan(reading_from_json(item, "ingest").value)


def test_bytes_that_are_not_json_are_malformed():
    for raw in (b"{not json", b"\xff\xfe"):
        with pytest.raises(InvalidJsonReading) as caught:
            parse_json(raw)
        assert caught.value.reason == MALFORMED_JSON
