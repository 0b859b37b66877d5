"""One camera's work, on threads of its own: read, sample, gate, shape, encode, hand over to a publisher.
A failure here is this camera's alone: it is reported in the camera's status and the stream reopened."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from libs.common.logs import get_logger
from libs.common.stage_cpu import stage_cpu
from protos import events_pb2
from services.ingest.camera import CameraStream, ReadOptions
from services.ingest.camera_spec import CameraSpec
from services.ingest.frame_shaping import MotionGate, apply_roi, fit_within
from services.ingest.frames import FrameEventBuilder
from services.ingest.sampler import FrameSampler

log = get_logger(__name__)

STATES = {
    "connecting": events_pb2.CAMERA_STATE_CONNECTING,
    "online": events_pb2.CAMERA_STATE_ONLINE,
    "stalled": events_pb2.CAMERA_STATE_STALLED,
    "offline": events_pb2.CAMERA_STATE_OFFLINE,
}


class FrameSink(Protocol):
    """Where finished frame events go (the Kafka publisher, with claim-check)."""

    def publish(self, frame: events_pb2.Frame) -> bool:
        """False when the frame could not be accepted (it is then dropped and counted)."""


@dataclass
class CameraCounters:
    frames_read: int = 0
    frames_produced: int = 0
    frames_dropped: int = 0
    frames_skipped: int = 0
    last_frame_ns: int = 0
    state: str = "connecting"
    reason: str = ""
    # For fps: the counts at the last status.
    fps_read: float = 0.0
    fps_produced: float = 0.0
    _last_read: int = 0
    _last_produced: int = 0
    _last_at: float = field(default_factory=time.monotonic)


class CameraWorker:
    def __init__(self, spec: CameraSpec, sink: FrameSink, on_change: Callable[["CameraWorker"], None],
                 open_timeout_s: float, max_backoff_s: float, queue_size: int,
                 on_tick: Callable[[], None] = lambda: None, decode_threads: int = 1) -> None:
        self.spec = spec
        self.sink = sink
        self.on_change = on_change
        self.counters = CameraCounters()
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self.sampler = FrameSampler(spec.sample_fps)
        self.motion = MotionGate(spec.motion_min_changed_fraction)
        self.builder = FrameEventBuilder(spec.camera_id, spec.jpeg_quality)
        self.stream = CameraStream(
            spec.source, self.stop_event,
            ReadOptions(open_timeout_s=open_timeout_s, stall_timeout_s=spec.stall_timeout_s,
                        paced=not spec.unpaced, loop=spec.loop, live=spec.kind != "file",
                        decode_threads=decode_threads),
            max_backoff_s=max_backoff_s, queue_size=queue_size, keep=self.sampler.keep,
            on_state=self._set_state, on_tick=on_tick, on_read=self._count_read,
        )
        self._thread = threading.Thread(target=self._run, name=f"camera:{spec.camera_id}", daemon=True)

    def start(self) -> "CameraWorker":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stop_event.set()
        self._thread.join(timeout_s)

    def _count_read(self) -> None:
        self.counters.frames_read += 1

    def _set_state(self, state: str, reason: str) -> None:
        with self._lock:
            changed = (state, reason) != (self.counters.state, self.counters.reason)
            self.counters.state, self.counters.reason = state, reason
        if changed:
            log.info("camera state", camera_id=self.spec.camera_id, state=state, reason=reason)
            self.on_change(self)

    def _run(self) -> None:
        try:
            for captured in self.stream:
                with stage_cpu("ingest.motion"):
                    moved = self.motion.keep(captured.image)
                if not moved:
                    continue
                with stage_cpu("ingest.scale"):
                    image = fit_within(apply_roi(captured.image, self.spec.roi), self.spec.max_width,
                                       self.spec.max_height)
                frame = self.builder.build(image, captured.capture_time_ns, captured.time_from_stream)
                with stage_cpu("ingest.produce"):
                    published = self.sink.publish(frame)
                if published:
                    self.counters.frames_produced += 1
                    self.counters.last_frame_ns = captured.capture_time_ns
                else:
                    self.counters.frames_dropped += 1
        except Exception as exc:  # this camera's bug must not take the others down
            log.exception("camera worker failed", camera_id=self.spec.camera_id)
            self._set_state("offline", f"internal error: {type(exc).__name__}: {exc}")

    def status(self, measure_rates: bool = True) -> events_pb2.CameraStatus:
        """A snapshot. With measure_rates, fps are averaged since the previous measuring snapshot (the
        periodic status); without, the last measured fps are repeated (a status sent on a state change)."""
        c = self.counters
        if measure_rates:
            now = time.monotonic()
            elapsed = max(now - c._last_at, 1e-6)
            c.fps_read = (c.frames_read - c._last_read) / elapsed
            c.fps_produced = (c.frames_produced - c._last_produced) / elapsed
            c._last_read, c._last_produced, c._last_at = c.frames_read, c.frames_produced, now
        status = events_pb2.CameraStatus(
            camera_id=self.spec.camera_id, state=STATES[c.state], reason=c.reason,
            fps_read=round(c.fps_read, 2), fps_produced=round(c.fps_produced, 2),
            frames_dropped=c.frames_dropped + self.stream.frames.dropped, frames_skipped=self.motion.skipped,
            reconnects=self.stream.reconnects,
        )
        if c.last_frame_ns:
            status.last_frame_time.FromNanoseconds(c.last_frame_ns)
        return status
