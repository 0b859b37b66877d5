"""Tumbling event-time windows per key (a camera and model version, a camera's input, a sensor): each accumulates
bounded samples of its features as events arrive, and once closed is compared with its key's reference, or
reported as having too little data to say anything (never a false alarm)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from services.drift.features import PERFORMANCE_TOLERANCES, performance_estimate
from services.drift.samples import Reservoir, Sample, Summary, stable_seed, summary_from_json, summary_to_json
from services.drift.statistics import (
    DriftResult, DriftTests, categorical_drift, delta_drift, embedding_drift, numeric_drift)

WINDOW_S = 60.0
# Per window and numeric feature: a 60 s window of one camera at 10 fps holds 600 frames and a few thousand
# detections; 2,000 keeps every frame-level value of such a window (and a uniform sample of the detection-level
# ones) while bounding memory (8 KB per feature as float32).
NUMERIC_CAPACITY = 2000
# Per window: MMD subsamples to a couple of hundred vectors anyway (statistics.MMD_MAX_SAMPLES).
EMBEDDING_CAPACITY = 256
# A window with fewer frames than this is "insufficient data": with a few frames (a camera reconnecting, the
# last seconds before it went silent) any statistic would swing, and an alarm on it would be false.
MIN_FRAMES = 30
# A feature with fewer observations than this on either side is not tested in that window (a class seen twice).
MIN_SAMPLES = 20
MIN_EMBEDDINGS = 20
TOP_FEATURES = 3


@dataclass(frozen=True, order=True)
class DriftKey:
    """What a window and a reference belong to: a subject as in Envelope.source ("camera/lobby",
    "sensor/t-17") and, for a model's outputs, the model and its version (a new version gets its own reference)."""

    subject: str
    model_name: str = ""
    model_version: str = ""

    def __str__(self) -> str:
        return "|".join((self.subject, self.model_name, self.model_version))

    @classmethod
    def parse(cls, text: str) -> DriftKey:
        subject, model_name, model_version = (text.split("|") + ["", ""])[:3]
        return cls(subject, model_name, model_version)


class WindowAccumulator:
    """One key's open window: what features.py records into it, per event, kept bounded."""

    __slots__ = ("key", "start", "end", "frames", "numeric", "categorical", "embeddings", "totals",
                 "numeric_capacity", "_seed")

    def __init__(self, key: DriftKey, start: float, end: float, numeric_capacity: int = NUMERIC_CAPACITY,
                 embedding_capacity: int = EMBEDDING_CAPACITY) -> None:
        self.key, self.start, self.end = key, start, end
        self.frames = 0
        self.numeric: dict[str, Reservoir] = {}
        self.categorical: dict[str, dict[str, int]] = {}
        self.numeric_capacity = numeric_capacity
        self._seed = stable_seed(key, start)
        self.embeddings = Reservoir(embedding_capacity, stable_seed(self._seed, "embeddings"))
        self.totals: dict[str, float] = {}

    def add_frame(self) -> None:
        self.frames += 1

    def add_frames(self, count: int) -> None:
        self.frames += count

    def add_number(self, feature: str, value: float) -> None:
        reservoir = self.numeric.get(feature)
        if reservoir is None:
            reservoir = self.numeric[feature] = Reservoir(self.numeric_capacity, stable_seed(self._seed, feature))
        reservoir.add(value)

    def add_numbers(self, feature: str, values) -> None:
        reservoir = self.numeric.get(feature)
        if reservoir is None:
            reservoir = self.numeric[feature] = Reservoir(self.numeric_capacity, stable_seed(self._seed, feature))
        reservoir.extend(values)

    def add_category(self, feature: str, category: str, count: int = 1) -> None:
        counts = self.categorical.get(feature)
        if counts is None:
            counts = self.categorical[feature] = {}
        counts[category] = counts.get(category, 0) + count

    def add_embedding(self, vector) -> None:
        self.embeddings.add(vector)

    def add_embeddings(self, vectors) -> None:
        self.embeddings.extend(vectors)

    def add_total(self, name: str, amount: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + amount

    def summary(self) -> Summary:
        return Summary(frames=self.frames,
                       numeric={name: r.sample() for name, r in self.numeric.items()},
                       categorical={name: dict(c) for name, c in self.categorical.items()},
                       embeddings=self.embeddings.sample() if self.embeddings.seen else None,
                       totals=dict(self.totals))

    def to_state(self) -> dict:
        """Plain data (JSON-able), for a durable table: restored with from_state, it goes on sampling exactly
        as this one would have."""
        return {"key": str(self.key), "start": self.start, "end": self.end, "frames": self.frames,
                "numeric_capacity": self.numeric_capacity,
                "numeric": {name: r.to_state() for name, r in self.numeric.items()},
                "categorical": self.categorical, "embeddings": self.embeddings.to_state(), "totals": self.totals}

    @classmethod
    def from_state(cls, state: dict) -> WindowAccumulator:
        window = cls(DriftKey.parse(state["key"]), state["start"], state["end"], state["numeric_capacity"],
                     state["embeddings"]["capacity"])
        window.frames = state["frames"]
        window.numeric = {name: Reservoir.from_state(r) for name, r in state["numeric"].items()}
        window.categorical = {name: dict(c) for name, c in state["categorical"].items()}
        window.embeddings = Reservoir.from_state(state["embeddings"])
        window.totals = dict(state["totals"])
        return window


@dataclass(frozen=True)
class ClosedWindow:
    key: DriftKey
    start: float  # seconds since the epoch, event time
    end: float
    summary: Summary

    def to_json(self) -> dict:
        """Plain data: kept while a reference is being built, or stored so a reference can later be set by hand
        from a time range."""
        return {"key": str(self.key), "start": float(self.start), "end": float(self.end),
                "summary": summary_to_json(self.summary)}

    @classmethod
    def from_json(cls, data: dict) -> ClosedWindow:
        return cls(DriftKey.parse(data["key"]), float(data["start"]), float(data["end"]),
                   summary_from_json(data["summary"]))


class TumblingWindows:
    """Windows of `size_s` aligned on the epoch, per key, by event time. A key's window closes when an event of
    that key is `grace_s` past its end (so events slightly out of order, a shadow result after the next frame,
    still land in their window), or when the clock passes it (close_idle: a camera gone silent). An event
    for a window already closed is late: it is counted and dropped."""

    def __init__(self, size_s: float = WINDOW_S, grace_s: float = 0.0, numeric_capacity: int = NUMERIC_CAPACITY,
                 embedding_capacity: int = EMBEDDING_CAPACITY) -> None:
        if size_s <= 0 or grace_s < 0 or grace_s >= size_s:
            raise ValueError(f"window size must be positive and grace in [0, size): {size_s}, {grace_s}")
        self.size_s, self.grace_s = size_s, grace_s
        self.numeric_capacity, self.embedding_capacity = numeric_capacity, embedding_capacity
        self.open: dict[DriftKey, dict[float, WindowAccumulator]] = {}
        self._closed_until: dict[DriftKey, float] = {}
        self._next_close: dict[DriftKey, float] = {}
        self._closed: list[ClosedWindow] = []
        self.late_events = 0

    def window_for(self, key: DriftKey, event_time: float) -> WindowAccumulator | None:
        """The open window an event of `key` at `event_time` (seconds) belongs to, or None when it is late.
        Windows this event's time closes are queued for take_closed()."""
        start = math.floor(event_time / self.size_s) * self.size_s
        windows = self.open.get(key)
        if windows is None:
            windows = self.open[key] = {}
        window = windows.get(start)
        if window is None:
            if start < self._closed_until.get(key, -math.inf):
                self.late_events += 1
                return None
            window = windows[start] = WindowAccumulator(key, start, start + self.size_s, self.numeric_capacity,
                                                        self.embedding_capacity)
            self._next_close[key] = min(self._next_close.get(key, math.inf), window.end + self.grace_s)
        if event_time >= self._next_close[key]:
            self._close(key, event_time)
        return window

    def close_idle(self, now: float) -> None:
        """Close every window whose end (plus grace) `now` has passed, whether or not its key had events since."""
        for key in [k for k, t in self._next_close.items() if now >= t]:
            self._close(key, now)

    def take_closed(self) -> list[ClosedWindow]:
        closed, self._closed = self._closed, []
        return closed

    def closed_until(self, key: DriftKey) -> float | None:
        """The end of the key's last closed window: events before it are late."""
        return self._closed_until.get(key)

    def restore(self, key: DriftKey, open_windows: list[WindowAccumulator], closed_until: float | None) -> None:
        """Put back a key's open windows (saved with to_state) and how far it had closed, after a restart: events
        replayed from before the last closed window's end are then late, not a second copy of a window."""
        if closed_until is not None:
            self._closed_until[key] = closed_until
        for window in open_windows:
            self.open.setdefault(key, {})[window.start] = window
            self._next_close[key] = min(self._next_close.get(key, math.inf), window.end + self.grace_s)

    def _close(self, key: DriftKey, time: float) -> None:
        windows = self.open[key]
        for start in sorted(windows):
            window = windows[start]
            if time >= window.end + self.grace_s:
                del windows[start]
                self._closed.append(ClosedWindow(key, window.start, window.end, window.summary()))
                self._closed_until[key] = max(self._closed_until.get(key, -math.inf), window.end)
        if windows:
            self._next_close[key] = min(w.end for w in windows.values()) + self.grace_s
        else:
            del self.open[key]
            self._next_close.pop(key, None)


@dataclass(frozen=True)
class ComparisonPolicy:
    tests: DriftTests = DriftTests()
    min_frames: int = MIN_FRAMES
    min_samples: int = MIN_SAMPLES
    min_embeddings: int = MIN_EMBEDDINGS
    top_features: int = TOP_FEATURES
    # Divide alpha by the number of features a window tests (see compare_summaries).
    bonferroni: bool = True
    # How far each performance estimate may move from the reference's before it counts as drift.
    performance_tolerances: dict[str, float] = field(default_factory=lambda: dict(PERFORMANCE_TOLERANCES))


@dataclass(frozen=True)
class WindowVerdict:
    """A closed window against its reference. status: "compared", "insufficient_data" (too few frames), or
    "no_reference" (the key's reference is still being built). Only "compared" windows can be drifting."""

    key: DriftKey
    start: float
    end: float
    frames: int
    status: str
    results: tuple[DriftResult, ...] = ()

    @property
    def drifted(self) -> bool:
        return self.status == "compared" and any(r.drifted for r in self.results)

    def top(self, n: int = TOP_FEATURES) -> list[DriftResult]:
        """The drifting features, the most severe first."""
        return sorted((r for r in self.results if r.drifted), key=lambda r: (-r.severity, r.feature))[:n]


def _enough(sample: Sample | None, minimum: int) -> bool:
    return sample is not None and len(sample) >= minimum


def compare_summaries(current: Summary, reference: Summary, policy: ComparisonPolicy = ComparisonPolicy(),
                      calibrated: Mapping[str, tuple[str, float]] | None = None,
                      sized_as: Summary | None = None) -> list[DriftResult]:
    """Every feature both sides hold enough of, tested with the statistic its type and sample size call for.
    A feature only the window has (a class never seen in the reference) shows in the class mix instead.
    `calibrated` (feature -> (metric, threshold)) raises a feature's threshold to what the reference's own windows
    scored against each other, where the same metric was used. `sized_as`: the summary whose sizes choose the
    statistics (the whole reference, when `reference` is a part of it being calibrated)."""
    sizes = sized_as or reference
    numeric = [(name, ref, current.numeric[name]) for name, ref in sorted(reference.numeric.items())
               if _enough(ref, policy.min_samples) and _enough(current.numeric.get(name), policy.min_samples)]
    categorical = [(name, counts, current.categorical[name]) for name, counts in sorted(reference.categorical.items())
                   if sum(counts.values()) >= policy.min_samples
                   and sum(current.categorical.get(name, {}).values()) >= policy.min_samples]
    embeddings = _enough(reference.embeddings, policy.min_embeddings) and _enough(current.embeddings,
                                                                                 policy.min_embeddings)
    tests = policy.tests
    if policy.bonferroni:
        # A window tests a dozen features at once: at 0.05 each, one of them would read as drift in almost every
        # other window of a stable camera. Bonferroni keeps the chance of any false one per window at alpha.
        tested = len(numeric) + len(categorical) + embeddings
        tests = replace(tests, alpha=tests.alpha / max(tested, 1))
    results = [numeric_drift(ref.values, cur.values, tests, len(sizes.numeric.get(name, ref))).named(name)
               for name, ref, cur in numeric]
    results += [categorical_drift(ref, cur, tests, sum(sizes.categorical.get(name, ref).values())).named(name)
                for name, ref, cur in categorical]
    if embeddings:
        results.append(embedding_drift(reference.embeddings.values, current.embeddings.values,
                                       tests).named("embedding"))
    ref_estimate, cur_estimate = performance_estimate(reference.totals), performance_estimate(current.totals)
    for name, tolerance in sorted(policy.performance_tolerances.items()):
        if name in ref_estimate and name in cur_estimate:
            results.append(delta_drift(ref_estimate[name], cur_estimate[name], tolerance).named(name))
    if calibrated:
        for i, result in enumerate(results):
            metric, threshold = calibrated.get(result.feature, ("", 0.0))
            if metric == result.metric:
                results[i] = result.with_threshold_at_least(threshold)
    return results


def compare_window(window: ClosedWindow, reference: Summary | None, policy: ComparisonPolicy = ComparisonPolicy(),
                   calibrated: Mapping[str, tuple[str, float]] | None = None) -> WindowVerdict:
    if window.summary.frames < policy.min_frames:
        return WindowVerdict(window.key, window.start, window.end, window.summary.frames, "insufficient_data")
    if reference is None:
        return WindowVerdict(window.key, window.start, window.end, window.summary.frames, "no_reference")
    return WindowVerdict(window.key, window.start, window.end, window.summary.frames, "compared",
                         tuple(compare_summaries(window.summary, reference, policy, calibrated)))
