"""Kafka side of inference: vigil.frames in, vigil.inference out (a shadow model's results to
vigil.inference.shadow only), undecodable frames to the dead-letter topic.
A batch consumed from Kafka (frames of many cameras) is one batch through the pipeline; results are
produced in the order of the frames, so each camera's results keep its order."""
from __future__ import annotations

from typing import Sequence

from confluent_kafka import Message

from libs.common.envelope import new_envelope
from libs.common.kafka import DeliveringProducer, DeliveryFailed, Outbound, Outcome, Rejected, decode_each
from libs.common.logs import get_logger, trace_context
from libs.common.stage_cpu import stage_cpu
from libs.common.topics import INFERENCE, INFERENCE_SHADOW, MONITORING
from protos import events_pb2
from services.inference.core.frame_pipeline import FramePipeline, InvalidFrame


def frame_batch_handler(pipeline: FramePipeline):
    def handle(batch: Sequence[Message]) -> list[Outcome]:
        with stage_cpu("inference.consume"):
            frames, positions, outcomes = decode_each(batch, events_pb2.Frame)
        for i, (result, shadow) in zip(positions, pipeline.run_with_shadows(frames)):
            if isinstance(result, InvalidFrame):
                outcomes[i] = Rejected(result.reason, result.detail)
                continue
            with trace_context(result.envelope.trace_id), stage_cpu("inference.produce"):
                key = result.camera_id.encode()
                outcomes[i] = [Outbound(INFERENCE, result.SerializeToString(), key)] + (
                    [Outbound(INFERENCE_SHADOW, shadow.SerializeToString(), key)] if shadow is not None else [])
        return outcomes  # type: ignore[return-value]

    return handle


def model_status_announcer(producer: DeliveringProducer):
    """ModelServer's on_status hook: each model state change (loading, ready, failed, unloaded) becomes a
    ModelStatus event on vigil.monitoring, keyed by the model's name. A Kafka outage is logged, never raised:
    it must not fail the load it reports on."""
    log = get_logger(__name__)

    def announce(name: str, version: str, state: str, reason: str) -> None:
        event = events_pb2.MonitoringEvent(
            envelope=new_envelope(f"model/{name}", "inference"),
            model_status=events_pb2.ModelStatus(model=events_pb2.ModelRef(name=name, version=version),
                                                state=state, reason=reason[:2000]),
        )
        log.info("model status", model=name, version=version, state=state, reason=reason[:300])
        try:
            producer.produce(Outbound(MONITORING, event.SerializeToString(), f"model/{name}".encode()))
            producer.flush(10)
        except DeliveryFailed as exc:
            log.warning("model status not announced", model=name, state=state, error=str(exc))

    return announce
