"""Sensor readings sent as JSON (the published schema sensor_reading.schema.json), checked against that schema
and converted to the protobuf SensorReading every consumer reads. Transport-free."""
from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from libs.common.envelope import new_envelope
from protos import events_pb2

SCHEMA_PATH = Path(__file__).with_name("sensor_reading.schema.json")
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
_VALIDATOR = Draft202012Validator(SCHEMA)

MALFORMED_JSON = "malformed_json"
SCHEMA_VIOLATION = "schema_violation"

# Ids of readings a device sent without one, derived from where the reading was first stored, so that a
# redelivered message yields the same event id and downstream dedupe collapses it.
_EVENT_ID_NAMESPACE = uuid.UUID("0f5c7a52-8f0e-4f3c-9a7e-2b1d6c4e8a10")
_FRACTION = re.compile(r"\.(\d{1,9})")


class InvalidJsonReading(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def event_id_for_position(topic: str, partition: int, offset: int) -> str:
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"{topic}/{partition}/{offset}"))


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidJsonReading(MALFORMED_JSON, f"not JSON: {exc}") from exc


def schema_errors(item: Any) -> list[str]:
    """Every way the item breaks the schema, each as "<path>: <message>", most specific first."""
    errors = sorted(_VALIDATOR.iter_errors(item), key=lambda e: (list(e.absolute_path), e.message))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(reading)'}: {e.message}" for e in errors]


def rfc3339_to_ns(text: str) -> int:
    """Nanoseconds since the epoch; the schema's pattern has already fixed the shape (explicit offset)."""
    match = _FRACTION.search(text)
    fraction_ns = int(match.group(1).ljust(9, "0")) if match else 0
    whole = _FRACTION.sub("", text, count=1).replace("Z", "+00:00")
    return int(datetime.fromisoformat(whole).timestamp()) * 1_000_000_000 + fraction_ns


def reading_from_json(item: Any, producer: str, event_id_if_missing: str | None = None) -> events_pb2.SensorReading:
    """The protobuf form of a JSON reading, or InvalidJsonReading. Field checks that depend on the registry
    or the clock (unit, range, skew, NaN) are the validator's, so both input forms are judged alike."""
    errors = schema_errors(item)
    if errors:
        raise InvalidJsonReading(SCHEMA_VIOLATION, "; ".join(errors[:5]))
    try:
        event_time_ns = rfc3339_to_ns(item["event_time"])
    except ValueError as exc:  # right shape, impossible date: 2025-02-30
        raise InvalidJsonReading(SCHEMA_VIOLATION, f"event_time: {exc}") from exc
    try:
        value = float(item["value"])
    except OverflowError as exc:  # an integer literal too large for a double
        raise InvalidJsonReading(SCHEMA_VIOLATION, "value: too large for a 64-bit float") from exc
    sensor_id = item["sensor_id"]
    return events_pb2.SensorReading(
        envelope=new_envelope(f"sensor/{sensor_id}", producer, event_time_ns=event_time_ns,
                              trace_id=item.get("trace_id"), event_id=item.get("event_id") or event_id_if_missing),
        sensor_id=sensor_id, quantity=item["quantity"], value=value, unit=item["unit"],
        labels=item.get("labels", {}),
    )
