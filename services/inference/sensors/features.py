"""The sensor anomaly model's features, shared by training (tools/sensor_anomaly_training.py) and live
scoring (scoring.py): sliding-window features per sensor, standardized per quantity.

Why these features (one row per reading, from the sensor's previous WINDOW readings and the reading itself):
- level: the value against the quantity's normal envelope learned in training (mean, std over all sensors and
  times of day). Catches drift and a value stuck far from normal, which a short window follows and so hides.
- deviation: the value's distance from the mean of the previous WINDOW readings, in units of their std
  (floored at the quantity's typical short-window spread, so a quiet window does not turn noise into a spike).
  The window excludes the reading, so a spike cannot inflate its own yardstick. Catches spikes and steps.
- rate: the change from the median of the previous RECENT readings, in units of its typical size for the
  quantity. Catches jumps, also when the window itself is already disturbed; the median keeps the reading
  after a spike from looking like a jump back.
- trend: the change per reading from the median of the window's first SHORT readings to the median of its last
  SHORT (the reading included), in the same units. A drifting sensor keeps moving one way for longer and
  faster than the daily cycle and the weather do: this sees a drift long before its offset leaves the normal
  envelope. Medians, not a least-squares slope, so a spike inside the window does not tilt it.
- spread: log of the typical absolute change between the last SHORT readings (the reading included; the two
  largest changes left out) over the quantity's typical one. A stuck sensor repeats one value, so its spread
  collapses to the floor; a noisy one (loose contact) raises it. Leaving out the largest changes keeps the
  readings after a spike from looking noisy.
Every scale is learned from the training data, never taken from the generator's parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODEL_NAME = "sensor-anomaly"
# The version results name. The cache dir also carries a hash of this file, so a cached build is never reused
# by changed code; bump this when the scores mean something new to consumers.
MODEL_VERSION = "1"
FEATURES = ("level", "deviation", "rate", "trend", "spread")
WINDOW = 24          # previous readings a reading is compared with
SHORT = 8            # readings (the current one included) whose spread tells a stuck or a noisy sensor
RECENT = 3           # readings before the current one whose median it is compared with for a jump
SPREAD_FLOOR = 0.01  # spread below 1% of the typical one counts as 1% (a stuck sensor's is exactly 0)


@dataclass(frozen=True)
class QuantityScales:
    """What normal looks like for one quantity, learned from the training readings."""

    unit: str
    mean: float         # of the values
    std: float          # of the values
    step: float         # std of change_from_recent
    short_spread: float  # median short_spread of SHORT consecutive readings
    # Each feature's mean and std over this quantity's training rows: features are standardized per quantity,
    # so one model serves quantities whose normal rows differ in shape (pressure's weather moves it more, in
    # noise widths, than a room's temperature moves).
    feature_mean: tuple[float, ...] = (0.0,) * len(FEATURES)
    feature_std: tuple[float, ...] = (1.0,) * len(FEATURES)


def change_from_recent(windows: np.ndarray) -> np.ndarray:
    """Per row of consecutive readings: the last one minus the median of the RECENT before it. A jump shows
    at once; the reading after a spike does not look like a jump back, as it would against the spike alone."""
    return windows[:, -1] - np.median(windows[:, -RECENT - 1:-1], axis=1)


def short_spread(windows: np.ndarray) -> np.ndarray:
    """Per row of [k, n] consecutive readings: the mean of the n - 3 smallest absolute changes from one
    reading to the next. Zero for a stuck sensor, high for a noisy one. A single spike makes two large changes,
    which are left out, so the readings after a spike do not look noisy; and a device's rounding repeating a
    value a few times is not yet a stuck sensor."""
    changes = np.sort(np.abs(np.diff(windows, axis=1)), axis=1)
    return changes[:, :windows.shape[1] - 3].mean(axis=1)


def window_features(windows: np.ndarray, scales: QuantityScales) -> np.ndarray:
    """Feature rows [k, len(FEATURES)] from windows [k, WINDOW + 1]: each row is a sensor's previous WINDOW
    readings followed by the reading scored. Used by training and by the live path alike."""
    windows = np.asarray(windows, np.float64)
    previous, current = windows[:, :WINDOW], windows[:, WINDOW]
    prev_std = np.maximum(previous.std(axis=1), scales.short_spread)
    spread = short_spread(windows[:, -SHORT:])
    rows = np.stack([
        (current - scales.mean) / scales.std,
        (current - previous.mean(axis=1)) / prev_std,
        change_from_recent(windows) / scales.step,
        (np.median(windows[:, -SHORT:], axis=1) - np.median(windows[:, :SHORT], axis=1))
        / (WINDOW + 1 - SHORT) / scales.step,
        np.log(np.maximum(spread / scales.short_spread, SPREAD_FLOOR)),
    ], axis=1)
    return (rows - np.asarray(scales.feature_mean)) / np.asarray(scales.feature_std)
