"""Building and reading the common event envelope (protos/events.proto: Envelope)."""
from __future__ import annotations

import time
import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from protos import events_pb2

SCHEMA_VERSION = 1
# Namespace for event ids derived from other events, so a replayed input yields the same derived id.
_DERIVED_ID_NAMESPACE = uuid.UUID("5b0e4f7e-3f8a-4c55-9d8e-7f1f2b6a9c01")


def timestamp_from_ns(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def new_envelope(
    source: str,
    producer: str,
    event_time_ns: int | None = None,
    trace_id: str | None = None,
    event_id: str | None = None,
) -> events_pb2.Envelope:
    now = time.time_ns()
    return events_pb2.Envelope(
        event_id=event_id or str(uuid.uuid4()),
        source=source,
        event_time=timestamp_from_ns(event_time_ns if event_time_ns is not None else now),
        ingest_time=timestamp_from_ns(now),
        schema_version=SCHEMA_VERSION,
        trace_id=trace_id or uuid.uuid4().hex,
        producer=producer,
    )


def derived_envelope(parent: events_pb2.Envelope, producer: str, derivation: str) -> events_pb2.Envelope:
    """The envelope of an event computed from `parent`: same trace, same event time, and an id that is a
    pure function of the parent's id and the derivation (e.g. the model version), so duplicates dedupe."""
    return events_pb2.Envelope(
        event_id=str(uuid.uuid5(_DERIVED_ID_NAMESPACE, f"{parent.event_id}/{derivation}")),
        source=parent.source,
        event_time=parent.event_time,
        ingest_time=parent.ingest_time,
        schema_version=SCHEMA_VERSION,
        trace_id=parent.trace_id,
        producer=producer,
    )
