"""Tumbling windows per key: bounded accumulation, closing by event time and by the clock, late events, state
saved and restored, and the comparison of a closed window with its reference ("insufficient data" when thin)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from services.drift.features import InferenceOutput, record_inference, record_sensor_reading
from services.drift.samples import Reservoir, Sample, merge_samples
from services.drift.windows import (
    ClosedWindow, ComparisonPolicy, DriftKey, TumblingWindows, WindowAccumulator, compare_window)

LOBBY = DriftKey("camera/lobby", "yolov3-tiny", "1")


def feed(windows, key, times, values):
    for t, v in zip(times, values):
        window = windows.window_for(key, t)
        if window is not None:
            record_sensor_reading(window, v)


def test_windows_are_aligned_on_the_epoch_and_close_when_an_event_passes_their_end():
    windows = TumblingWindows(size_s=60)
    feed(windows, LOBBY, [125.0, 130.0, 179.9], [1, 2, 3])
    assert windows.take_closed() == []
    feed(windows, LOBBY, [180.0], [4])
    (closed,) = windows.take_closed()
    assert (closed.start, closed.end, closed.summary.frames) == (120.0, 180.0, 3)
    assert sorted(closed.summary.numeric["sensor.value"].values) == [1, 2, 3]


def test_keys_have_their_own_windows():
    windows = TumblingWindows(size_s=10)
    other = DriftKey("camera/gate", "yolov3-tiny", "1")
    feed(windows, LOBBY, [1, 2, 3], [1, 1, 1])
    feed(windows, other, [5, 15], [2, 2])
    (closed,) = windows.take_closed()
    assert closed.key == other and closed.summary.frames == 1
    assert LOBBY in windows.open


def test_a_late_event_is_counted_and_dropped_but_grace_keeps_a_slightly_late_one():
    windows = TumblingWindows(size_s=10, grace_s=2)
    feed(windows, LOBBY, [5, 11, 9], [1, 1, 1])  # 9 is within the grace of [0, 10)
    assert windows.take_closed() == [] and windows.late_events == 0
    feed(windows, LOBBY, [12.5, 8], [1, 1])  # 12.5 closes [0, 10); 8 is then late
    (closed,) = windows.take_closed()
    assert closed.summary.frames == 2 and windows.late_events == 1


def test_an_idle_key_is_closed_by_the_clock():
    windows = TumblingWindows(size_s=60)
    feed(windows, LOBBY, [10.0], [1])
    windows.close_idle(59.0)
    assert windows.take_closed() == []
    windows.close_idle(60.0)
    assert [w.summary.frames for w in windows.take_closed()] == [1]
    assert LOBBY not in windows.open


def test_a_reservoir_stays_bounded_and_uniform():
    pooled = []
    for seed in range(10):  # ten reservoirs: one sample's mean wanders by ~2% (its standard error, 900 of 50,000)
        reservoir = Reservoir(1000, seed=seed)
        reservoir.extend(range(100_000))
        sample = reservoir.sample()
        assert len(sample) == 1000 and sample.seen == 100_000
        pooled.append(sample.values)
    assert np.mean(pooled) == pytest.approx(50_000, rel=0.02)  # not the first 1,000
    assert np.quantile(pooled, 0.9) == pytest.approx(90_000, rel=0.02)


def test_a_reservoir_fed_in_batches_samples_as_one_fed_value_by_value_and_restores_mid_stream():
    one_by_one, batched = Reservoir(50, seed=9), Reservoir(50, seed=9)
    for value in range(5000):
        one_by_one.add(value)
    for first in range(0, 2500, 7):
        batched.extend(list(range(first, min(first + 7, 2500))))
    batched = Reservoir.from_state(json.loads(json.dumps(batched.to_state())))
    batched.extend(list(range(2500, 5000)))
    assert np.array_equal(batched.values, one_by_one.values) and batched.seen == 5000


def test_merged_samples_weigh_each_part_by_what_it_stands_for():
    many = Sample(np.zeros(100, np.float32), 9000)  # 100 values standing for 9,000
    few = Sample(np.ones(100, np.float32), 1000)
    merged = merge_samples([many, few], capacity=100, seed=1)
    assert len(merged) == 100 and merged.seen == 10_000
    assert merged.values.mean() == pytest.approx(0.1, abs=0.02)


def test_window_state_round_trips_through_json_and_samples_on_as_before():
    window = WindowAccumulator(LOBBY, 0.0, 60.0, numeric_capacity=50, embedding_capacity=5)
    rng = np.random.default_rng(0)
    output = InferenceOutput(["person", "car"], [0.9, 0.4], [(0, 0, 10, 20), (5, 5, 30, 15)], 640, 480,
                             embedding=[0.5] * 8)
    for _ in range(100):
        record_inference(window, output)
        window.add_number("input.mean_luma", float(rng.normal()))
    restored = WindowAccumulator.from_state(json.loads(json.dumps(window.to_state())))
    for w in (window, restored):
        for value in range(100, 200):
            w.add_number("input.mean_luma", float(value))
    a, b = window.summary(), restored.summary()
    assert np.array_equal(a.numeric["input.mean_luma"].values, b.numeric["input.mean_luma"].values)
    assert a.categorical == b.categorical and a.totals == b.totals and a.frames == b.frames == 100
    assert b.embeddings.values.shape == (5, 8)


def test_a_restored_open_window_closes_as_it_would_have():
    windows = TumblingWindows(size_s=60)
    feed(windows, LOBBY, [10.0, 20.0], [1, 2])
    state = json.dumps(windows.open[LOBBY][0.0].to_state())
    after_restart = TumblingWindows(size_s=60)
    after_restart.restore(LOBBY, [WindowAccumulator.from_state(json.loads(state))], windows.closed_until(LOBBY))
    feed(after_restart, LOBBY, [30.0, 61.0], [3, 4])
    (closed,) = after_restart.take_closed()
    assert sorted(closed.summary.numeric["sensor.value"].values) == [1, 2, 3]


def test_events_replayed_after_a_restart_do_not_reopen_a_closed_window():
    windows = TumblingWindows(size_s=60)
    feed(windows, LOBBY, [10.0, 70.0], [1, 2])
    assert len(windows.take_closed()) == 1
    saved = [json.dumps(w.to_state()) for w in windows.open[LOBBY].values()]
    after_restart = TumblingWindows(size_s=60)
    after_restart.restore(LOBBY, [WindowAccumulator.from_state(json.loads(s)) for s in saved],
                          windows.closed_until(LOBBY))
    feed(after_restart, LOBBY, [10.0, 70.0, 130.0], [1, 2, 3])  # replayed from before the commit
    (closed,) = after_restart.take_closed()
    assert closed.start == 60.0 and after_restart.late_events == 1


def window_of(values, key=LOBBY, start=0.0):
    window = WindowAccumulator(key, start, start + 60)
    for v in values:
        record_sensor_reading(window, v)
    return ClosedWindow(key, start, start + 60, window.summary())


def test_a_window_with_too_few_frames_is_insufficient_data_never_drift():
    rng = np.random.default_rng(1)
    reference = window_of(rng.normal(size=500)).summary
    thin = window_of(rng.normal(50, 1, size=10))  # wildly shifted, but only 10 frames
    verdict = compare_window(thin, reference, ComparisonPolicy(min_frames=30))
    assert verdict.status == "insufficient_data" and not verdict.drifted and verdict.results == ()


def test_a_window_without_a_reference_yet_is_not_compared():
    verdict = compare_window(window_of(np.zeros(100)), None)
    assert verdict.status == "no_reference" and not verdict.drifted


def test_a_window_like_its_reference_is_clean_and_a_shifted_one_drifts():
    rng = np.random.default_rng(2)
    reference = window_of(rng.normal(size=600)).summary
    same = compare_window(window_of(rng.normal(size=300)), reference)
    shifted = compare_window(window_of(rng.normal(1, 1, size=300)), reference)
    assert same.status == "compared" and not same.drifted
    assert shifted.drifted and shifted.top()[0].feature == "sensor.value" and shifted.top()[0].metric == "ks"


def test_window_size_and_grace_are_checked():
    with pytest.raises(ValueError):
        TumblingWindows(size_s=10, grace_s=10)
    assert DriftKey.parse(str(LOBBY)) == LOBBY
    assert DriftKey.parse("sensor/t-17") == DriftKey("sensor/t-17")


def test_the_tests_of_a_window_share_alpha_so_a_dozen_features_do_not_multiply_false_alarms():
    rng = np.random.default_rng(5)

    def many_features(shift=0.0):
        window = WindowAccumulator(LOBBY, 0, 60)
        for _ in range(300):
            window.add_frame()
            for f in range(10):
                window.add_number(f"input.f{f}", float(rng.normal(shift)))
        return ClosedWindow(LOBBY, 0, 60, window.summary())

    reference = many_features().summary
    corrected = compare_window(many_features(), reference)
    uncorrected = compare_window(many_features(), reference, ComparisonPolicy(bonferroni=False))
    assert {r.metric for r in corrected.results} == {"ks"}
    # each KS threshold is its critical value at 0.05 / 10 tests, above the uncorrected one at 0.05
    assert all(c.threshold > u.threshold for c, u in zip(corrected.results, uncorrected.results))
    assert compare_window(many_features(shift=0.5), reference).drifted
