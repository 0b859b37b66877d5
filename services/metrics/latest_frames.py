"""The newest frames of each camera, in memory, for the dashboard's live view (pure: no Kafka).

A few of the newest JPEGs per camera are kept (a few MiB in all per camera), so that the boxes of the latest
stored result can be drawn on the very frame they were found in, which arrives a moment before its result.
Frames are never decoded here: holding them costs a copy of the bytes and nothing more.

Bounded: at most `max_cameras` cameras are held, the one that sent nothing for longest is forgotten first (least
recently offered), and a camera whose newest frame is older than `max_age_s` is forgotten (a removed or dead
camera's frames do not stay in memory for the life of the process)."""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class HeldFrame:
    camera_id: str
    frame_event_id: str
    jpeg: bytes
    sequence: int
    width: int
    height: int
    event_time_ms: int
    # When this process received it (the clock's reading: monotonic seconds by default).
    received: float


class LatestFrames:
    def __init__(self, per_camera: int = 50, max_cameras: int = 64, max_age_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_camera = per_camera
        self.max_cameras = max_cameras
        self.max_age_s = max_age_s
        self._clock = clock
        # Least recently offered first.
        self._frames: collections.OrderedDict[str, collections.deque[HeldFrame]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def offer(self, camera_id: str, frame_event_id: str, jpeg: bytes, sequence: int, width: int, height: int,
              event_time_ms: int) -> bool:
        """Keeps the frame if it is newer than the newest held for its camera; says whether it did."""
        now = self._clock()
        with self._lock:
            self._forget_stale(now)
            held = self._frames.get(camera_id)
            if held and (held[-1].event_time_ms, held[-1].sequence) >= (event_time_ms, sequence):
                return False
            if held is None:
                held = self._frames[camera_id] = collections.deque(maxlen=self.per_camera)
                while len(self._frames) > self.max_cameras:
                    self._frames.popitem(last=False)
            self._frames.move_to_end(camera_id)
            held.append(HeldFrame(camera_id, frame_event_id, jpeg, sequence, width, height, event_time_ms, now))
            return True

    def _forget_stale(self, now: float) -> None:
        # The least recently offered camera has the oldest newest frame: stop at the first fresh one.
        while self._frames:
            camera_id, held = next(iter(self._frames.items()))
            if held and now - held[-1].received <= self.max_age_s:
                return
            del self._frames[camera_id]

    def get(self, camera_id: str, frame_event_id: str | None = None) -> HeldFrame | None:
        """That frame of the camera if it is still held, else the camera's newest."""
        with self._lock:
            self._forget_stale(self._clock())
            held = self._frames.get(camera_id)
            if not held:
                return None
            if frame_event_id:
                for frame in reversed(held):
                    if frame.frame_event_id == frame_event_id:
                        return frame
            return held[-1]

    def cameras(self) -> list[dict[str, Any]]:
        with self._lock:
            self._forget_stale(self._clock())
            frames = sorted((held[-1] for held in self._frames.values() if held), key=lambda f: f.camera_id)
        return [{"camera_id": f.camera_id, "sequence": f.sequence, "width": f.width, "height": f.height,
                 "event_time_ms": f.event_time_ms, "bytes": len(f.jpeg)} for f in frames]

    def __len__(self) -> int:
        """Cameras held."""
        with self._lock:
            return len(self._frames)
