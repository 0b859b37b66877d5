"""The newest frames of each camera, in memory, for the dashboard's live view (pure: no Kafka).

A few of the newest JPEGs per camera are kept (a few MiB in all per camera), so that the boxes of the latest
stored result can be drawn on the very frame they were found in, which arrives a moment before its result.
Frames are never decoded here: holding them costs a copy of the bytes and nothing more."""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HeldFrame:
    camera_id: str
    frame_event_id: str
    jpeg: bytes
    sequence: int
    width: int
    height: int
    event_time_ms: int
    received: float


class LatestFrames:
    def __init__(self, per_camera: int = 50) -> None:
        self.per_camera = per_camera
        self._frames: dict[str, collections.deque[HeldFrame]] = {}
        self._lock = threading.Lock()

    def offer(self, camera_id: str, frame_event_id: str, jpeg: bytes, sequence: int, width: int, height: int,
              event_time_ms: int) -> bool:
        """Keeps the frame if it is newer than the newest held for its camera; says whether it did."""
        with self._lock:
            held = self._frames.setdefault(camera_id, collections.deque(maxlen=self.per_camera))
            if held and (held[-1].event_time_ms, held[-1].sequence) >= (event_time_ms, sequence):
                return False
            held.append(HeldFrame(camera_id, frame_event_id, jpeg, sequence, width, height, event_time_ms,
                                  time.time()))
            return True

    def get(self, camera_id: str, frame_event_id: str | None = None) -> HeldFrame | None:
        """That frame of the camera if it is still held, else the camera's newest."""
        with self._lock:
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
            frames = sorted((held[-1] for held in self._frames.values() if held), key=lambda f: f.camera_id)
        return [{"camera_id": f.camera_id, "sequence": f.sequence, "width": f.width, "height": f.height,
                 "event_time_ms": f.event_time_ms, "bytes": len(f.jpeg)} for f in frames]
