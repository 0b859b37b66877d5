"""Bounded summaries of a stream of feature values, the common currency of windows and reference profiles: a
uniform reservoir sample per numeric feature, counts per categorical feature, a bounded sample of embeddings, and
running totals; mergeable, and serialisable to plain JSON (arrays as base64 float32) and back."""
from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field

import numpy as np

def stable_seed(*parts: object) -> int:
    """A seed from names (key, feature, window start) that is the same in every process (unlike hash())."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


class Reservoir:
    """A uniform sample of at most `capacity` values (numbers, or vectors of one length) from a stream of any
    length (Vitter's algorithm R), kept in a float32 array: appended until full, then one draw per value, a batch
    of values at a time with numpy. The generator (PCG64) is seeded per reservoir and its draws counted, so a
    reservoir restored from its state (after a restart) jumps past them and samples on exactly as before."""

    __slots__ = ("capacity", "seed", "seen", "_kept", "_buffer", "_generator")

    def __init__(self, capacity: int, seed: int = 0, values=None, seen: int = 0) -> None:
        if capacity < 1:
            raise ValueError("a reservoir holds at least one value")
        self.capacity = capacity
        self.seed = seed
        self.seen = 0
        self._kept = 0
        self._buffer: np.ndarray | None = None  # shaped by the first values: (capacity,) or (capacity, dim)
        self._generator: np.random.Generator | None = None  # made at the first draw
        if values is not None and len(values):
            self.extend(values)
        self.seen = max(seen, self.seen)

    @property
    def values(self) -> np.ndarray:
        return self._buffer[:self._kept] if self._buffer is not None else np.zeros(0, np.float32)

    def add(self, value) -> None:
        if self._buffer is not None and self._kept < self.capacity and self._buffer.ndim == 1:
            self._buffer[self._kept] = value  # the common case while filling, without an array per value
            self._kept += 1
            self.seen += 1
            return
        self.extend(np.asarray(value, np.float32)[None])

    def extend(self, values) -> None:
        values = np.asarray(values, np.float32)
        count = len(values)
        if not count:
            return
        if self._buffer is None:
            self._buffer = np.empty((self.capacity, *values.shape[1:]), np.float32)
        elif values.shape[1:] != self._buffer.shape[1:]:
            raise ValueError(f"values of shape {values.shape[1:]} for a reservoir of {self._buffer.shape[1:]}")
        room = self.capacity - self._kept
        if room > 0:
            taken = min(room, count)
            self._buffer[self._kept:self._kept + taken] = values[:taken]
            self._kept += taken
            self.seen += taken
            if taken == count:
                return
            values, count = values[taken:], count - taken
        # The k-th value beyond capacity (the reservoir having seen n before it) replaces slot floor(u * n) when
        # that is under capacity; a later value in the same slot wins, as value by value.
        slots = (self._draws(count) * np.arange(self.seen + 1, self.seen + count + 1)).astype(np.int64)
        hits = np.flatnonzero(slots < self.capacity)
        if len(hits):
            _, last = np.unique(slots[hits][::-1], return_index=True)
            hits = hits[len(hits) - 1 - last]
            self._buffer[slots[hits]] = values[hits]
        self.seen += count

    def _draws(self, count: int) -> np.ndarray:
        if self._generator is None:
            bits = np.random.PCG64(self.seed)
            bits.advance(max(0, self.seen - self.capacity))  # one draw was made per value seen beyond capacity
            self._generator = np.random.Generator(bits)
        return self._generator.random(count)

    def sample(self) -> Sample:
        return Sample(self.values.copy(), self.seen)

    def to_state(self) -> dict:
        """JSON-able and compact (values as base64 float32, as every sample is kept: 8 KB per 2,000 values)."""
        return {"capacity": self.capacity, "seed": self.seed, **_encode(Sample(self.values, self.seen))}

    @classmethod
    def from_state(cls, state: dict) -> Reservoir:
        sample = _decode(state)
        return cls(state["capacity"], state["seed"], sample.values, sample.seen)


@dataclass(frozen=True)
class Sample:
    """A sample (1-D values, or 2-D rows of vectors) of `seen` observations."""

    values: np.ndarray
    seen: int

    def __len__(self) -> int:
        return len(self.values)


def merge_samples(samples: list[Sample], capacity: int, seed: int = 0) -> Sample:
    """One uniform sample of the union: each part contributes in proportion to the observations it stands for,
    so a window of 300 frames does not weigh as much as one of 3,000 because both kept 300 values."""
    samples = [s for s in samples if len(s)]
    seen = sum(s.seen for s in samples)
    if not samples:
        return Sample(np.zeros(0, np.float32), 0)
    if sum(len(s) for s in samples) <= capacity and all(len(s) == s.seen for s in samples):
        return Sample(np.concatenate([s.values for s in samples]).astype(np.float32), seen)
    rng = np.random.default_rng(seed)
    parts = []
    for s in samples:
        take = min(len(s), max(1, round(capacity * s.seen / seen)))
        parts.append(s.values[rng.choice(len(s), take, replace=False)])
    merged = np.concatenate(parts).astype(np.float32)
    if len(merged) > capacity:
        merged = merged[rng.choice(len(merged), capacity, replace=False)]
    return Sample(merged, seen)


@dataclass
class Summary:
    """What a window or a reference profile holds about one key."""

    frames: int = 0
    numeric: dict[str, Sample] = field(default_factory=dict)
    categorical: dict[str, dict[str, int]] = field(default_factory=dict)
    embeddings: Sample | None = None
    totals: dict[str, float] = field(default_factory=dict)


def merge_summaries(summaries: list[Summary], numeric_capacity: int, embedding_capacity: int,
                    seed: int = 0) -> Summary:
    merged = Summary(frames=sum(s.frames for s in summaries))
    for name in sorted({n for s in summaries for n in s.numeric}):
        merged.numeric[name] = merge_samples([s.numeric[name] for s in summaries if name in s.numeric],
                                             numeric_capacity, stable_seed(seed, name))
    for name in sorted({n for s in summaries for n in s.categorical}):
        counts: dict[str, int] = {}
        for s in summaries:
            for category, n in s.categorical.get(name, {}).items():
                counts[category] = counts.get(category, 0) + n
        merged.categorical[name] = counts
    embeddings = [s.embeddings for s in summaries if s.embeddings is not None and len(s.embeddings)]
    if embeddings:
        merged.embeddings = merge_samples(embeddings, embedding_capacity, stable_seed(seed, "embeddings"))
    for s in summaries:
        for name, value in s.totals.items():
            merged.totals[name] = merged.totals.get(name, 0.0) + value
    return merged


def _encode(sample: Sample) -> dict:
    values = np.ascontiguousarray(sample.values, dtype="<f4")
    return {"seen": sample.seen, "shape": list(values.shape), "f32": base64.b64encode(values.tobytes()).decode()}


def _decode(data: dict) -> Sample:
    values = np.frombuffer(base64.b64decode(data["f32"]), dtype="<f4").reshape(data["shape"]).astype(np.float32)
    return Sample(values, int(data["seen"]))


def summary_to_json(summary: Summary) -> dict:
    return {"frames": summary.frames,
            "numeric": {name: _encode(s) for name, s in sorted(summary.numeric.items())},
            "categorical": {name: dict(sorted(c.items())) for name, c in sorted(summary.categorical.items())},
            "embeddings": _encode(summary.embeddings) if summary.embeddings is not None else None,
            "totals": dict(sorted(summary.totals.items()))}


def summary_from_json(data: dict) -> Summary:
    return Summary(frames=int(data["frames"]),
                   numeric={name: _decode(s) for name, s in data["numeric"].items()},
                   categorical={name: {k: int(v) for k, v in c.items()} for name, c in data["categorical"].items()},
                   embeddings=_decode(data["embeddings"]) if data.get("embeddings") else None,
                   totals={k: float(v) for k, v in data["totals"].items()})
