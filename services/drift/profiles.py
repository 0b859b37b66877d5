"""Reference profiles: what "normal" looks like for a key (a camera and model version, a camera's input, a sensor),
as one bounded summary merged from windows: by default the first N windows with enough data after the key appears,
or the windows of a time range an operator chose. Serialised to JSON bytes (an object in S3) and back."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from services.drift.samples import Summary, merge_summaries, stable_seed, summary_from_json, summary_to_json
from services.drift.windows import ClosedWindow, ComparisonPolicy, DriftKey, compare_summaries

# Windows merged into an automatic reference: five minutes of 60 s windows, enough to span the scene's usual
# comings and goings, short enough that a camera is watched soon after it appears.
REFERENCE_WINDOWS = 5
# A reference keeps more than a window (it stands for several), still bounded: 5,000 float32 per feature.
REFERENCE_NUMERIC_CAPACITY = 5000
REFERENCE_EMBEDDING_CAPACITY = 512
PROFILE_FORMAT = 1
# A feature's threshold is at least a prediction bound for the score of a normal window, learnt from the reference's
# own windows, each scored against the rest of the reference (as NannyML sets thresholds from reference chunks).
# Video is not a sample of independent frames: a minute of footage differs from the next one (people come and go,
# a cloud passes) by far more than KS's or chi-square's critical values allow, and a fixed distance threshold knows
# nothing of a given scene or of the sampling noise at a window's size; the reference's own spread is the scale of
# "normal" for this key. The bound is one-sided at the tests' alpha, Bonferroni-corrected over the features (a
# window has a dozen chances to cross one), from Student's t since a reference has only a few windows.
# Below this many reference windows, there is no spread to speak of: the statistics' own thresholds apply.
CALIBRATION_MIN_WINDOWS = 3
# Each window is scored against the merge of the others, so the work grows with the square of their number: a
# reference set by hand from a day of 60 s windows (1,440) calibrates on this many, spread evenly over the range.
CALIBRATION_MAX_WINDOWS = 30
# Statistics that cannot exceed 1 (KS's sup distance, Jensen-Shannon in base 2): a bound learnt above 1 could never
# be crossed, so a feature whose windows no longer overlap the reference at all would never drift (measured: with
# 8-window references, contrast's and the under-exposed share's KS bounds came out at 1.2 to 1.4). The bound is
# capped below the maximum, so a window wholly apart from the reference always counts.
BOUNDED_METRICS = {"ks": 1.0, "jensen_shannon": 1.0}
BOUNDED_CAP = 0.95
# ReferenceProfile.source of an automatic reference and of one set by hand from a time range.
FIRST_WINDOWS, TIME_RANGE = "first_windows", "time_range"


@dataclass(frozen=True)
class ReferenceProfile:
    key: DriftKey
    summary: Summary
    start: float  # event time span of the windows it was built from (seconds since the epoch)
    end: float
    windows: int
    # "first_windows" (automatic), "time_range" (set by hand), or why it was re-learnt: "promotion of yolov3-tiny
    # version 4" (promotion.py)
    source: str
    set_by: str
    set_at: float  # seconds since the epoch
    # feature -> (metric, threshold): a bound from the reference's own window-to-window spread (see above)
    thresholds: dict[str, tuple[str, float]] = field(default_factory=dict)

    def to_json_bytes(self) -> bytes:
        return json.dumps({"format": PROFILE_FORMAT, "key": {"subject": self.key.subject,
                                                             "model_name": self.key.model_name,
                                                             "model_version": self.key.model_version},
                           "start": float(self.start), "end": float(self.end), "windows": self.windows,
                           "source": self.source,
                           "set_by": self.set_by, "set_at": float(self.set_at),
                           "thresholds": {name: [metric, float(threshold)]
                                          for name, (metric, threshold) in sorted(self.thresholds.items())},
                           "summary": summary_to_json(self.summary)}, separators=(",", ":")).encode()

    @classmethod
    def from_json_bytes(cls, data: bytes) -> ReferenceProfile:
        doc = json.loads(data)
        if doc.get("format") != PROFILE_FORMAT:
            raise ValueError(f"unknown reference profile format {doc.get('format')!r}")
        return cls(DriftKey(**doc["key"]), summary_from_json(doc["summary"]), float(doc["start"]),
                   float(doc["end"]), int(doc["windows"]), doc["source"], doc["set_by"], float(doc["set_at"]),
                   {name: (metric, float(threshold)) for name, (metric, threshold) in doc["thresholds"].items()})


def calibrated_thresholds(windows: list[ClosedWindow], policy: ComparisonPolicy = ComparisonPolicy(),
                          numeric_capacity: int = REFERENCE_NUMERIC_CAPACITY,
                          embedding_capacity: int = REFERENCE_EMBEDDING_CAPACITY) -> dict[str, tuple[str, float]]:
    """Each window against the merge of the others, with the same statistics as a live window; per feature and
    metric, the upper prediction bound of those n scores for one more: mean + t * sd * sqrt(1 + 1/n)."""
    if len(windows) < CALIBRATION_MIN_WINDOWS:
        return {}
    if len(windows) > CALIBRATION_MAX_WINDOWS:
        spread = np.linspace(0, len(windows) - 1, CALIBRATION_MAX_WINDOWS).round().astype(int)
        windows = [windows[i] for i in spread]
    whole = merge_summaries([w.summary for w in windows], numeric_capacity, embedding_capacity)
    scores: dict[tuple[str, str], list[float]] = {}
    for i, window in enumerate(windows):
        rest = merge_summaries([w.summary for j, w in enumerate(windows) if j != i], numeric_capacity,
                               embedding_capacity, stable_seed(window.key, window.start, "calibration"))
        # the statistics a live window will get: chosen by the whole reference's sizes, not the rest's
        for result in compare_summaries(window.summary, rest, policy, sized_as=whole):
            scores.setdefault((result.feature, result.metric), []).append(result.score)
    scores = {k: v for k, v in scores.items() if len(v) >= CALIBRATION_MIN_WINDOWS}  # enough to have a spread
    thresholds = {}
    for (feature, metric), values in sorted(scores.items()):
        n = len(values)
        t = float(stats.t.ppf(1 - policy.tests.alpha / len(scores), df=n - 1))
        bound = np.mean(values) + t * np.std(values, ddof=1) * np.sqrt(1 + 1 / n)
        if metric in BOUNDED_METRICS:
            bound = min(bound, BOUNDED_CAP * BOUNDED_METRICS[metric])
        thresholds[feature] = (metric, float(bound))
    return thresholds


def profile_from_windows(key: DriftKey, windows: Iterable[ClosedWindow], source: str, set_by: str, set_at: float,
                         policy: ComparisonPolicy = ComparisonPolicy(),
                         numeric_capacity: int = REFERENCE_NUMERIC_CAPACITY,
                         embedding_capacity: int = REFERENCE_EMBEDDING_CAPACITY) -> ReferenceProfile:
    windows = sorted(windows, key=lambda w: w.start)
    if not windows:
        raise ValueError(f"no windows to build a reference for {key} from")
    summary = merge_summaries([w.summary for w in windows], numeric_capacity, embedding_capacity,
                              stable_seed(key, windows[0].start))
    thresholds = calibrated_thresholds(windows, policy, numeric_capacity=numeric_capacity,
                                       embedding_capacity=embedding_capacity)
    return ReferenceProfile(key, summary, windows[0].start, windows[-1].end, len(windows), source, set_by, set_at,
                            thresholds)


def profile_for_time_range(key: DriftKey, windows: Iterable[ClosedWindow], start: float, end: float, set_by: str,
                           set_at: float, policy: ComparisonPolicy = ComparisonPolicy()) -> ReferenceProfile:
    """A reference set by hand: the key's windows lying wholly in [start, end) with enough data."""
    chosen = [w for w in windows if w.key == key and start <= w.start and w.end <= end
              and w.summary.frames >= policy.min_frames]
    if not chosen:
        raise ValueError(f"no window of {key} with at least {policy.min_frames} frames lies in the range")
    return profile_from_windows(key, chosen, TIME_RANGE, set_by, set_at, policy)


class ReferenceBuilder:
    """The automatic reference of one key: the first `windows` windows with at least `min_frames` frames after
    the key appears, or after its reference was dropped to be learnt afresh (`source` says why: a promotion); a
    window with too little data is skipped, not counted."""

    def __init__(self, key: DriftKey, windows: int = REFERENCE_WINDOWS,
                 policy: ComparisonPolicy = ComparisonPolicy(), source: str = FIRST_WINDOWS) -> None:
        if windows < 1:
            raise ValueError("a reference is built from at least one window")
        self.key, self.windows, self.policy, self.source = key, windows, policy, source
        self.collected: list[ClosedWindow] = []

    def offer(self, window: ClosedWindow, now: float) -> ReferenceProfile | None:
        """The profile once this window completes it, else None (also for windows of another key, or too thin)."""
        if window.key != self.key or window.summary.frames < self.policy.min_frames or self.done:
            return None
        self.collected.append(window)
        if len(self.collected) < self.windows:
            return None
        return profile_from_windows(self.key, self.collected, self.source, "drift", now, self.policy)

    @property
    def done(self) -> bool:
        return len(self.collected) >= self.windows
