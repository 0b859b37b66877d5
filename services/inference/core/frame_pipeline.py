"""Frame events in, inference results out: decode, preprocess, run a batch through OpenVINO's
AsyncInferQueue, postprocess. No transport here: the Kafka adapter feeds it and produces what it returns."""
from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from libs.common.claimcheck import ClaimCheckError, ClaimCheckStore, frame_bytes
from libs.common.envelope import derived_envelope
from libs.common.stage_cpu import stage_cpu
from protos import events_pb2
from services.inference.core.images import ImageRefused, declared_size, decode_image
from services.inference.detectors import Detection, Detector
from services.inference.detectors.rescored import postprocess_for_camera

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


def decode_frame(frame: events_pb2.Frame, max_bytes: int, claim_check: ClaimCheckStore | None = None,
                 at_least: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]] | InvalidFrame:
    """The frame's pixels and the image's own (width, height) as its header declares it; with `at_least`, the
    pixels may be at a reduced scale (see images.jpeg_reduction), smaller than that size."""
    if not frame.envelope.event_id:
        return InvalidFrame("invalid_event", "envelope.event_id is empty")
    if frame.WhichOneof("payload") == "ref" and frame.ref.size > max_bytes:
        return InvalidFrame("oversized_payload", f"{frame.ref.size} bytes > limit {max_bytes}")
    try:
        data = frame_bytes(frame, claim_check)
    except ClaimCheckError as exc:
        return InvalidFrame("claim_check_failed", str(exc))
    if not data:
        return InvalidFrame("empty_payload", "the frame has no image data")
    try:
        image = decode_image(data, max_bytes, what="frame", at_least=at_least)
        return image, declared_size(data) or (image.shape[1], image.shape[0])
    except ImageRefused as refused:
        return InvalidFrame(refused.reason, refused.detail)


class FramePipeline:
    """Runs a batch of frames, each through the model its camera is routed to (`model_for(camera_id)`, asked
    once per frame and batch, so a model swapped in between batches takes over at one frame per camera).
    A plain detector (any backend) routes every camera to it."""

    def __init__(self, model_for: Detector | Callable[[str], Detector],
                 max_frame_bytes: int = 32 << 20, claim_check: ClaimCheckStore | None = None,
                 shadow_for: Callable[[str], Detector | None] | None = None, decode_threads: int = 2) -> None:
        # The shadow model a camera's frames also go through (None: none); see run_with_shadows.
        self.shadow_for = shadow_for or (lambda _camera_id: None)
        # Frames sent by reference (claim-check) are fetched from the object store through this.
        self.claim_check = claim_check
        # A detector is not callable; a routing function is.
        self.model_for: Callable[[str], Detector] = (
            model_for if callable(model_for) else lambda _camera_id: model_for)
        self.max_frame_bytes = max_frame_bytes
        # One AsyncInferQueue per model in use, created on first use and dropped once a batch no longer
        # needs it (a swapped-out model is then freed).
        self._queues: dict[int, tuple[Detector, object, events_pb2.ModelRef]] = {}
        self._lock = threading.Lock()  # one batch at a time owns the queues
        self._decoders = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")

    def _reduced_decode_floor(self, camera_id: str) -> tuple[int, int] | None:
        """The size a camera's frames may be decoded down to: the largest input of the models they go to, when
        every one of them stretches the frame onto its input (their boxes then map back by the frame's size
        alone); None (full size) when one does not (a letterboxing model, whose input follows the frame)."""
        models = [m for m in (self.model_for(camera_id), self.shadow_for(camera_id)) if m is not None]
        if not all(getattr(m, "stretches_frame", False) for m in models):
            return None
        return max(m.input_size[0] for m in models), max(m.input_size[1] for m in models)

    def _decode(self, frame: events_pb2.Frame) -> tuple[tuple[np.ndarray, tuple[int, int]] | InvalidFrame, float]:
        started = time.perf_counter()
        with stage_cpu("inference.decode"):
            image = decode_frame(frame, self.max_frame_bytes, self.claim_check,
                                 self._reduced_decode_floor(frame.camera_id))
        return image, (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self._decoders.shutdown(wait=True)

    def _queue_of(self, detector: Detector):
        entry = self._queues.get(id(detector))
        if entry is None or entry[0] is not detector:
            queue = detector.make_infer_queue()
            queue.set_callback(_on_done)
            ref = events_pb2.ModelRef(name=detector.name, version=detector.version,
                                      precision=detector.inference_precision)
            entry = self._queues[id(detector)] = (detector, queue, ref)
        return entry

    def run(self, frames: Sequence[events_pb2.Frame]) -> list[events_pb2.InferenceResult | InvalidFrame]:
        return [outcome for outcome, _ in self.run_with_shadows(frames)]

    def run_with_shadows(self, frames: Sequence[events_pb2.Frame]
                         ) -> list[tuple[events_pb2.InferenceResult | InvalidFrame, events_pb2.InferenceResult | None]]:
        """Per frame, in order: its result (or why it has none) and the shadow model's result (shadow=true), if
        a shadow model other than the frame's own model is set. The frame is decoded once for both."""
        batch_start_ns = time.time_ns()
        outcomes: list[events_pb2.InferenceResult | InvalidFrame | None] = [None] * len(frames)
        shadows: list[events_pb2.InferenceResult | None] = [None] * len(frames)
        jobs: list[tuple[int, dict]] = []
        with self._lock:
            used: dict[int, object] = {}
            # Decoded on a few threads (OpenCV lets go of the GIL), in order: a frame goes to OpenVINO as soon
            # as it is decoded, while the next ones still are, so the device does not wait for the whole batch.
            for i, (frame, (decoded, decode_ms)) in enumerate(zip(frames, self._decoders.map(self._decode, frames))):
                if isinstance(decoded, InvalidFrame):
                    outcomes[i] = decoded
                    continue
                image, source_size = decoded
                primary = self.model_for(frame.camera_id)
                shadow = self.shadow_for(frame.camera_id)
                for detector, is_shadow in ((primary, False), (shadow, True)):
                    if detector is None or (is_shadow and detector is primary):
                        continue
                    detector, queue, ref = self._queue_of(detector)
                    used[id(detector)] = queue
                    t1 = time.perf_counter()
                    with stage_cpu("inference.preprocess"):
                        tensor, info = detector.preprocess(image)
                    if (image.shape[1], image.shape[0]) != source_size:
                        # Decoded at a reduced scale (only for models that stretch the frame, whose info is
                        # the frame's size alone): boxes and the result's size are the image's own.
                        info = dataclasses.replace(info, width=source_size[0], height=source_size[1])
                    t2 = time.perf_counter()
                    job = {"detector": detector, "model": ref, "info": info, "decode_ms": decode_ms,
                           "preprocess_ms": (t2 - t1) * 1000, "started": t2, "shadow": is_shadow}
                    queue.start_async({0: tensor}, job)
                    jobs.append((i, job))
            for queue in used.values():
                queue.wait_all()
            for key in set(self._queues) - set(used):
                del self._queues[key]
        for i, job in jobs:
            t0 = time.perf_counter()
            with stage_cpu("inference.postprocess"):
                # A re-scored model's thresholds are per camera (see detectors/rescored.py).
                detections = postprocess_for_camera(job["detector"], job["outputs"], job["info"],
                                                    frames[i].camera_id)
                embedding = job["detector"].embedding(job["outputs"])
            postprocess_ms = (time.perf_counter() - t0) * 1000
            frame, model = frames[i], job["model"]
            queue_ms = max(0.0, (batch_start_ns - frame.envelope.ingest_time.ToNanoseconds()) / 1e6)
            # The derivation names the model version (and the shadow role), so a shadow result's id never
            # equals the primary result's, while a replayed frame still yields the same ids.
            derivation = f"{model.name}:{model.version}" + ("/shadow" if job["shadow"] else "")
            result = events_pb2.InferenceResult(
                envelope=derived_envelope(frame.envelope, PRODUCER, derivation),
                camera_id=frame.camera_id,
                frame_event_id=frame.envelope.event_id,
                frame_sequence=frame.sequence,
                model=model,
                detections=detection_messages(detections),
                stage_latency_ms={"queue": queue_ms, "decode": job["decode_ms"], "preprocess": job["preprocess_ms"],
                                  "infer": job["infer_ms"], "postprocess": postprocess_ms},
                width=job["info"].width,
                height=job["info"].height,
                shadow=job["shadow"],
                embedding=() if embedding is None else embedding.tolist(),
            )
            if job["shadow"]:
                shadows[i] = result
            else:
                outcomes[i] = result
        return list(zip(outcomes, shadows))  # type: ignore[arg-type]


def _on_done(request, job: dict) -> None:
    job["outputs"] = job["detector"].infer_request_outputs(request)
    job["infer_ms"] = (time.perf_counter() - job["started"]) * 1000
