"""The sensor anomaly model: trained here on synthetic normal readings, it flags injected spikes, stuck values
and drift and rarely a normal reading; its OpenVINO IR scores as the numpy model does; training is
deterministic; the live path (per-sensor windows, batches on OpenVINO) gives the scores training gives."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from protos import events_pb2
from tools import sensor_anomaly_training as sa
from services.inference.sensors import scoring
from libs.common.envelope import new_envelope


@pytest.fixture(scope="module")
def trained() -> sa.TrainedSensorModel:
    return sa.train()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, trained):
    return sa.write_model_dir(trained, tmp_path_factory.mktemp("sensor-anomaly"))


@pytest.fixture(scope="module")
def scorer(model_dir) -> scoring.SensorAnomalyScorer:
    return scoring.SensorAnomalyScorer.load(model_dir)


def test_injected_spikes_stuck_values_and_drift_are_flagged_and_held_out_normal_readings_rarely(trained):
    # Sensors the model never saw (another seed): 24 per quantity, a day each, every anomaly kind in each.
    metrics = sa.evaluate(trained, seed=424242, sensors_per_quantity=24)
    assert metrics["normal_readings"] > 90_000
    # The threshold is the training scores' 99.9th percentile: about 0.1% of normal readings by construction.
    assert metrics["normal_flagged_rate"] < 0.004
    for kind in sa.ANOMALY_KINDS:
        assert metrics["detection_rate"][kind] >= 0.95, (kind, metrics)


def test_each_anomaly_kind_scores_far_above_the_normal_readings_around_it(trained):
    rng = np.random.default_rng(99)
    for quantity in sa.SYNTHETIC_QUANTITIES:
        values = sa.synthetic_series(rng, quantity, 400)[1]
        normal = trained.score_series(quantity, values)
        for kind in sa.ANOMALY_KINDS:
            scores = trained.score_series(quantity, sa.inject(kind, values, 200, 60, quantity, rng))
            abnormal = 200 + sa.anomalous_readings(kind, 60) - sa.WINDOW
            assert np.median(scores[abnormal]) > 1.5 * trained.threshold, (quantity, kind)
            # Before the anomaly nothing changed.
            assert np.array_equal(scores[:200 - sa.WINDOW], normal[:200 - sa.WINDOW])


def test_threshold_is_the_chosen_percentile_of_the_training_scores(trained):
    flagged = (trained.train_scores > trained.threshold).mean()
    assert 0.0009 < flagged < 0.0011


def test_openvino_ir_gives_the_numpy_models_scores(trained, scorer):
    rng = np.random.default_rng(3)
    values = sa.synthetic_series(rng, "humidity", 600)[1]
    rows = np.concatenate([trained.features("humidity", sa.inject("spike", values, 300, 60, "humidity", rng)),
                           rng.normal(0, 3, (500, len(sa.FEATURES)))])
    ir_scores, flags = scorer.score(rows)
    numpy_scores = trained.model.score(rows)
    assert ir_scores.shape == (len(rows),)
    np.testing.assert_allclose(ir_scores, numpy_scores, rtol=1e-4, atol=1e-4)
    near = np.abs(numpy_scores - trained.threshold) < 1e-3
    assert np.array_equal(flags[~near], (numpy_scores > trained.threshold)[~near])
    assert flags.any() and not flags.all()
    empty_scores, empty_flags = scorer.score(np.zeros((0, len(sa.FEATURES))))
    assert empty_scores.shape == (0,) and empty_flags.shape == (0,)


def test_training_is_deterministic_to_the_byte(tmp_path, trained):
    again = sa.train()
    assert again.threshold == trained.threshold
    assert np.array_equal(again.model.whitening, trained.model.whitening)
    first, second = sa.write_model_dir(trained, tmp_path / "a"), sa.write_model_dir(again, tmp_path / "b")
    for name in ("model.xml", "model.bin", "model.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    other_seed = sa.train(sa.TrainingPlan(seed=1))
    assert other_seed.threshold != trained.threshold


def test_training_takes_seconds_and_model_json_describes_the_model(model_dir):
    started = time.perf_counter()
    sa.train()
    assert time.perf_counter() - started < 10
    import json
    metadata = json.loads((model_dir / "model.json").read_text())
    assert metadata["name"] == "sensor-anomaly" and metadata["kind"] == "tabular"
    assert metadata["features"] == list(sa.FEATURES)
    assert metadata["training"]["seed"] == sa.TRAIN_SEED
    assert set(metadata["metrics"]["detection_rate"]) == set(sa.ANOMALY_KINDS)
    assert set(metadata["quantities"]) == set(sa.SYNTHETIC_QUANTITIES)


def test_ensure_builds_into_the_cache_once_and_the_cli_trains_by_hand(tmp_path, capsys):
    built = sa.ensure_sensor_anomaly_model(tmp_path)
    assert built.parent == tmp_path / "models" / "sensor-anomaly" and built.name.startswith(sa.MODEL_VERSION + "-")
    mtime = (built / "model.bin").stat().st_mtime_ns
    assert sa.ensure_sensor_anomaly_model(tmp_path) == built
    assert (built / "model.bin").stat().st_mtime_ns == mtime
    assert sa.main(["train", "--out", str(tmp_path / "by-hand")]) == 0
    assert (tmp_path / "by-hand" / "model.bin").read_bytes() == (built / "model.bin").read_bytes()
    assert '"threshold"' in capsys.readouterr().out


def reading(sensor_id: str, quantity: str, value: float, t_s: float, event_id: str | None = None):
    unit = sa.SYNTHETIC_QUANTITIES[quantity].unit if quantity in sa.SYNTHETIC_QUANTITIES else "x"
    return events_pb2.SensorReading(
        envelope=new_envelope(f"sensor/{sensor_id}", "device", event_time_ns=int(t_s * 1e9), event_id=event_id),
        sensor_id=sensor_id, quantity=quantity, value=value, unit=unit)


def test_live_path_scores_each_sensors_readings_as_training_does_batched_across_sensors(trained, scorer):
    rng = np.random.default_rng(11)
    series = {
        "t-1": ("temperature", sa.inject("spike", sa.synthetic_series(rng, "temperature", 120)[1], 80, 1,
                                         "temperature", rng)),
        "h-1": ("humidity", sa.synthetic_series(rng, "humidity", 120)[1]),
    }
    live = scoring.SensorReadingScorer(scorer)
    t0 = 1_700_000_000.0
    # Interleaved across sensors, in batches of 16 readings, as they come from Kafka.
    stream = [reading(sid, q, float(v[i]), t0 + 60 * i) for i in range(120) for sid, (q, v) in series.items()]
    outcomes = [o for start in range(0, len(stream), 16) for o in live.run(stream[start:start + 16])]
    for sid, (quantity, values) in series.items():
        mine = [o for r, o in zip(stream, outcomes) if r.sensor_id == sid]
        assert mine[:sa.WINDOW] == ["warming_up"] * sa.WINDOW
        results = mine[sa.WINDOW:]
        np.testing.assert_allclose([r.score for r in results], trained.score_series(quantity, values),
                                   rtol=1e-4, atol=1e-4)
        assert all(r.sensor_id == sid and r.quantity == quantity and r.threshold == pytest.approx(scorer.threshold)
                   for r in results)
    spike = next(o for r, o in zip(stream, outcomes) if r.sensor_id == "t-1" and r.value == series["t-1"][1][80])
    assert spike.anomaly and abs(spike.features["rate"]) > 5 and spike.reading_event_id
    assert spike.model.name == "sensor-anomaly" and set(spike.stage_latency_ms) == {"features", "infer"}
    normal = [o for o in outcomes if not isinstance(o, str) and o is not spike]
    assert not any(o.anomaly for o in normal)


def test_a_replayed_reading_gets_the_same_result_id_and_the_window_skips_it(scorer):
    first, again = scoring.SensorReadingScorer(scorer), scoring.SensorReadingScorer(scorer)
    readings = [reading("p-1", "pressure", 1013.0 + 0.05 * math.sin(i), 1e9 + 60 * i, event_id=f"r{i}")
                for i in range(sa.WINDOW + 3)]
    a, b = first.run(readings), again.run(readings)
    assert [x.envelope.event_id for x in a[sa.WINDOW:]] == [x.envelope.event_id for x in b[sa.WINDOW:]]
    assert a[-1].envelope.trace_id == readings[-1].envelope.trace_id
    assert a[-1].envelope.event_id != readings[-1].envelope.event_id
    # Delivered again to the same process (at least once): not newer than the sensor's last reading.
    assert first.run(readings[-2:]) == ["out_of_order", "out_of_order"]


def test_readings_handled_before_a_restart_warm_the_windows_and_the_next_reading_scores_as_without_it(scorer):
    readings = [reading("p-2", "pressure", 1013.0 + 0.05 * math.sin(i), 1e9 + 60 * i, event_id=f"w{i}")
                for i in range(sa.WINDOW + 5)]
    never_restarted = scoring.SensorReadingScorer(scorer).run(readings)
    restarted = scoring.SensorReadingScorer(scorer)
    invalid = reading("p-2", "pressure", math.nan, 1e9 + 60 * 3)
    assert restarted.warm([*readings[:-1], invalid]) == len(readings) - 1, "what cannot be scored is left out"
    assert restarted.warm(readings[:-1]) == 0, "a reading already in the window is not added twice"
    [result] = restarted.run(readings[-1:])
    assert result.envelope.event_id == never_restarted[-1].envelope.event_id
    assert result.score == pytest.approx(never_restarted[-1].score)


def test_readings_that_cannot_be_scored_are_told_apart_from_those_that_are_not_scored_yet(scorer):
    live = scoring.SensorReadingScorer(scorer)
    no_unit = reading("t-9", "temperature", 20.0, 1e9)
    no_unit.ClearField("unit")
    no_time = reading("t-9", "temperature", 20.0, 1e9)
    no_time.envelope.ClearField("event_time")
    wrong_unit = reading("t-9", "temperature", 20.0, 1e9)
    wrong_unit.unit = "K"
    outcomes = live.run([no_unit, no_time, reading("t-9", "temperature", math.nan, 1e9),
                         reading("v-1", "vibration", 1.0, 1e9), wrong_unit, reading("t-9", "temperature", 20.0, 1e9)])
    assert [o.reason if isinstance(o, scoring.InvalidReading) else o for o in outcomes] == [
        "missing_field", "missing_field", "not_finite", "unknown_quantity", "unit_mismatch", "warming_up"]
    assert "unit" in outcomes[0].detail and "event_time" in outcomes[1].detail


def test_a_long_gap_starts_the_sensors_window_again_and_old_sensors_are_forgotten(trained):
    windows = scoring.SensorWindows(trained.scales, max_gap_s=600, max_sensors=2)
    for i in range(sa.WINDOW):
        assert windows.add("t-1", "temperature", "°C", 20.0 + 0.01 * (i % 3), int(60e9 * i)).skipped == "warming_up"
    assert windows.add("t-1", "temperature", "°C", 20.0, int(60e9 * sa.WINDOW)).features is not None
    assert windows.add("t-1", "temperature", "°C", 20.0, int(60e9 * sa.WINDOW + 601e9)).skipped == "warming_up"
    windows.add("t-2", "temperature", "°C", 20.0, 0)
    windows.add("t-3", "temperature", "°C", 20.0, 0)
    assert len(windows) == 2
    # t-1 was the least recently seen: forgotten, so its next reading is not out of order but a new start.
    assert windows.add("t-1", "temperature", "°C", 20.0, 1).skipped == "warming_up"


class KafkaMessage:
    """The two things the handler reads of a confluent_kafka Message."""

    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value


def test_the_kafka_handler_keys_results_by_sensor_and_dead_letters_what_is_not_a_reading(scorer):
    from libs.common.kafka import Outbound, Rejected
    from libs.common.topics import INFERENCE_SENSORS
    from services.inference.sensors.kafka_adapter import sensor_batch_handler

    handle = sensor_batch_handler(scoring.SensorReadingScorer(scorer))
    warm_up = [KafkaMessage(reading("t-7", "temperature", 20.0 + 0.1 * (i % 2), 1e9 + 60 * i).SerializeToString())
               for i in range(sa.WINDOW)]
    assert handle(warm_up) == [[]] * sa.WINDOW, "readings that fill the window produce nothing"
    nan = reading("t-7", "temperature", math.nan, 1e9 + 60 * sa.WINDOW)
    outcomes = handle([KafkaMessage(b"\xff\xfe not a reading"), KafkaMessage(nan.SerializeToString()),
                       KafkaMessage(reading("t-7", "temperature", 20.05, 1e9 + 60 * sa.WINDOW).SerializeToString())])
    assert isinstance(outcomes[0], Rejected) and outcomes[0].reason == "malformed_event"
    assert isinstance(outcomes[1], Rejected) and outcomes[1].reason == "not_finite"
    [out] = outcomes[2]
    assert isinstance(out, Outbound) and out.topic == INFERENCE_SENSORS and out.key == b"t-7"
    result = events_pb2.SensorAnomalyResult.FromString(out.value)
    assert result.sensor_id == "t-7" and result.value == 20.05 and not result.anomaly


def test_a_sensor_model_that_cannot_load_stops_the_service_and_makes_it_exit_non_zero(tmp_path):
    import threading

    from libs.common.ops import Health
    from libs.common.service import ServiceRuntime
    from libs.common.settings import KafkaSettings
    from services.inference.sensors.kafka_adapter import sensor_path_task
    from services.inference.settings import InferenceSettings

    class Ops:
        def stop(self) -> None:
            pass

    runtime = ServiceRuntime("inference", Health(), Ops(), threading.Event(), shutdown_timeout_s=10)
    settings = InferenceSettings(sensor_model_dir=tmp_path / "no-model-here")
    runtime.start_task("sensor-path", sensor_path_task(settings, KafkaSettings(create_topics=False), runtime.health))
    assert runtime.stop.wait(10), "the service is told to stop"
    assert runtime.run() == 1
    ok, report = runtime.health.evaluate(runtime.health.readiness)
    assert not ok and report["sensor_model_ready"]["detail"] == "not yet: sensor anomaly model loaded"
    assert sensor_path_task(InferenceSettings(consume_sensors=False), KafkaSettings(), Health()) is None
