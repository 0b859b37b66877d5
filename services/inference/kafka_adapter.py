"""Kafka side of inference: vigil.frames in, vigil.inference out, undecodable frames to the dead-letter topic.
A batch consumed from Kafka (frames of many cameras) is one batch through the pipeline; results are
produced in the order of the frames, so each camera's results keep its order."""
from __future__ import annotations

from typing import Sequence

from confluent_kafka import Message
from google.protobuf.message import DecodeError

from libs.common.kafka import Outbound, Outcome, Rejected
from libs.common.logs import trace_context
from libs.common.topics import INFERENCE
from protos import events_pb2
from services.inference.pipeline import FramePipeline, InvalidFrame


def frame_batch_handler(pipeline: FramePipeline):
    def handle(batch: Sequence[Message]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        frames, positions = [], []
        for i, msg in enumerate(batch):
            try:
                frames.append(events_pb2.Frame.FromString(msg.value() or b""))
                positions.append(i)
            except DecodeError as exc:
                outcomes[i] = Rejected("malformed_event", f"not a Frame event: {exc}")
        for i, result in zip(positions, pipeline.run(frames)):
            if isinstance(result, InvalidFrame):
                outcomes[i] = Rejected(result.reason, result.detail)
                continue
            with trace_context(result.envelope.trace_id):
                outcomes[i] = [Outbound(INFERENCE, result.SerializeToString(), result.camera_id.encode())]
        return outcomes  # type: ignore[return-value]

    return handle
