"""Reference profiles: what "normal" looks like for a key (a camera and model version, a camera's input, a sensor),
as one bounded summary merged from windows: by default the first N windows with enough data after the key appears,
or the windows of a time range an operator chose. Serialised to JSON bytes (an object in S3) and back."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from services.drift.samples import Summary, merge_summaries, stable_seed, summary_from_json, summary_to_json
from services.drift.windows import MIN_FRAMES, ClosedWindow, DriftKey

# Windows merged into an automatic reference: five minutes of 60 s windows, enough to span the scene's usual
# comings and goings, short enough that a camera is watched soon after it appears.
REFERENCE_WINDOWS = 5
# A reference keeps more than a window (it stands for several), still bounded: 5,000 float32 per feature.
REFERENCE_NUMERIC_CAPACITY = 5000
REFERENCE_EMBEDDING_CAPACITY = 512
PROFILE_FORMAT = 1


@dataclass(frozen=True)
class ReferenceProfile:
    key: DriftKey
    summary: Summary
    start: float  # event time span of the windows it was built from (seconds since the epoch)
    end: float
    windows: int
    source: str  # "first_windows" (automatic) or "time_range" (set by hand)
    set_by: str
    set_at: float  # seconds since the epoch

    def to_json_bytes(self) -> bytes:
        return json.dumps({"format": PROFILE_FORMAT, "key": {"subject": self.key.subject,
                                                             "model_name": self.key.model_name,
                                                             "model_version": self.key.model_version},
                           "start": float(self.start), "end": float(self.end), "windows": self.windows,
                           "source": self.source,
                           "set_by": self.set_by, "set_at": float(self.set_at),
                           "summary": summary_to_json(self.summary)}, separators=(",", ":")).encode()

    @classmethod
    def from_json_bytes(cls, data: bytes) -> ReferenceProfile:
        doc = json.loads(data)
        if doc.get("format") != PROFILE_FORMAT:
            raise ValueError(f"unknown reference profile format {doc.get('format')!r}")
        return cls(DriftKey(**doc["key"]), summary_from_json(doc["summary"]), float(doc["start"]),
                   float(doc["end"]), int(doc["windows"]), doc["source"], doc["set_by"], float(doc["set_at"]))


def profile_from_windows(key: DriftKey, windows: Iterable[ClosedWindow], source: str, set_by: str, set_at: float,
                         numeric_capacity: int = REFERENCE_NUMERIC_CAPACITY,
                         embedding_capacity: int = REFERENCE_EMBEDDING_CAPACITY) -> ReferenceProfile:
    windows = sorted(windows, key=lambda w: w.start)
    if not windows:
        raise ValueError(f"no windows to build a reference for {key} from")
    summary = merge_summaries([w.summary for w in windows], numeric_capacity, embedding_capacity,
                              stable_seed(key, windows[0].start))
    return ReferenceProfile(key, summary, windows[0].start, windows[-1].end, len(windows), source, set_by, set_at)


def profile_for_time_range(key: DriftKey, windows: Iterable[ClosedWindow], start: float, end: float, set_by: str,
                           set_at: float, min_frames: int = MIN_FRAMES) -> ReferenceProfile:
    """A reference set by hand: the key's windows lying wholly in [start, end) with enough data."""
    chosen = [w for w in windows if w.key == key and start <= w.start and w.end <= end
              and w.summary.frames >= min_frames]
    if not chosen:
        raise ValueError(f"no window of {key} with at least {min_frames} frames lies in the range")
    return profile_from_windows(key, chosen, "time_range", set_by, set_at)


class ReferenceBuilder:
    """The automatic reference of one key: the first `windows` windows with at least `min_frames` frames after
    the key appears (a window with too little data is skipped, not counted)."""

    def __init__(self, key: DriftKey, windows: int = REFERENCE_WINDOWS, min_frames: int = MIN_FRAMES) -> None:
        if windows < 1:
            raise ValueError("a reference is built from at least one window")
        self.key, self.windows, self.min_frames = key, windows, min_frames
        self.collected: list[ClosedWindow] = []

    def offer(self, window: ClosedWindow, now: float) -> ReferenceProfile | None:
        """The profile once this window completes it, else None (also for windows of another key, or too thin)."""
        if window.key != self.key or window.summary.frames < self.min_frames or self.done:
            return None
        self.collected.append(window)
        if len(self.collected) < self.windows:
            return None
        return profile_from_windows(self.key, self.collected, "first_windows", "drift", now)

    @property
    def done(self) -> bool:
        return len(self.collected) >= self.windows
