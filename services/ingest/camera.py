"""Reads one camera stream with OpenCV and keeps reading: reopens after errors, stalls and end of stream.

OpenCV's read() can block for as long as a hung server hangs, so reading happens on a thread of its own
that hands frames over through a small queue; the consuming side is the watchdog: no frame within the read
timeout abandons that reader and opens a new one. The queue drops its oldest frame when full, so a slow
consumer (Kafka) never blocks the reader and memory stays bounded."""
from __future__ import annotations

import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import cv2
import numpy as np

from libs.common.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class CapturedFrame:
    image: np.ndarray
    capture_time_ns: int
    # The stream gave no absolute capture time, so this is the wall clock at read.
    time_from_stream: bool = False


class _ReaderThread(threading.Thread):
    """One attempt at reading a stream: opens it, reads until an error or until abandoned."""

    def __init__(self, url: str, open_timeout_s: float, read_timeout_s: float, frames: "DropOldestQueue") -> None:
        super().__init__(name=f"reader:{url}", daemon=True)
        self.url = url
        self.open_timeout_ms = int(open_timeout_s * 1000)
        self.read_timeout_ms = int(read_timeout_s * 1000)
        self.frames = frames
        self.abandoned = threading.Event()
        self.failure: str | None = None
        self.opened = threading.Event()

    def run(self) -> None:
        capture = cv2.VideoCapture(
            self.url, cv2.CAP_FFMPEG,
            [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.open_timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.read_timeout_ms],
        )
        try:
            if not capture.isOpened():
                self.failure = "could not open stream"
                return
            self.opened.set()
            while not self.abandoned.is_set():
                ok, image = capture.read()
                if not ok or image is None:
                    self.failure = "stream ended or read failed"
                    return
                self.frames.put(CapturedFrame(image, time.time_ns()))
        finally:
            capture.release()


class DropOldestQueue:
    """A bounded queue whose put never blocks: when full it discards the oldest item and counts it."""

    def __init__(self, maxsize: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._lock = threading.Lock()
        self.dropped = 0

    def put(self, item: object) -> None:
        with self._lock:
            while True:
                try:
                    self._queue.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass

    def get(self, timeout_s: float) -> object:
        return self._queue.get(timeout=timeout_s)


class CameraStream:
    """Frames of one camera, for as long as the stop event is not set, across any number of reopens."""

    def __init__(
        self,
        url: str,
        stop: threading.Event,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 5.0,
        max_backoff_s: float = 30.0,
        queue_size: int = 4,
        on_state: Callable[[str, str], None] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.stop = stop
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_backoff_s = max_backoff_s
        self.frames = DropOldestQueue(queue_size)
        self.on_state = on_state or (lambda state, reason: None)
        self.reconnects = 0
        # Called at least twice a second while the loop runs, online or not (the liveness heartbeat).
        self.on_tick = on_tick or (lambda: None)

    def __iter__(self) -> Iterator[CapturedFrame]:
        backoff_s = 0.5
        while not self.stop.is_set():
            self.on_state("connecting", "")
            reader = _ReaderThread(self.url, self.open_timeout_s, self.read_timeout_s, self.frames)
            reader.start()
            got_frame = False
            # The first frame may take the open timeout; after that, the read timeout is the watchdog.
            timeout_s = self.open_timeout_s + self.read_timeout_s
            while not self.stop.is_set():
                self.on_tick()
                try:
                    frame = self.frames.get(timeout_s=min(timeout_s, 0.5))
                except queue.Empty:
                    if reader.is_alive() and (timeout_s := timeout_s - 0.5) > 0:
                        continue
                    break
                if not got_frame:
                    got_frame = True
                    backoff_s = 0.5
                    self.on_state("online", "")
                timeout_s = self.read_timeout_s
                yield frame
            reader.abandoned.set()
            if self.stop.is_set():
                return
            reason = reader.failure or f"no frame for {self.read_timeout_s:.0f}s (stalled)"
            self.on_state("stalled" if reader.is_alive() else "offline", reason)
            log.warning("stream lost; reopening", url=self.url, reason=reason, backoff_s=round(backoff_s, 2))
            self.reconnects += 1
            # Jitter keeps many cameras behind one recovering server from reconnecting in lockstep.
            deadline = time.monotonic() + backoff_s * random.uniform(0.8, 1.2)
            while not self.stop.wait(min(0.5, max(0.0, deadline - time.monotonic()))) and time.monotonic() < deadline:
                self.on_tick()
            backoff_s = min(backoff_s * 2, self.max_backoff_s)
