"""Sensor ingest on real Kafka: readings in protobuf or JSON, from Kafka or HTTP, are validated against the
registry; good ones reach vigil.sensors unchanged, bad ones reach vigil.dlq with their reason; the registry is
changed with the `vigil sensors` command and takes effect within seconds. Sensor ingest runs on its own
(python -m services.ingest.sensors) against the session stack's Kafka, and must stop cleanly on SIGTERM."""
from __future__ import annotations

import calendar
import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from cli.stack.component import ComponentSpec
from libs.common.envelope import new_envelope
from libs.common.kafka import DLQ_ERROR, DLQ_ORIGIN_TOPIC, DLQ_REASON, DLQ_SERVICE
from libs.common.topics import DLQ, SENSORS, SENSORS_RAW
from protos import events_pb2
from services.ingest.sensors.json_readings import SCHEMA
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import end_offsets, produce, read_range
from tests.integration.stack_process import free_ports, running

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]
SENSOR = f"t-{RUN}"  # registered before sensor ingest starts: -40..125 °C


def vigil(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "--state-dir", str(stack.paths.state), *args],
                          capture_output=True, text=True, timeout=60)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


@pytest.fixture(scope="module")
def sensor_ingest(stack, tmp_path_factory):
    added = vigil(stack, "sensors", "add", SENSOR, "--quantity", "temperature", "--unit", "°C",
                  "--min", "-40", "--max", "125")
    assert added.returncode == 0, added.stderr
    ops_port, http_port = free_ports(2)
    spec = ComponentSpec(
        name="sensor-ingest", argv=[sys.executable, "-m", "services.ingest.sensors"],
        healthy=lambda: http_ok(f"http://127.0.0.1:{ops_port}/readyz"),
        env={"VIGIL_KAFKA_BOOTSTRAP_SERVERS": stack.config.kafka_bootstrap, "VIGIL_INGEST_OPS_PORT": str(ops_port),
             "VIGIL_INGEST_SENSORS_HTTP_PORT": str(http_port)},
    )
    with running(spec, tmp_path_factory.mktemp("sensor-ingest-logs")) as component:
        component.http_url = f"http://127.0.0.1:{http_port}"
        yield component
    assert component.returncode == 0, f"unclean shutdown:\n{component.log_tail()}"


def reading(sensor_id=SENSOR, value=21.5, unit="°C", quantity="temperature", age_s=1.0) -> events_pb2.SensorReading:
    return events_pb2.SensorReading(
        envelope=new_envelope(f"sensor/{sensor_id}", "device", event_time_ns=time.time_ns() - int(age_s * 1e9)),
        sensor_id=sensor_id, quantity=quantity, value=value, unit=unit)


def json_reading(sensor_id=SENSOR, **fields) -> dict:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"sensor_id": sensor_id, "quantity": "temperature", "value": 20.0, "unit": "°C", "event_time": now,
            **fields}


def messages_since(stack, topic: str, start: dict[int, int], keys: set[bytes], count: int, timeout_s: float = 60):
    """The messages with these keys that arrived on `topic` since `start`, once there are `count` of them."""
    bootstrap = stack.config.kafka_bootstrap

    def arrived():
        found = [m for m in read_range(bootstrap, topic, start, end_offsets(bootstrap, topic)) if m.key() in keys]
        return found if len(found) >= count else None

    return wait_for(arrived, timeout_s, what=f"{count} messages on {topic}")


def test_invalid_readings_are_dead_lettered_with_their_reason_and_valid_ones_pass_unchanged(stack, sensor_ingest):
    bootstrap = stack.config.kafka_bootstrap
    good = reading()
    missing_unit = reading()
    missing_unit.ClearField("unit")
    bad = {
        b"unknown-sensor": reading(sensor_id=f"nobody-{RUN}").SerializeToString(),
        b"missing-field": missing_unit.SerializeToString(),
        b"unit-mismatch": reading(unit="degF", value=70).SerializeToString(),
        b"quantity-mismatch": reading(quantity="humidity").SerializeToString(),
        b"nan": reading(value=math.nan).SerializeToString(),
        b"infinity": reading(value=-math.inf).SerializeToString(),
        b"out-of-range": reading(value=126).SerializeToString(),
        b"from-the-future": reading(age_s=-3600).SerializeToString(),
        b"too-old": reading(age_s=2 * 86400).SerializeToString(),
        b"not-protobuf": b"\xff\xfe\xfd garbage",
        b"json-schema": json.dumps(json_reading(value="hot")).encode(),
        b"json-nan": json.dumps(json_reading(value=math.nan)).encode(),
        b"json-broken": b'{"sensor_id": ',
    }
    expected_reasons = {
        b"unknown-sensor": "unknown_sensor", b"missing-field": "missing_field", b"unit-mismatch": "unit_mismatch",
        b"quantity-mismatch": "quantity_mismatch", b"nan": "not_finite", b"infinity": "not_finite",
        b"out-of-range": "out_of_range", b"from-the-future": "event_time_in_future", b"too-old": "event_time_too_old",
        b"not-protobuf": "malformed_event", b"json-schema": "schema_violation", b"json-nan": "not_finite",
        b"json-broken": "malformed_json",
    }
    good_json = json_reading(event_id=f"device-{RUN}-1", value=-12.25, labels={"room": "cold store"})
    dlq_start, sensors_start = end_offsets(bootstrap, DLQ), end_offsets(bootstrap, SENSORS)
    produce(bootstrap, SENSORS_RAW, [(SENSOR.encode(), good.SerializeToString()),
                                     (SENSOR.encode(), json.dumps(good_json).encode()),
                                     *bad.items()])

    letters = {m.key(): m for m in messages_since(stack, DLQ, dlq_start, set(bad), len(bad))}
    reasons = {key: dict(m.headers())[DLQ_REASON].decode() for key, m in letters.items()}
    assert reasons == expected_reasons
    for key, letter in letters.items():
        headers = dict(letter.headers())
        assert letter.value() == bad[key], "a dead letter keeps the original bytes"
        assert headers[DLQ_ORIGIN_TOPIC] == SENSORS_RAW.encode()
        assert headers[DLQ_SERVICE] == b"ingest-sensors"
        assert headers[DLQ_ERROR], "a dead letter says what exactly was wrong"
    assert b"[-40, 125]" in dict(letters[b"out-of-range"].headers())[DLQ_ERROR]
    assert b"'degF'" in dict(letters[b"unit-mismatch"].headers())[DLQ_ERROR]

    passed = messages_since(stack, SENSORS, sensors_start, {SENSOR.encode()}, 2)
    assert len(passed) == 2, "only the two good readings pass"
    by_id = {events_pb2.SensorReading.FromString(m.value()).envelope.event_id: m for m in passed}
    assert by_id[good.envelope.event_id].value() == good.SerializeToString(), "protobuf passes byte for byte"
    converted = events_pb2.SensorReading.FromString(by_id[good_json["event_id"]].value())
    assert (converted.sensor_id, converted.quantity, converted.value, converted.unit) == (SENSOR, "temperature",
                                                                                          -12.25, "°C")
    assert dict(converted.labels) == {"room": "cold store"}
    assert converted.envelope.event_time.ToSeconds() == calendar.timegm(
        time.strptime(good_json["event_time"], "%Y-%m-%dT%H:%M:%SZ"))
    assert converted.envelope.ingest_time.seconds > 0 and converted.envelope.producer == "ingest"


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_an_http_batch_answers_schema_errors_at_once_and_validates_the_rest_like_kafka_input(stack, sensor_ingest):
    bootstrap = stack.config.kafka_bootstrap
    url = f"{sensor_ingest.http_url}/api/sensors/readings"
    dlq_start, sensors_start = end_offsets(bootstrap, DLQ), end_offsets(bootstrap, SENSORS)
    batch = [
        json_reading(event_id=f"http-{RUN}-good", value=4.5),
        json_reading(value=1.0, unit=None),  # schema: no unit
        json_reading(value=1000.0),  # well formed, out of range: only validation can tell
        json_reading(value=5.5),  # no event id: the endpoint gives one and answers with it
    ]
    batch[1].pop("unit")
    status, answer = post(url, json.dumps(batch).encode())

    assert status == 200, answer
    assert [r["index"] for r in answer["rejected"]] == [1]
    assert answer["rejected"][0]["reason"] == "schema_violation" and "unit" in answer["rejected"][0]["detail"]
    assert [a["index"] for a in answer["accepted"]] == [0, 2, 3] and answer["undelivered"] == []
    event_ids = [a["event_id"] for a in answer["accepted"]]
    assert event_ids[0] == f"http-{RUN}-good"

    # Acknowledged means already in Kafka: the raw readings are there at once, no waiting.
    passed = messages_since(stack, SENSORS, sensors_start, {SENSOR.encode()}, 2)
    assert {events_pb2.SensorReading.FromString(m.value()).envelope.event_id for m in passed} == {
        event_ids[0], event_ids[2]}
    [letter] = messages_since(stack, DLQ, dlq_start, {SENSOR.encode()}, 1)
    assert dict(letter.headers())[DLQ_REASON] == b"out_of_range"
    assert events_pb2.SensorReading.FromString(letter.value()).envelope.event_id == event_ids[1]


def test_the_http_endpoint_refuses_what_is_not_a_batch_and_publishes_its_schema(sensor_ingest):
    url = f"{sensor_ingest.http_url}/api/sensors/readings"
    assert post(url, b"{not json")[0] == 400
    status, answer = post(url, json.dumps(json_reading()).encode())  # one object, not an array
    assert status == 400 and "array" in answer["error"]
    with urllib.request.urlopen(f"{sensor_ingest.http_url}/api/sensors/schema", timeout=5) as response:
        assert json.loads(response.read()) == SCHEMA


def test_a_sensor_added_with_the_cli_is_accepted_within_seconds_and_a_removed_one_rejected(stack, sensor_ingest):
    bootstrap = stack.config.kafka_bootstrap
    sensor = f"h-{RUN}"

    def send_until(topic: str, reason: bytes | None, timeout_s: float) -> float:
        """Sends a reading of the sensor every 0.25 s until one lands on `topic` (with `reason` for the DLQ);
        returns how long that took."""
        start, began = end_offsets(bootstrap, topic), time.monotonic()
        while time.monotonic() - began < timeout_s:
            produce(bootstrap, SENSORS_RAW, [(sensor.encode(), reading(sensor, 55.0, "%", "humidity")
                                              .SerializeToString())])
            landed = [m for m in read_range(bootstrap, topic, start, end_offsets(bootstrap, topic))
                      if m.key() == sensor.encode()
                      and (reason is None or dict(m.headers()).get(DLQ_REASON) == reason)]
            if landed:
                return time.monotonic() - began
            time.sleep(0.25)
        raise AssertionError(f"no reading of {sensor} on {topic} within {timeout_s}s")

    send_until(DLQ, b"unknown_sensor", 30)  # not registered yet
    added = vigil(stack, "sensors", "add", sensor, "--quantity", "humidity", "--unit", "%", "--min", "0",
                  "--max", "100", "--description", "cold store humidity")
    assert added.returncode == 0, added.stderr
    assert send_until(SENSORS, None, 30) < 10

    listed = vigil(stack, "sensors", "list", "--json")
    definitions = {d["sensor_id"]: d for d in map(json.loads, listed.stdout.splitlines())}
    assert definitions[sensor]["unit"] == "%" and definitions[sensor]["max_value"] == 100
    assert definitions[sensor]["updated_by"].startswith("cli/")

    removed = vigil(stack, "sensors", "remove", sensor)
    assert removed.returncode == 0, removed.stderr
    assert send_until(DLQ, b"unknown_sensor", 30) < 10
    assert sensor not in vigil(stack, "sensors", "list").stdout
    assert vigil(stack, "sensors", "remove", sensor).returncode == 1, "removing an unknown sensor says so"
