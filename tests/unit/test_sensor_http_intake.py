"""What the HTTP endpoint answers for a batch: schema errors by index at once, the rest acknowledged only when
delivered, and the undelivered named so that a device resends exactly those."""
from __future__ import annotations

import http.client
import json
import urllib.request

from libs.common.topics import SENSORS_RAW
from protos import events_pb2
from services.ingest.sensors.http_api import READINGS_PATH, SCHEMA_PATH, ReadingBatchIntake, SensorHttpApi

GOOD = {"sensor_id": "t-1", "quantity": "temperature", "value": 21.5, "unit": "°C",
        "event_time": "2025-06-15T12:00:00Z"}


class RecordingPublisher:
    """Stands in for Kafka: records what it was given and fails the deliveries it is told to."""

    def __init__(self, failing: set[int] = frozenset()) -> None:
        self.failing = failing
        self.messages = []

    def deliver(self, messages, timeout_s):
        self.messages.extend(messages)
        return ["Broker: Message timed out" if i in self.failing else None for i in range(len(messages))]


def accept(items, publisher=None, max_readings=100):
    publisher = publisher or RecordingPublisher()
    status, answer = ReadingBatchIntake(publisher, max_readings, 1.0).accept(json.dumps(items).encode())
    return status, answer, publisher


def test_schema_errors_are_answered_by_index_and_the_rest_produced_as_protobuf_to_the_raw_topic():
    status, answer, publisher = accept([GOOD, {**GOOD, "value": "warm"}, {**GOOD, "event_id": "dev-7"}])
    assert status == 200
    assert [(r["index"], r["reason"]) for r in answer["rejected"]] == [(1, "schema_violation")]
    assert "value" in answer["rejected"][0]["detail"]
    assert [a["index"] for a in answer["accepted"]] == [0, 2] and answer["accepted"][1]["event_id"] == "dev-7"
    assert [m.topic for m in publisher.messages] == [SENSORS_RAW, SENSORS_RAW]
    assert all(m.key == b"t-1" for m in publisher.messages)
    sent = events_pb2.SensorReading.FromString(publisher.messages[1].value)
    assert sent.envelope.event_id == "dev-7" and sent.value == 21.5


def test_readings_kafka_did_not_take_are_named_with_their_event_ids_and_the_answer_is_503():
    status, answer, _ = accept([GOOD, {**GOOD, "event_id": "dev-8"}], RecordingPublisher(failing={1}))
    assert status == 503
    assert [a["index"] for a in answer["accepted"]] == [0]
    assert answer["undelivered"] == [{"index": 1, "event_id": "dev-8", "error": "Broker: Message timed out"}]


def test_a_batch_of_only_schema_errors_produces_nothing():
    status, answer, publisher = accept([{}, {"sensor_id": "x"}])
    assert status == 200 and [r["index"] for r in answer["rejected"]] == [0, 1] and publisher.messages == []


def test_what_is_not_a_json_array_of_acceptable_size_is_refused_as_a_whole():
    assert accept(GOOD)[0] == 400
    assert accept([GOOD] * 3, max_readings=2)[0] == 413
    status, answer = ReadingBatchIntake(RecordingPublisher(), 10, 1.0).accept(b"[{,")
    assert status == 400 and "not JSON" in answer["error"]


def test_the_endpoint_serves_the_intake_caps_the_body_as_it_streams_and_answers_json():
    publisher = RecordingPublisher()
    api = SensorHttpApi(ReadingBatchIntake(publisher, 100, 1.0), "127.0.0.1", 0, max_body_bytes=2000).start()
    try:
        def post(body, chunked=False):
            connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
            connection.request("POST", READINGS_PATH, body=body, encode_chunked=chunked,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = (response.status, json.loads(response.read()))
            connection.close()
            return answer

        status, answer = post(json.dumps([GOOD]).encode())
        assert status == 200 and [a["index"] for a in answer["accepted"]] == [0] and len(publisher.messages) == 1
        # Chunked, no Content-Length: still read, and still capped.
        status, answer = post(iter([b"[", json.dumps(GOOD).encode(), b"]"]), chunked=True)
        assert status == 200 and len(publisher.messages) == 2
        status, answer = post(json.dumps([GOOD] * 30).encode())
        assert status == 413 and answer["error"].endswith("at most 2000") and len(publisher.messages) == 2
        status, answer = post(b"[{,")
        assert status == 400 and "not JSON" in answer["error"]
        with urllib.request.urlopen(f"http://127.0.0.1:{api.port}{SCHEMA_PATH}", timeout=10) as response:
            assert response.headers["Content-Type"] == "application/schema+json"
            assert json.loads(response.read())["type"] == "object"
        assert api.listening.is_set()
    finally:
        api.stop()
    assert not api.listening.is_set()
