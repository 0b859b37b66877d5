"""Reads one camera stream with OpenCV and keeps reading: reopens after errors, stalls and end of stream.

OpenCV's read() can block for as long as a hung server hangs, so reading happens on a thread of its own
that hands frames over through a small queue; the consuming side is the watchdog: no frame within the stall
timeout abandons that reader and opens a new one. The queue drops its oldest frame when full, so a slow
consumer (Kafka) never blocks the reader and memory stays bounded.

The reader grabs every frame but decodes to BGR only the frames the sampler keeps: at 25 fps in and 5 fps
out that saves most of the colour conversion, the largest cost after decoding itself."""
from __future__ import annotations

import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import cv2
import numpy as np

from libs.common.logs import get_logger, redact_credentials
from libs.common.stage_cpu import stage_cpu
from services.ingest.source_check import why_unanswered

log = get_logger(__name__)

# A stream clock that drifts this far from the wall clock is re-anchored (a server restart resets it).
MAX_STREAM_CLOCK_DRIFT_S = 2.0


@dataclass(frozen=True)
class CapturedFrame:
    image: np.ndarray
    capture_time_ns: int
    # True when capture_time_ns comes from the stream's own timestamps; False: wall clock at read.
    time_from_stream: bool = False


class StreamClock:
    """Capture times from the stream's own timestamps (CAP_PROP_POS_MSEC), anchored to the wall clock at
    the first frame. Falls back to the wall clock when the stream gives none or they go backwards."""

    def __init__(self) -> None:
        self._anchor_ns: int | None = None
        self._last_pos_ms = -1.0

    def capture_time(self, pos_ms: float, now_ns: int) -> tuple[int, bool]:
        if pos_ms <= 0 or pos_ms <= self._last_pos_ms:
            return now_ns, False
        self._last_pos_ms = pos_ms
        candidate = None if self._anchor_ns is None else self._anchor_ns + int(pos_ms * 1e6)
        if candidate is None or abs(candidate - now_ns) > MAX_STREAM_CLOCK_DRIFT_S * 1e9:
            self._anchor_ns = now_ns - int(pos_ms * 1e6)
            candidate = now_ns
        return candidate, True


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


@dataclass(frozen=True)
class ReadOptions:
    open_timeout_s: float = 10.0
    stall_timeout_s: float = 5.0
    # Files: wait for each frame's own time instead of reading as fast as possible.
    paced: bool = True
    # Files: start again at the end.
    loop: bool = False
    # Live sources have a clock worth trusting; files are read at the wall clock's pace.
    live: bool = True
    # FFmpeg's decoder threads per camera (0: FFmpeg picks, one per core). One is cheapest in CPU: frame
    # threading cost a third more CPU per 720p H.264 frame (2.39 against 1.80 ms), and a box with many
    # cameras is parallel across cameras already.
    decode_threads: int = 1


class _ReaderThread(threading.Thread):
    """One attempt at reading a stream: opens it, reads until an error or until abandoned."""

    def __init__(self, source: str, options: ReadOptions, frames: DropOldestQueue,
                 keep: Callable[[float], bool], on_read: Callable[[], None]) -> None:
        super().__init__(name=f"reader:{redact_credentials(source)}", daemon=True)
        self.source = source
        self.options = options
        self.frames = frames
        self.keep = keep
        self.on_read = on_read
        self.abandoned = threading.Event()
        self.failure: str | None = None
        self.clock = StreamClock()
        # The watchdog looks at these: when the reader last got a frame from the source (kept or not).
        self.last_activity = time.monotonic()
        self.got_any = False

    def _open(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(self.source, cv2.CAP_FFMPEG, [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.options.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.options.stall_timeout_s * 1000),
            cv2.CAP_PROP_N_THREADS, self.options.decode_threads,
        ])

    def run(self) -> None:
        # Asked outside OpenCV, whose open blocks every other camera of this process while it waits.
        self.failure = why_unanswered(self.source, self.options.open_timeout_s)
        if self.failure is not None:
            return
        capture = self._open()
        try:
            if not capture.isOpened():
                self.failure = "could not open stream"
                return
            fps = capture.get(cv2.CAP_PROP_FPS)
            frame_interval_s = 1.0 / fps if 0 < fps < 1000 else 0.04
            started = time.monotonic()
            frames_in_pass = 0
            while not self.abandoned.is_set():
                with stage_cpu("ingest.decode"):
                    grabbed = capture.grab()
                if not grabbed:
                    if self.options.loop and not self.options.live and self.got_any:
                        # End of a looped file: start over; the camera stays online.
                        capture.release()
                        capture = self._open()
                        started, frames_in_pass = time.monotonic(), 0
                        continue
                    self.failure = ("end of file" if not self.options.live and self.got_any
                                    else "stream ended or read failed" if self.got_any
                                    else "no video frames in the source")
                    return
                self.got_any = True
                self.last_activity = time.monotonic()
                self.on_read()
                frames_in_pass += 1
                if not self.options.live and self.options.paced:
                    # A file plays at its own frame rate, like the camera it stands in for.
                    delay = started + frames_in_pass * frame_interval_s - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                now_s = time.monotonic()
                if not self.keep(now_s):
                    continue
                with stage_cpu("ingest.convert"):
                    ok, image = capture.retrieve()
                if not ok or image is None:
                    continue
                now_ns = time.time_ns()
                if self.options.live:
                    capture_ns, from_stream = self.clock.capture_time(capture.get(cv2.CAP_PROP_POS_MSEC), now_ns)
                else:
                    capture_ns, from_stream = now_ns, False
                self.frames.put(CapturedFrame(image, capture_ns, from_stream))
        except cv2.error as exc:
            self.failure = f"decoder error: {exc}"
        finally:
            capture.release()


class CameraStream:
    """Kept frames of one camera, for as long as the stop event is not set, across any number of reopens."""

    def __init__(
        self,
        source: str,
        stop: threading.Event,
        options: ReadOptions = ReadOptions(),
        max_backoff_s: float = 30.0,
        queue_size: int = 4,
        keep: Callable[[float], bool] | None = None,
        on_state: Callable[[str, str], None] | None = None,
        on_tick: Callable[[], None] | None = None,
        on_read: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.stop = stop
        self.options = options
        self.max_backoff_s = max_backoff_s
        self.frames = DropOldestQueue(queue_size)
        self.keep = keep or (lambda _t: True)
        self.on_state = on_state or (lambda state, reason: None)
        # Called at least twice a second while the loop runs, online or not (the liveness heartbeat).
        self.on_tick = on_tick or (lambda: None)
        self.on_read = on_read or (lambda: None)
        self.reconnects = 0

    def __iter__(self) -> Iterator[CapturedFrame]:
        backoff_s = 0.5
        while not self.stop.is_set():
            self.on_state("connecting", "")
            reader = _ReaderThread(self.source, self.options, self.frames, self.keep, self.on_read)
            reader.start()
            got_frame = False
            while not self.stop.is_set():
                self.on_tick()
                try:
                    frame = self.frames.get(timeout_s=0.25)
                except queue.Empty:
                    if self._reader_is_working(reader):
                        continue
                    break
                if not got_frame:
                    got_frame = True
                    backoff_s = 0.5
                    self.on_state("online", "")
                yield frame
            reader.abandoned.set()
            if self.stop.is_set():
                # Let the reader release its capture before the process may exit (FFmpeg threads torn down
                # mid-read abort the process); a reader hung on a frozen server is left behind.
                reader.join(self.options.stall_timeout_s + 1)
                return
            stalled = reader.is_alive()
            if got_frame and not stalled and reader.failure == "end of file":
                self.on_state("offline", "end of file")
                return  # a file that is not looped has been read: nothing to reopen
            # OpenCV's and FFmpeg's messages may quote the URL: the status leaves the process, the password must not.
            reason = redact_credentials(f"no frame for {self.options.stall_timeout_s:g}s" if stalled
                                        else reader.failure or "reader stopped")
            self.on_state("stalled" if stalled else "offline", reason)
            log.warning("stream lost; reopening", source=self.source, reason=reason, backoff_s=round(backoff_s, 2))
            self.reconnects += 1
            # Jitter keeps many cameras behind one recovering server from reconnecting in lockstep.
            deadline = time.monotonic() + backoff_s * random.uniform(0.8, 1.2)
            while not self.stop.wait(min(0.25, max(0.0, deadline - time.monotonic()))) and time.monotonic() < deadline:
                self.on_tick()
            backoff_s = min(backoff_s * 2, self.max_backoff_s)

    def _reader_is_working(self, reader: _ReaderThread) -> bool:
        """The watchdog: frames are being read (kept or not), or the first is still within the open timeout.
        It watches reads, not kept frames, so a camera sampled at a low rate never looks stalled."""
        if not reader.is_alive():
            return False
        idle_s = time.monotonic() - reader.last_activity
        limit_s = self.options.stall_timeout_s + (0 if reader.got_any else self.options.open_timeout_s)
        return idle_s < limit_s
