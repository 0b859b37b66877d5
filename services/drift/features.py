"""The features drift watches, recorded into a window a run of events at a time (columns, one numpy operation per
feature however many events): output statistics of a detector's results (count, class mix, confidences overall
and per class, box area and aspect ratio, empty frames, primary-vs-shadow disagreement), the image statistics
ingest carries per frame, sensor values and anomaly scores; and the label-free performance estimate made from the
confidences at window close. Plain values in, no protobuf: the Kafka adapter maps InferenceResult, Frame and
SensorReading onto these."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# A detection scored below this counts as low-confidence (the share of them is a performance signal: a model
# that is losing its footing on a scene keeps detecting, but less surely).
LOW_CONFIDENCE = 0.5
# How far a window's performance estimate may move from its reference's (absolute) before it counts as drift.
PERFORMANCE_TOLERANCES = {
    "performance.expected_precision": 0.1,
    "performance.mean_top_score": 0.1,
    "performance.low_confidence_share": 0.15,
}
# Primary and shadow detections are the same object when they overlap this much and share a label.
MATCH_IOU = 0.5
# Results waiting for their primary or shadow counterpart, at most (the oldest are forgotten beyond it).
PAIRING_CAPACITY = 10_000


class FeatureSink(Protocol):
    """What a window offers to record into (windows.WindowAccumulator)."""

    def add_frame(self) -> None: ...
    def add_frames(self, count: int) -> None: ...
    def add_number(self, feature: str, value: float) -> None: ...
    def add_numbers(self, feature: str, values: Any) -> None: ...
    def add_category(self, feature: str, category: str, count: int = 1) -> None: ...
    def add_embeddings(self, vectors: np.ndarray) -> None: ...
    def add_total(self, name: str, amount: float) -> None: ...


@dataclass(slots=True)
class InferenceOutput:
    """The parts of one InferenceResult that drift looks at, as plain values."""

    labels: Sequence[str]
    scores: Sequence[float]
    boxes: Sequence[Sequence[float]]  # (x1, y1, x2, y2) in pixels of the frame
    width: int
    height: int
    embedding: Sequence[float] | None = None


@dataclass(slots=True)
class InferenceColumns:
    """Consecutive results of one key as columns: per result its detection count and frame size; per detection
    (results in order) its label, score and box; the embeddings of the results that carry one, in order."""

    counts: np.ndarray  # int, per result
    widths: np.ndarray  # float, per result
    heights: np.ndarray
    labels: Sequence[str]  # per detection
    scores: np.ndarray  # float, per detection
    boxes: np.ndarray  # (detections, 4): x1, y1, x2, y2 in pixels of the frame
    embeddings: np.ndarray | None = None  # (results with one, dim)

    @classmethod
    def of(cls, outputs: Sequence[InferenceOutput]) -> InferenceColumns:
        embeddings = [o.embedding for o in outputs if o.embedding is not None and len(o.embedding)]
        return cls(counts=np.array([len(o.scores) for o in outputs], np.int64),
                   widths=np.array([o.width for o in outputs], np.float64),
                   heights=np.array([o.height for o in outputs], np.float64),
                   labels=[label for o in outputs for label in o.labels],
                   scores=np.array([score for o in outputs for score in o.scores], np.float64),
                   boxes=np.array([box for o in outputs for box in o.boxes], np.float64).reshape(-1, 4),
                   embeddings=np.array(embeddings, np.float32) if embeddings else None)


@dataclass(frozen=True)
class Calibration:
    """A monotone map from a detector's score to the probability that the detection is right (for example fitted
    by isotonic regression on a labelled set and stored with the model version): points (score, probability)."""

    scores: tuple[float, ...]
    probabilities: tuple[float, ...]

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return np.interp(scores, self.scores, self.probabilities)


def record_inference(window: FeatureSink, output: InferenceOutput, low_confidence: float = LOW_CONFIDENCE,
                     calibration: Calibration | None = None) -> None:
    """One frame's detections into the window (see record_inferences)."""
    record_inferences(window, InferenceColumns.of([output]), low_confidence, calibration)


def record_inferences(window: FeatureSink, results: InferenceColumns, low_confidence: float = LOW_CONFIDENCE,
                      calibration: Calibration | None = None) -> None:
    """Consecutive results' detections into the window: per frame, the count, empty or not, the top score; per
    detection, class, score (overall and per class), box area as a share of the frame, aspect ratio, box centre
    (as shares of the frame's width and height); totals for the performance estimate; the embeddings. Each
    feature receives its values in the results' order, as result by result."""
    # First, as the only one that can be refused (vectors of another length than the window's): a refused run
    # leaves the window as it was.
    if results.embeddings is not None and len(results.embeddings):
        window.add_embeddings(results.embeddings)
    counts = results.counts
    frames = len(counts)
    window.add_frames(frames)
    window.add_numbers("output.detections", counts)
    empty = int(np.count_nonzero(counts == 0))
    mix = (("empty", empty), ("objects", frames - empty))
    for category, count in mix if counts[0] == 0 else mix[::-1]:  # first seen first, as result by result
        if count:
            window.add_category("output.empty", category, count)
    n = len(results.scores)
    if n == 0:
        return
    widths, heights = results.widths.copy(), results.heights.copy()
    widths[widths == 0], heights[heights == 0] = 1.0, 1.0
    width, height = np.repeat(widths, counts), np.repeat(heights, counts)
    scores = results.scores
    x1, y1, x2, y2 = results.boxes.T
    w, h = np.maximum(x2 - x1, 0.0), np.maximum(y2 - y1, 0.0)
    window.add_numbers("output.score", scores)
    window.add_numbers("output.box_area", w * h / (width * height))
    # where objects sit in the view: a knocked camera moves them before it changes anything else
    window.add_numbers("output.box_center_x", (x1 + x2) / (2.0 * width))
    window.add_numbers("output.box_center_y", (y1 + y2) / (2.0 * height))
    tall = h > 0
    if tall.any():
        window.add_numbers("output.aspect_ratio", w[tall] / h[tall])
    labels = results.labels
    first = labels[0]
    if all(label == first for label in labels):  # the common case: one class in the run
        window.add_category("output.class", first, n)
        window.add_numbers("output.score." + first, scores)
    else:
        kinds, inverse = np.unique(np.asarray(labels), return_inverse=True)
        for i in np.argsort([labels.index(kind) for kind in kinds.tolist()], kind="stable"):  # first seen first
            same = scores[inverse == i]
            window.add_category("output.class", str(kinds[i]), len(same))
            window.add_numbers("output.score." + str(kinds[i]), same)
    seen = counts > 0
    tops = np.maximum.reduceat(scores, (np.cumsum(counts) - counts)[seen])
    window.add_numbers("output.top_score", tops)
    window.add_total("detections", n)
    window.add_total("frames_with_detections", int(np.count_nonzero(seen)))
    window.add_total("top_score_sum", float(tops.sum()))
    window.add_total("low_confidence", int(np.count_nonzero(scores < low_confidence)))
    window.add_total("calibrated_score_sum", float(calibration(scores).sum()) if calibration else float(scores.sum()))


def performance_estimate(totals: Mapping[str, float]) -> dict[str, float]:
    """The label-free performance estimate of a window (or reference) from its totals, in the spirit of NannyML's
    CBPE: with calibrated scores, the mean score is the expected share of detections that are true positives
    (expected precision); uncalibrated, it is a proxy that still moves when the model loses confidence. Beside it
    the mean top score per frame and the share of low-confidence detections. Empty when nothing was detected."""
    detections = totals.get("detections", 0.0)
    frames = totals.get("frames_with_detections", 0.0)
    if detections <= 0 or frames <= 0:
        return {}
    return {"performance.expected_precision": totals.get("calibrated_score_sum", 0.0) / detections,
            "performance.mean_top_score": totals.get("top_score_sum", 0.0) / frames,
            "performance.low_confidence_share": totals.get("low_confidence", 0.0) / detections}


def record_image_statistics(window: FeatureSink, statistics: Mapping[str, float]) -> None:
    """One frame's image statistics as ingest computed them (mean luma, contrast, sharpness, saturation, under-
    and over-exposed shares), each its own numeric feature "input.<name>"."""
    record_frames(window, {name: [value] for name, value in statistics.items()})


def record_frames(window: FeatureSink, statistics: Mapping[str, Sequence[float]]) -> None:
    """Consecutive frames' image statistics, a column per statistic."""
    frames = {len(column) for column in statistics.values()}
    if len(frames) != 1:
        raise ValueError(f"image statistics of unequal lengths: {sorted(frames)}")
    window.add_frames(frames.pop())
    for name, column in statistics.items():
        window.add_numbers("input." + name, column)


def record_sensor_reading(window: FeatureSink, value: float) -> None:
    window.add_frame()
    window.add_number("sensor.value", float(value))


def record_sensor_score(window: FeatureSink, score: float, anomaly: bool) -> None:
    """The anomaly model's score for one reading; the anomaly rate is the mix of "anomaly" and "normal"."""
    window.add_frame()
    window.add_number("sensor.anomaly_score", float(score))
    window.add_category("sensor.anomaly", "anomaly" if anomaly else "normal")


def record_shadow_disagreement(window: FeatureSink, disagreement: float) -> None:
    """Recorded into the primary's window; not a frame of its own (the primary's result counted it)."""
    window.add_number("output.shadow_disagreement", disagreement)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def disagreement(primary: InferenceOutput, shadow: InferenceOutput, match_iou: float = MATCH_IOU) -> float:
    """1 - F1 of the shadow's detections against the primary's (greedy matching, highest score first, same label
    and IoU >= match_iou): 0 when they agree on every object (or both see nothing), 1 when on none."""
    n_primary, n_shadow = len(primary.scores), len(shadow.scores)
    if n_primary == 0 and n_shadow == 0:
        return 0.0
    if n_primary == 0 or n_shadow == 0:
        return 1.0
    boxes = np.asarray(shadow.boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(shadow.labels)
    free = np.ones(n_shadow, dtype=bool)
    matched = 0
    for i in np.argsort(-np.asarray(primary.scores, np.float64), kind="stable"):
        candidates = free & (labels == primary.labels[i])
        if not candidates.any():
            continue
        overlaps = np.where(candidates, _iou(np.asarray(primary.boxes[i], np.float64), boxes), -1.0)
        best = int(np.argmax(overlaps))
        if overlaps[best] >= match_iou:
            free[best] = False
            matched += 1
    return 1.0 - 2.0 * matched / (n_primary + n_shadow)


class ShadowPairing:
    """Primary and shadow results of the same frame meet here (they arrive as separate events, in either order):
    the second one yields the disagreement and the context the primary came with (its window key)."""

    def __init__(self, capacity: int = PAIRING_CAPACITY, match_iou: float = MATCH_IOU) -> None:
        self.capacity, self.match_iou = capacity, match_iou
        self._waiting: OrderedDict[str, tuple[bool, InferenceOutput, Any]] = OrderedDict()
        self.forgotten = 0

    def offer(self, frame_event_id: str, output: InferenceOutput, shadow: bool,
              context: Any = None) -> tuple[Any, float] | None:
        """(the primary's context, disagreement) once both have come, else None."""
        waiting = self._waiting.get(frame_event_id)
        if waiting is not None and waiting[0] != shadow:
            del self._waiting[frame_event_id]
            primary, primary_context = (waiting[1], waiting[2]) if shadow else (output, context)
            other = output if shadow else waiting[1]
            return primary_context, disagreement(primary, other, self.match_iou)
        self._waiting[frame_event_id] = (shadow, output, context)
        self._waiting.move_to_end(frame_event_id)
        while len(self._waiting) > self.capacity:
            self._waiting.popitem(last=False)
            self.forgotten += 1
        return None
