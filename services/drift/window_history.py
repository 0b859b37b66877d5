"""Past windows as the drift service published them (DriftWindow on vigil.drift.windows, each carrying its bounded
samples as JSON): back to ClosedWindows, and from a time range of them to the reference profiles an operator sets by
hand (`vigil drift reference set`). Transport-free: the caller reads the topic."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from protos import events_pb2
from services.drift.profiles import (
    CALIBRATION_MIN_WINDOWS, ReferenceProfile, profile_for_time_range, profile_from_windows)
from services.drift.windows import ClosedWindow, ComparisonPolicy, DriftKey

# Below this many windows with enough data a reference has no spread to learn thresholds from (profiles.py).
MIN_REFERENCE_WINDOWS = CALIBRATION_MIN_WINDOWS


def seconds(ts) -> float:
    return ts.seconds + ts.nanos / 1e9


def key_of(event: events_pb2.DriftWindow) -> DriftKey:
    """The window's key from its subject string ("camera/lobby", "camera/lobby|yolov3-tiny|3", "sensor/t-1")."""
    return DriftKey.parse(event.subject)


def closed_window(event: events_pb2.DriftWindow) -> ClosedWindow:
    """The window as the service closed it. Raises ValueError for a window without samples (or unreadable ones)."""
    if not event.summary:
        raise ValueError(f"window of {event.subject} at {seconds(event.window_start):.0f} carries no samples")
    try:
        window = ClosedWindow.from_json(json.loads(event.summary))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"window of {event.subject}: unreadable samples ({exc})") from exc
    return window


@dataclass
class RangeSelection:
    """The windows of a time range, by key: those lying wholly in [start, end), deduplicated (a window published
    twice, after a restart, counts once), and how many were left out and why. With `window_s`, only windows of
    that length (another worker's, or a former setting's, are not the same measure)."""

    start: float
    end: float
    windows: dict[DriftKey, dict[float, ClosedWindow]] = field(default_factory=dict)
    unreadable: int = 0
    window_s: float | None = None

    def offer(self, event: events_pb2.DriftWindow, wanted: Callable[[DriftKey], bool]) -> bool:
        key = key_of(event)
        start, end = seconds(event.window_start), seconds(event.window_end)
        if not wanted(key) or not (self.start <= start and end <= self.end):
            return False
        if self.window_s is not None and abs(end - start - self.window_s) > 1e-3:
            return False
        try:
            window = closed_window(event)
        except ValueError:
            self.unreadable += 1
            return False
        self.windows.setdefault(window.key, {})[window.start] = window
        return True

    def usable(self, key: DriftKey, policy: ComparisonPolicy) -> list[ClosedWindow]:
        """The key's windows with enough data to stand for normal (the others are 'insufficient data')."""
        return sorted((w for w in self.windows.get(key, {}).values() if w.summary.frames >= policy.min_frames),
                      key=lambda w: w.start)


def build_references(selection: RangeSelection, keys: Iterable[DriftKey], set_by: str, set_at: float,
                     policy: ComparisonPolicy = ComparisonPolicy()) -> list[ReferenceProfile]:
    """A reference set by hand for each key, from the selection's windows of that key."""
    return [profile_for_time_range(key, selection.usable(key, policy), selection.start, selection.end, set_by,
                                   set_at, policy) for key in keys]


def recent_references(selection: RangeSelection, keys: Iterable[DriftKey], windows: int, min_windows: int,
                      source: str, set_by: str, set_at: float, policy: ComparisonPolicy = ComparisonPolicy(),
                      ) -> tuple[list[ReferenceProfile], list[DriftKey]]:
    """For each key, a reference from its newest `windows` windows of the selection with enough data; the keys
    with fewer than `min_windows` such windows are returned apart (nothing built for them)."""
    profiles, thin = [], []
    for key in keys:
        usable = selection.usable(key, policy)[-windows:]
        if len(usable) < min_windows:
            thin.append(key)
        else:
            profiles.append(profile_from_windows(key, usable, source, set_by, set_at, policy))
    return profiles, thin


def camera_subject_filter(camera_id: str, model_name: str | None = None,
                          model_version: str | None = None) -> Callable[[DriftKey], bool]:
    """The keys of one camera: without a model, its input and every model's outputs; with a model, that model's
    outputs only (every version of it, or the one version given)."""
    subject = f"camera/{camera_id}"

    def wanted(key: DriftKey) -> bool:
        if key.subject != subject:
            return False
        if model_name is None:
            return True
        return key.model_name == model_name and (model_version is None or key.model_version == model_version)

    return wanted
