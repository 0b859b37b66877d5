"""Inference results as rows of inference_events (pure: no store, no Kafka)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from protos import events_pb2


class InvalidEvent(ValueError):
    pass


def _utc(ts) -> datetime:
    return ts.ToDatetime(tzinfo=timezone.utc)


def _uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidEvent(f"{field} is not a UUID: {value!r}") from None


def inference_row(result: events_pb2.InferenceResult, produced_ms: int) -> tuple[Any, ...]:
    """One row in the order of store.INFERENCE_COLUMNS. produced_ms is the Kafka timestamp of the event."""
    env = result.envelope
    detections = result.detections
    return (
        _uuid(env.event_id, "envelope.event_id"),
        env.trace_id,
        result.camera_id,
        _uuid(result.frame_event_id, "frame_event_id"),
        result.frame_sequence,
        result.model.name,
        result.model.version,
        result.model.precision,
        _utc(env.event_time),
        _utc(env.ingest_time),
        datetime.fromtimestamp(produced_ms / 1000, tz=timezone.utc),
        result.width,
        result.height,
        result.shadow,
        len(detections),
        [d.label for d in detections],
        [d.score for d in detections],
        [(d.box.x1, d.box.y1, d.box.x2, d.box.y2) for d in detections],
        dict(result.stage_latency_ms),
    )
