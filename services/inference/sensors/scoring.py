"""Scoring sensor readings with the sensor anomaly model (trained by tools/sensor_anomaly_training.py), free of any
transport: the exported IR compiled once, each sensor's window of recent readings in memory, and readings in,
one SensorAnomalyResult (or the reason there is none) out."""
from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov

from libs.common.envelope import derived_envelope
from protos import events_pb2
from services.inference.sensors.features import FEATURES, SHORT, WINDOW, QuantityScales, window_features


class SensorAnomalyScorer:
    """The exported IR compiled once (f32: bf16 would move scores near the threshold), scoring batches of
    feature rows. Thread-safe: one infer request, taken in turn."""

    def __init__(self, compiled: ov.CompiledModel, metadata: dict) -> None:
        self.compiled = compiled
        self.metadata = metadata
        self.name: str = metadata["name"]
        self.version: str = str(metadata["version"])
        self.threshold = float(metadata["threshold"])
        self.window = int(metadata["window"])
        self.scales = {q: QuantityScales(**s) for q, s in metadata["quantities"].items()}
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_dir: Path, device: str = "CPU", core: ov.Core | None = None) -> SensorAnomalyScorer:
        model_dir = Path(model_dir)
        metadata = json.loads((model_dir / "model.json").read_text())
        if metadata.get("kind") != "tabular" or metadata.get("features") != list(FEATURES) \
                or metadata.get("window") != WINDOW or metadata.get("short_window") != SHORT:
            raise ValueError(f"{model_dir} is not a sensor anomaly model with features {FEATURES}, "
                             f"window {WINDOW} and short window {SHORT}")
        compiled = (core or ov.Core()).compile_model(
            model_dir / "model.xml", device, {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
        return cls(compiled, metadata)

    def score(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feature rows [N, F] -> (scores [N] f32, anomaly flags [N] bool)."""
        rows = np.ascontiguousarray(rows, np.float32).reshape(-1, len(FEATURES))
        if len(rows) == 0:
            return np.zeros(0, np.float32), np.zeros(0, bool)
        with self._lock:
            scores = self._request.infer({0: rows})[0].copy()
        return scores, scores > self.threshold


@dataclass(frozen=True)
class WindowedReading:
    """A reading ready to be scored: its feature row, or why it is not scored."""

    features: np.ndarray | None
    skipped: str | None = None  # "warming_up", "unknown_quantity", "unit_mismatch", "out_of_order"


class SensorWindows:
    """Per sensor, its last WINDOW values in memory, so that each new reading yields one feature row.

    Readings must come in event-time order per sensor (vigil.sensors is keyed by sensor id, so they do):
    one not newer than the sensor's last is skipped, which also keeps a redelivered reading out of the
    window. A gap longer than max_gap_s starts the window again. The least recently seen sensors are
    forgotten beyond max_sensors. Nothing is persisted here: after a restart (or a partition moving to
    another replica) the windows are refilled from the readings already in Kafka (SensorReadingScorer.warm,
    driven by services/inference/sensor_kafka_adapter.py)."""

    def __init__(self, scales: dict[str, QuantityScales], window: int = WINDOW, max_gap_s: float = 3600.0,
                 max_sensors: int = 100_000) -> None:
        self.scales = scales
        self.window = window
        self.max_gap_s = max_gap_s
        self.max_sensors = max_sensors
        self._sensors: OrderedDict[str, tuple[deque[float], int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sensors)

    def add(self, sensor_id: str, quantity: str, unit: str, value: float, event_time_ns: int) -> WindowedReading:
        scales = self.scales.get(quantity)
        if scales is None:
            return WindowedReading(None, "unknown_quantity")
        if unit != scales.unit:
            return WindowedReading(None, "unit_mismatch")
        history, last_ns = self._sensors.get(sensor_id, (None, 0))
        if history is not None and event_time_ns <= last_ns:
            return WindowedReading(None, "out_of_order")
        if history is None or (event_time_ns - last_ns) / 1e9 > self.max_gap_s:
            history = deque(maxlen=self.window)
        features = None
        if len(history) == self.window:
            features = window_features(np.array([[*history, value]]), scales)[0]
        history.append(value)
        self._sensors[sensor_id] = (history, event_time_ns)
        self._sensors.move_to_end(sensor_id)
        while len(self._sensors) > self.max_sensors:
            self._sensors.popitem(last=False)
        return WindowedReading(features, None if features is not None else "warming_up")


@dataclass(frozen=True)
class InvalidReading:
    """A reading that can never be scored (it should not have passed ingest): it goes to the dead letters."""

    reason: str
    detail: str


PRODUCER = "inference"


class SensorReadingScorer:
    """Readings in (in their order), one result per reading out: a SensorAnomalyResult, an InvalidReading,
    or the reason the reading was not scored (a str: warming_up, unknown_quantity, unit_mismatch,
    out_of_order). A batch of readings is one OpenVINO inference."""

    def __init__(self, scorer: SensorAnomalyScorer, windows: SensorWindows | None = None) -> None:
        self.scorer = scorer
        self.windows = windows or SensorWindows(scorer.scales, scorer.window)
        self.model_ref = events_pb2.ModelRef(name=scorer.name, version=scorer.version, precision="fp32")

    def _into_window(self, reading: events_pb2.SensorReading) -> WindowedReading:
        return self.windows.add(reading.sensor_id, reading.quantity, reading.unit, reading.value,
                                reading.envelope.event_time.ToNanoseconds())

    def warm(self, readings: list[events_pb2.SensorReading]) -> int:
        """Readings already handled before (e.g. by this service before a restart) into the windows, scoring
        none; how many went in. Invalid ones are left out, as they were the first time."""
        warmed = 0
        for reading in readings:
            if reading_problem(reading) is None:
                warmed += self._into_window(reading).skipped in (None, "warming_up")
        return warmed

    def run(self, readings: list[events_pb2.SensorReading]
            ) -> list[events_pb2.SensorAnomalyResult | InvalidReading | str]:
        started = time.perf_counter()
        outcomes: list[events_pb2.SensorAnomalyResult | InvalidReading | str] = []
        rows, positions = [], []
        for reading in readings:
            problem = reading_problem(reading)
            if problem is not None:
                outcomes.append(problem)
                continue
            windowed = self._into_window(reading)
            if windowed.features is None:
                outcomes.append(windowed.skipped or "warming_up")
                continue
            positions.append(len(outcomes))
            outcomes.append("")  # replaced by the result once the batch is scored
            rows.append(windowed.features)
        features_ms = (time.perf_counter() - started) * 1000
        if not rows:
            return outcomes
        started = time.perf_counter()
        scores, flags = self.scorer.score(np.stack(rows))
        infer_ms = (time.perf_counter() - started) * 1000
        latency = {"features": features_ms / len(rows), "infer": infer_ms / len(rows)}
        derivation = f"{self.scorer.name}:{self.scorer.version}"
        for position, row, score, flag in zip(positions, rows, scores, flags):
            reading = readings[position]
            outcomes[position] = events_pb2.SensorAnomalyResult(
                envelope=derived_envelope(reading.envelope, PRODUCER, derivation),
                sensor_id=reading.sensor_id, quantity=reading.quantity, value=reading.value, unit=reading.unit,
                model=self.model_ref, score=float(score), anomaly=bool(flag), threshold=self.scorer.threshold,
                stage_latency_ms=latency, reading_event_id=reading.envelope.event_id,
                features=dict(zip(FEATURES, (float(v) for v in row))),
            )
        return outcomes


def reading_problem(reading: events_pb2.SensorReading) -> InvalidReading | None:
    missing = [name for name in ("sensor_id", "quantity", "unit") if not getattr(reading, name).strip()]
    if not reading.envelope.event_id:
        missing.append("envelope.event_id")
    if not reading.envelope.HasField("event_time"):
        missing.append("envelope.event_time")
    if missing:
        return InvalidReading("missing_field", "missing or empty: " + ", ".join(missing))
    if not math.isfinite(reading.value):
        return InvalidReading("not_finite", f"value is {reading.value}")
    return None
