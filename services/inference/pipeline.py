"""Frame events in, inference results out: decode, preprocess, run a batch through OpenVINO's
AsyncInferQueue, postprocess. No transport here: the Kafka adapter feeds it and produces what it returns."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from libs.common.envelope import derived_envelope
from protos import events_pb2
from services.inference.detector import Detection, YoloDetector

PRODUCER = "inference"


@dataclass(frozen=True)
class InvalidFrame:
    """A frame event that can never be processed, and why (the reason becomes the dead letter's reason)."""

    reason: str
    detail: str


def detection_messages(detections: Sequence[Detection]) -> list[events_pb2.Detection]:
    return [
        events_pb2.Detection(label=d.label, class_id=d.class_id, score=d.score,
                             box=events_pb2.Box(x1=d.box[0], y1=d.box[1], x2=d.box[2], y2=d.box[3]))
        for d in detections
    ]


def decode_frame(frame: events_pb2.Frame, max_bytes: int) -> np.ndarray | InvalidFrame:
    if not frame.envelope.event_id:
        return InvalidFrame("invalid_event", "envelope.event_id is empty")
    if frame.WhichOneof("payload") == "ref":
        return InvalidFrame("unsupported_payload", "claim-check references are not resolved by this version")
    if not frame.data:
        return InvalidFrame("empty_payload", "the frame has no image data")
    if len(frame.data) > max_bytes:
        return InvalidFrame("oversized_payload", f"{len(frame.data)} bytes > limit {max_bytes}")
    image = cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return InvalidFrame("undecodable_image", f"payload of {len(frame.data)} bytes is not a JPEG/PNG image")
    return image


class FramePipeline:
    def __init__(self, detector: YoloDetector, max_frame_bytes: int = 32 << 20) -> None:
        self.detector = detector
        self.model = events_pb2.ModelRef(name=detector.name, version=detector.version,
                                         precision=detector.inference_precision)
        self.max_frame_bytes = max_frame_bytes
        self._queue = detector.make_infer_queue()
        self._queue.set_callback(self._on_done)
        self._lock = threading.Lock()  # one batch at a time owns the queue

    def _on_done(self, request, job: dict) -> None:
        job["outputs"] = self.detector.infer_request_outputs(request)
        job["infer_ms"] = (time.perf_counter() - job["started"]) * 1000

    def run(self, frames: Sequence[events_pb2.Frame]) -> list[events_pb2.InferenceResult | InvalidFrame]:
        batch_start_ns = time.time_ns()
        outcomes: list[events_pb2.InferenceResult | InvalidFrame | None] = [None] * len(frames)
        jobs: list[tuple[int, dict]] = []
        with self._lock:
            for i, frame in enumerate(frames):
                t0 = time.perf_counter()
                image = decode_frame(frame, self.max_frame_bytes)
                if isinstance(image, InvalidFrame):
                    outcomes[i] = image
                    continue
                t1 = time.perf_counter()
                tensor, info = self.detector.preprocess(image)
                t2 = time.perf_counter()
                job = {"info": info, "decode_ms": (t1 - t0) * 1000, "preprocess_ms": (t2 - t1) * 1000,
                       "started": t2}
                self._queue.start_async({0: tensor}, job)
                jobs.append((i, job))
            self._queue.wait_all()
        for i, job in jobs:
            t0 = time.perf_counter()
            detections = self.detector.postprocess(job["outputs"], job["info"])
            postprocess_ms = (time.perf_counter() - t0) * 1000
            frame = frames[i]
            queue_ms = max(0.0, (batch_start_ns - frame.envelope.ingest_time.ToNanoseconds()) / 1e6)
            outcomes[i] = events_pb2.InferenceResult(
                envelope=derived_envelope(frame.envelope, PRODUCER, f"{self.model.name}:{self.model.version}"),
                camera_id=frame.camera_id,
                frame_event_id=frame.envelope.event_id,
                frame_sequence=frame.sequence,
                model=self.model,
                detections=detection_messages(detections),
                stage_latency_ms={"queue": queue_ms, "decode": job["decode_ms"], "preprocess": job["preprocess_ms"],
                                  "infer": job["infer_ms"], "postprocess": postprocess_ms},
                width=job["info"].width,
                height=job["info"].height,
            )
        return outcomes  # type: ignore[return-value]
