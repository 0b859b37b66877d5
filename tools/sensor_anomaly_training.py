"""Training the sensor anomaly model (an offline tool; the service only scores with what it builds): synthetic
normal readings, the features of services/inference/sensors/features.py, a Gaussian (Mahalanobis) model trained
here with plain numpy, exported to OpenVINO IR. `python -m tools.sensor_anomaly_training train --out DIR`.

The model: the mean and covariance of the training rows; a reading's score is its Mahalanobis distance
sqrt((x - mean)^T cov^-1 (x - mean)), computed as ||(x - mean) @ inv(L)^T|| with cov = L L^T (Cholesky).
That is one Subtract, one MatMul and a sum of squares: the exported IR is the same arithmetic. The anomaly
threshold is the 99.9th percentile of the training scores, so about one normal reading in a thousand is
flagged by construction; held-out normal readings and injected anomalies measure the rest (model.json).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset16 as ops

from services.inference.sensors.features import (
    FEATURES, MODEL_NAME, MODEL_VERSION, RECENT, SHORT, SPREAD_FLOOR, WINDOW, QuantityScales, change_from_recent,
    short_spread, window_features,
)
from services.inference.model_dirs import sensor_anomaly_model_dir


THRESHOLD_PERCENTILE = 99.9
INTERVAL_S = 60.0    # the synthetic sensors report once a minute
TRAIN_SEED = 20261126
HELD_OUT_SEED = 7


@dataclass(frozen=True)
class SyntheticQuantity:
    """How a normal indoor sensor of one quantity behaves: a per-sensor base level, a daily cycle peaking at
    peak_hour with a per-sensor amplitude, a slow AR(1) 'weather' wander, white noise, and the device's
    resolution (readings are rounded to it, as real devices report)."""

    unit: str
    base: tuple[float, float]
    amplitude: tuple[float, float]
    peak_hour: float
    wander: float
    noise: float
    resolution: float


SYNTHETIC_QUANTITIES: dict[str, SyntheticQuantity] = {
    "temperature": SyntheticQuantity("°C", (18.0, 24.0), (1.5, 4.0), 15.0, 0.5, 0.08, 0.01),
    "humidity": SyntheticQuantity("%", (35.0, 55.0), (3.0, 8.0), 5.0, 2.0, 0.4, 0.1),
    "pressure": SyntheticQuantity("hPa", (1000.0, 1025.0), (0.3, 1.0), 10.0, 1.5, 0.05, 0.01),
}


def synthetic_series(rng: np.random.Generator, quantity: str, count: int, interval_s: float = INTERVAL_S,
                     start_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One normal sensor's readings: (times in seconds since the epoch's midnight, values)."""
    q = SYNTHETIC_QUANTITIES[quantity]
    base = rng.uniform(*q.base)
    amplitude = rng.uniform(*q.amplitude)
    start = rng.uniform(0, 86400) if start_s is None else start_s
    times = start + interval_s * np.arange(count)
    cycle = amplitude * np.cos(2 * math.pi * (times / 3600.0 - q.peak_hour) / 24.0)
    # Weather: three slow waves (periods of 6 to 48 hours, random phases) with a total std of q.wander.
    # Smooth, as the weather is: a random walk would make every minute's change as big as the noise.
    periods_s = rng.uniform(6, 48, 3) * 3600.0
    phases = rng.uniform(0, 2 * math.pi, 3)
    wander = q.wander * np.sqrt(2 / 3) * np.cos(2 * math.pi * times[:, None] / periods_s + phases).sum(axis=1)
    values = base + cycle + wander + rng.normal(0.0, q.noise, count)
    return times, np.round(values / q.resolution) * q.resolution


def learn_scales(unit: str, series: list[np.ndarray]) -> QuantityScales:
    values = np.concatenate(series)
    steps = np.concatenate([change_from_recent(np.lib.stride_tricks.sliding_window_view(s, RECENT + 1))
                            for s in series])
    spreads = np.concatenate([short_spread(np.lib.stride_tricks.sliding_window_view(s, SHORT)) for s in series])
    scales = QuantityScales(unit=unit, mean=float(values.mean()), std=float(values.std()),
                            step=float(steps.std()), short_spread=float(np.median(spreads)))
    rows = np.concatenate([series_features(s, scales) for s in series])
    return replace(scales, feature_mean=tuple(float(m) for m in rows.mean(axis=0)),
                   feature_std=tuple(float(d) for d in rows.std(axis=0)))


def series_features(values: np.ndarray, scales: QuantityScales) -> np.ndarray:
    """Feature rows for every reading of one sensor's series that has a full window before it."""
    return window_features(np.lib.stride_tricks.sliding_window_view(np.asarray(values, np.float64), WINDOW + 1),
                           scales)


@dataclass(frozen=True)
class MahalanobisModel:
    mean: np.ndarray       # [F]
    whitening: np.ndarray  # [F, F]: (x - mean) @ whitening has identity covariance on the training rows

    @classmethod
    def fit(cls, rows: np.ndarray, ridge: float = 1e-6) -> MahalanobisModel:
        mean = rows.mean(axis=0)
        cov = np.cov(rows - mean, rowvar=False) + ridge * np.eye(rows.shape[1])
        lower = np.linalg.cholesky(cov)
        return cls(mean=mean, whitening=np.linalg.inv(lower).T)

    def score(self, rows: np.ndarray) -> np.ndarray:
        z = (np.asarray(rows, np.float64) - self.mean) @ self.whitening
        return np.sqrt((z * z).sum(axis=1))


def export_openvino(model: MahalanobisModel) -> ov.Model:
    """The same arithmetic as MahalanobisModel.score as an OpenVINO graph: features [N, F] f32 -> score [N].
    Every node is named, so the same model always serializes to the same bytes (OpenVINO's default names
    carry a process-wide counter)."""
    features = ops.parameter([-1, len(model.mean)], ov.Type.f32, name="features")
    mean = ops.constant(model.mean.astype(np.float32), name="mean")
    centred = ops.subtract(features, mean, name="centred")
    whitening = ops.constant(model.whitening.astype(np.float32), name="whitening")
    white = ops.matmul(centred, whitening, False, False, name="whitened")
    axis = ops.constant(np.array([1], np.int64), name="feature_axis")
    squared = ops.reduce_sum(ops.multiply(white, white, name="squares"), axis, keep_dims=False, name="distance2")
    score = ops.sqrt(squared, name="score")
    score.output(0).get_tensor().set_names({"score"})
    return ov.Model([ops.result(score, name="score_result")], [features], MODEL_NAME)


# --- injected anomalies, to measure the model (model.json metrics) and to test it -------------------------

ANOMALY_KINDS = ("spike", "stuck", "drift")


def inject(kind: str, values: np.ndarray, start: int, length: int, quantity: str,
           rng: np.random.Generator) -> np.ndarray:
    """A copy of `values` with one anomaly from `start` for `length` readings:
    spike: single readings (every 6th of the segment) jump by 15..30 times the quantity's noise, either way;
    stuck: the sensor repeats the value it had just before `start`;
    drift: an offset growing by 2 noise-widths per reading (e.g. +0.16 °C a minute), as a failing sensor's."""
    q = SYNTHETIC_QUANTITIES[quantity]
    out = values.copy()
    if kind == "spike":
        for i in range(start, start + length, 6):
            out[i] += rng.choice([-1.0, 1.0]) * rng.uniform(15, 30) * q.noise
    elif kind == "stuck":
        out[start:start + length] = values[start - 1]
    elif kind == "drift":
        out[start:start + length] += 2 * q.noise * np.arange(1, length + 1)
    else:
        raise ValueError(f"unknown anomaly kind {kind!r}")
    return np.round(out / q.resolution) * q.resolution


def anomalous_readings(kind: str, segment: int) -> np.ndarray:
    """Indices (relative to the segment start) of the readings an anomaly of this kind makes abnormal and a
    detector can be expected to see: each spike; a stuck run once SHORT - 3 of its changes are zero; the
    second half of a drift, once its offset is many noise widths."""
    if kind == "spike":
        return np.arange(0, segment, 6)
    if kind == "stuck":
        return np.arange(SHORT - 3, segment)
    return np.arange(segment // 2, segment)


# --- training ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingPlan:
    seed: int = TRAIN_SEED
    sensors_per_quantity: int = 24
    days: float = 2.0
    interval_s: float = INTERVAL_S


@dataclass
class TrainedSensorModel:
    model: MahalanobisModel
    scales: dict[str, QuantityScales]
    threshold: float
    train_scores: np.ndarray

    def features(self, quantity: str, values: np.ndarray) -> np.ndarray:
        return series_features(values, self.scales[quantity])

    def score_series(self, quantity: str, values: np.ndarray) -> np.ndarray:
        """Scores of every reading with a full window before it (numpy, float64)."""
        return self.model.score(self.features(quantity, values))


def train(plan: TrainingPlan = TrainingPlan()) -> TrainedSensorModel:
    rng = np.random.default_rng(plan.seed)
    count = int(plan.days * 86400 / plan.interval_s)
    series = {quantity: [synthetic_series(rng, quantity, count, plan.interval_s)[1]
                         for _ in range(plan.sensors_per_quantity)]
              for quantity in SYNTHETIC_QUANTITIES}
    scales = {quantity: learn_scales(SYNTHETIC_QUANTITIES[quantity].unit, s) for quantity, s in series.items()}
    rows = np.concatenate([series_features(v, scales[q]) for q, vs in series.items() for v in vs])
    model = MahalanobisModel.fit(rows)
    scores = model.score(rows)
    threshold = float(np.percentile(scores, THRESHOLD_PERCENTILE))
    return TrainedSensorModel(model, scales, threshold, scores)


def evaluate(trained: TrainedSensorModel, seed: int = HELD_OUT_SEED, sensors_per_quantity: int = 8,
             count: int = 1440, segment: int = 60) -> dict[str, object]:
    """Rates on data the model never saw: the share of held-out normal readings flagged, and per anomaly kind
    the share of its abnormal readings (anomalous_readings) flagged."""
    rng = np.random.default_rng(seed)
    normal_flags: list[np.ndarray] = []
    caught = {kind: [] for kind in ANOMALY_KINDS}
    for quantity in SYNTHETIC_QUANTITIES:
        for _ in range(sensors_per_quantity):
            values = synthetic_series(rng, quantity, count)[1]
            normal_flags.append(trained.score_series(quantity, values) > trained.threshold)
            for kind in ANOMALY_KINDS:
                start = int(rng.integers(WINDOW + 1, count - segment))
                scores = trained.score_series(quantity, inject(kind, values, start, segment, quantity, rng))
                # A score at index i belongs to reading i + WINDOW.
                idx = start + anomalous_readings(kind, segment) - WINDOW
                caught[kind].append(scores[idx] > trained.threshold)
    return {
        "held_out_seed": seed,
        "normal_flagged_rate": float(np.concatenate(normal_flags).mean()),
        "normal_readings": int(sum(len(f) for f in normal_flags)),
        "detection_rate": {kind: float(np.concatenate(f).mean()) for kind, f in caught.items()},
    }


def write_model_dir(trained: TrainedSensorModel, out: Path, plan: TrainingPlan = TrainingPlan(),
                    metrics: dict | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(export_openvino(trained.model), out / "model.xml", compress_to_fp16=False)
    metadata = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "kind": "tabular",
        "format": "openvino-ir",
        "input": {"name": "features", "shape": [-1, len(FEATURES)], "dtype": "f32"},
        "output": {"name": "score", "shape": [-1], "meaning": "Mahalanobis distance from normal"},
        "features": list(FEATURES),
        "window": WINDOW,
        "short_window": SHORT,
        "spread_floor": SPREAD_FLOOR,
        "threshold": trained.threshold,
        "threshold_rule": f"{THRESHOLD_PERCENTILE}th percentile of the training scores",
        "quantities": {q: asdict(s) for q, s in trained.scales.items()},
        "training": {
            "data": "synthetic normal indoor readings, one a minute per sensor: per-sensor base level, daily "
                    "cycle, AR(1) wander, white noise, rounded to the device resolution",
            "generator": {q: asdict(s) for q, s in SYNTHETIC_QUANTITIES.items()},
            **asdict(plan),
            "rows": int(len(trained.train_scores)),
            "score_percentiles": {str(p): float(np.percentile(trained.train_scores, p)) for p in (50, 90, 99, 99.9)},
        },
        "metrics": metrics if metrics is not None else evaluate(trained),
    }
    (out / "model.json").write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")
    return out


def ensure_sensor_anomaly_model(cache_dir: Path | None = None) -> Path:
    """Returns the model dir in the cache, training and exporting the model first if it is missing
    (a few seconds; deterministic, so every machine builds the same model)."""
    model_dir = sensor_anomaly_model_dir(cache_dir)  # where the service looks for it
    if not (model_dir / "model.json").is_file():
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        # Built aside and renamed into place: a crash mid-build never leaves a dir that looks finished. Two
        # processes building at once build the same bytes; the one that renames second just drops its copy.
        with tempfile.TemporaryDirectory(prefix=f".{model_dir.name}-", dir=model_dir.parent,
                                         ignore_cleanup_errors=True) as staging:
            write_model_dir(train(), Path(staging)).chmod(0o755)
            try:
                Path(staging).rename(model_dir)
            except OSError:
                if not (model_dir / "model.json").is_file():
                    raise
    return model_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train_cmd = commands.add_parser("train", help="train on synthetic normal readings and export to OpenVINO IR")
    train_cmd.add_argument("--out", type=Path, required=True, help="directory for model.xml/.bin and model.json")
    train_cmd.add_argument("--seed", type=int, default=TRAIN_SEED)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    plan = TrainingPlan(seed=args.seed)
    trained = train(plan)
    write_model_dir(trained, args.out, plan)
    metadata = json.loads((args.out / "model.json").read_text())
    print(json.dumps({"out": str(args.out), "threshold": trained.threshold, "metrics": metadata["metrics"],
                      "seconds": round(time.perf_counter() - started, 2)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
