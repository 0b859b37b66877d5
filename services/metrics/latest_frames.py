"""The newest frame of each camera, in memory, for the dashboard's live view (pure: no Kafka).

Only the newest JPEG per camera is kept (a few hundred KiB per camera); frames are never decoded here, so
holding them costs a copy of the bytes and nothing more."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HeldFrame:
    camera_id: str
    jpeg: bytes
    sequence: int
    width: int
    height: int
    event_time_ms: int
    received: float


class LatestFrames:
    def __init__(self) -> None:
        self._frames: dict[str, HeldFrame] = {}
        self._lock = threading.Lock()

    def offer(self, camera_id: str, jpeg: bytes, sequence: int, width: int, height: int, event_time_ms: int) -> bool:
        """Keeps the frame if it is newer than the one held for its camera; says whether it did."""
        with self._lock:
            held = self._frames.get(camera_id)
            if held is not None and (held.event_time_ms, held.sequence) >= (event_time_ms, sequence):
                return False
            self._frames[camera_id] = HeldFrame(camera_id, jpeg, sequence, width, height, event_time_ms,
                                                time.time())
            return True

    def get(self, camera_id: str) -> HeldFrame | None:
        with self._lock:
            return self._frames.get(camera_id)

    def cameras(self) -> list[dict[str, Any]]:
        with self._lock:
            frames = sorted(self._frames.values(), key=lambda f: f.camera_id)
        return [{"camera_id": f.camera_id, "sequence": f.sequence, "width": f.width, "height": f.height,
                 "event_time_ms": f.event_time_ms, "bytes": len(f.jpeg)} for f in frames]
