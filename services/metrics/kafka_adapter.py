"""Kafka side of the sink: decodes inference events, hands valid ones to the sink in one insert per batch,
and dead-letters the ones that cannot be stored."""
from __future__ import annotations

from typing import Sequence

from confluent_kafka import Message
from google.protobuf.message import DecodeError

from libs.common.kafka import Outcome, Rejected, Retryable
from libs.common.logs import get_logger
from protos import events_pb2
from services.metrics.rows import InvalidEvent, inference_row
from services.metrics.sink import InferenceEventSink

log = get_logger(__name__)


def inference_batch_handler(sink: InferenceEventSink):
    def handle(batch: Sequence[Message]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        rows = []
        for msg in batch:
            try:
                result = events_pb2.InferenceResult.FromString(msg.value() or b"")
                if not result.envelope.event_id:
                    raise InvalidEvent("envelope.event_id is empty")
                rows.append(inference_row(result, msg.timestamp()[1]))
                outcomes.append([])
            except DecodeError as exc:
                outcomes.append(Rejected("malformed_event", f"not an InferenceResult: {exc}"))
            except InvalidEvent as exc:
                outcomes.append(Rejected("invalid_event", str(exc)))
        try:
            report = sink.write(rows)
        except Exception as exc:
            # The store is unavailable or refused the batch as a whole: retry it, commit nothing.
            raise Retryable(f"insert into {sink.table} failed: {exc}") from exc
        if report.duplicates:
            log.info("duplicates skipped", count=report.duplicates, stored=report.stored)
        return outcomes

    return handle
