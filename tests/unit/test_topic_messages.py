"""`vigil tail` shows every topic of the catalog as its own event type; only the dead-letter topic, whose
messages may be anything, is shown as raw bytes with their headers."""
from cli.events import event_as_dict
from libs.common.envelope import new_envelope
from libs.common.topics import CATALOG, DLQ, INFERENCE_SENSORS
from protos import events_pb2


def test_every_topic_but_the_dead_letters_has_its_event_type():
    assert {spec.name for spec in CATALOG if spec.message is None} == {DLQ}


def test_a_sensor_anomaly_result_is_shown_with_its_fields():
    result = events_pb2.SensorAnomalyResult(envelope=new_envelope("sensor/t-1", "inference"), sensor_id="t-1",
                                            score=7.5, anomaly=True)
    shown = event_as_dict(INFERENCE_SENSORS, result.SerializeToString())
    assert shown["sensor_id"] == "t-1" and shown["anomaly"] is True and shown["score"] == 7.5
