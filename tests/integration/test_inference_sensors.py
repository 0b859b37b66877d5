"""The sensor path of the inference service on the session stack: readings on vigil.sensors are scored by the
sensor anomaly model (trained into the cache at start, run on OpenVINO), one SensorAnomalyResult per reading
on vigil.inference.sensors once the sensor's window is full; normal readings pass unflagged, a spike is
flagged, and a message that is not a reading lands on vigil.dlq with its reason."""
from __future__ import annotations

import json
import math
import time
import urllib.request
import uuid

import numpy as np
import pytest

from libs.common.envelope import new_envelope
from libs.common.kafka import DLQ_ORIGIN_TOPIC, DLQ_REASON, DLQ_SERVICE
from libs.common.topics import DLQ, INFERENCE_SENSORS, SENSORS
from protos import events_pb2
from tools import sensor_anomaly_training as sa
from tests.integration.conftest import query, wait_for
from tests.integration.kafka_tools import end_offsets, produce
from tests.integration.test_sensor_ingest import messages_since

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]
NORMAL_READINGS = sa.WINDOW + 16
SEED = 2026  # a normal series whose scores stay well below the threshold (checked below, before sending)


def reading(sensor_id: str, value: float, event_time_s: float) -> events_pb2.SensorReading:
    return events_pb2.SensorReading(
        envelope=new_envelope(f"sensor/{sensor_id}", "device", event_time_ns=int(event_time_s * 1e9)),
        sensor_id=sensor_id, quantity="temperature", value=value, unit="°C")


def test_normal_readings_pass_unflagged_a_spike_is_flagged_and_garbage_is_dead_lettered(stack):
    bootstrap = stack.config.kafka_bootstrap
    sensor = f"t-anomaly-{RUN}"
    values = sa.synthetic_series(np.random.default_rng(SEED), "temperature", NORMAL_READINGS)[1]
    trained = sa.train()
    assert trained.score_series("temperature", values).max() < 0.8 * trained.threshold, "pick another SEED"
    spike = float(values[-1] + 25 * sa.SYNTHETIC_QUANTITIES["temperature"].noise)
    now = time.time()
    readings = [reading(sensor, float(v), now - 60 * (NORMAL_READINGS - i)) for i, v in enumerate(values)]
    readings.append(reading(sensor, spike, now))
    garbage_key, nan_key = f"garbage-{RUN}".encode(), f"nan-{RUN}".encode()
    nan_reading = reading(f"nan-{RUN}", math.nan, now)

    results_start, dlq_start = end_offsets(bootstrap, INFERENCE_SENSORS), end_offsets(bootstrap, DLQ)
    produce(bootstrap, SENSORS, [(sensor.encode(), r.SerializeToString()) for r in readings]
            + [(garbage_key, b"\xff\xfe not a reading"), (nan_key, nan_reading.SerializeToString())])

    expected = len(readings) - sa.WINDOW  # the first WINDOW readings fill the window, unscored
    messages = messages_since(stack, INFERENCE_SENSORS, results_start, {sensor.encode()}, expected)
    results = [events_pb2.SensorAnomalyResult.FromString(m.value()) for m in messages]
    assert len(results) == expected
    assert [r.reading_event_id for r in results] == [r.envelope.event_id for r in readings[sa.WINDOW:]], \
        "one result per scored reading, in the sensor's order"
    *normal, flagged = results
    assert not any(r.anomaly for r in normal), [(r.value, r.score) for r in normal if r.anomaly]
    assert flagged.anomaly and flagged.value == spike and flagged.score > flagged.threshold
    assert all(r.score < r.threshold for r in normal)
    assert flagged.model.name == "sensor-anomaly" and flagged.unit == "°C" and flagged.quantity == "temperature"
    assert flagged.envelope.trace_id == readings[-1].envelope.trace_id
    assert flagged.envelope.event_id != readings[-1].envelope.event_id and flagged.envelope.producer == "inference"
    # The live scores are the model's own: the same as the numpy model trained here gives.
    np.testing.assert_allclose([r.score for r in results],
                               trained.score_series("temperature", np.append(values, spike)), rtol=1e-3)

    # The metrics sink stores every scored reading; the named query lists the flagged one.
    wait_for(lambda: query(stack, f"SELECT count() AS n FROM sensor_anomalies WHERE sensor_id = '{sensor}'")[0]["n"]
             == expected, 30, what="the scored readings in the store")
    stored = query(stack, f"SELECT value, anomaly FROM sensor_anomalies WHERE sensor_id = '{sensor}' AND anomaly")
    assert stored == [{"value": spike, "anomaly": True}]

    letters = {m.key(): m for m in messages_since(stack, DLQ, dlq_start, {garbage_key, nan_key}, 2)}
    garbage, nan = dict(letters[garbage_key].headers()), dict(letters[nan_key].headers())
    assert garbage[DLQ_REASON] == b"malformed_event" and nan[DLQ_REASON] == b"not_finite"
    assert garbage[DLQ_ORIGIN_TOPIC] == SENSORS.encode() and garbage[DLQ_SERVICE] == b"inference-sensors"
    assert letters[garbage_key].value() == b"\xff\xfe not a reading", "a dead letter keeps the original bytes"


def test_after_a_restart_a_sensor_whose_window_was_full_is_scored_from_its_next_reading(stack):
    """The windows live in memory; the restarted service refills them from the readings already in Kafka."""
    bootstrap = stack.config.kafka_bootstrap
    sensor = f"t-restart-{RUN}"
    values = sa.synthetic_series(np.random.default_rng(SEED + 1), "temperature", sa.WINDOW + 3)[1]
    now = time.time()
    readings = [reading(sensor, float(v), now - 60 * (len(values) - i)) for i, v in enumerate(values)]
    before, after = readings[:-1], readings[-1]
    start = end_offsets(bootstrap, INFERENCE_SENSORS)
    produce(bootstrap, SENSORS, [(sensor.encode(), r.SerializeToString()) for r in before])
    messages_since(stack, INFERENCE_SENSORS, start, {sensor.encode()}, len(before) - sa.WINDOW)

    stack.supervisor.stop("inference", progress=lambda *_: None)
    stack.supervisor.up(progress=lambda *_: None)
    start = end_offsets(bootstrap, INFERENCE_SENSORS)
    produce(bootstrap, SENSORS, [(sensor.encode(), after.SerializeToString())])
    [message] = messages_since(stack, INFERENCE_SENSORS, start, {sensor.encode()}, 1)
    result = events_pb2.SensorAnomalyResult.FromString(message.value())
    assert result.reading_event_id == after.envelope.event_id
    # Scored on the window of the readings before the restart: the same score the numpy model gives the series.
    np.testing.assert_allclose(result.score, sa.train().score_series("temperature", values)[-1], rtol=1e-3)


def test_readiness_reports_the_sensor_model_loaded(stack):
    url = f"http://127.0.0.1:{stack.config.ports.inference_ops}/readyz"
    with urllib.request.urlopen(url, timeout=5) as response:
        checks = json.loads(response.read())["checks"]
    assert checks["sensor_model_ready"]["ok"], checks
