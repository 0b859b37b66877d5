"""The sink's Kafka adapter decodes each topic as the topic catalog says it carries (TopicSpec.message), with the
real embedded engine behind it."""
from __future__ import annotations

import pytest

from libs.common.kafka import Rejected
from libs.common.topics import FRAMES, INFERENCE_SHADOW, MONITORING, TOPIC_OF_NAME, message_type
from services.metrics.kafka_adapter import MetricsBatchHandler, topic_decoder
from services.metrics.sink import EventSink
from services.metrics.store import MetricsStore
from tests.unit.test_metrics_protobuf_ingest import KafkaMessage, inference_result


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = MetricsStore.open(tmp_path_factory.mktemp("chdb"))
    store.migrate()
    yield store
    store.close()


@pytest.mark.parametrize("engine", [True, False])
def test_a_topic_is_decoded_as_its_catalog_spec_says(store, engine):
    # vigil.inference.shadow carries InferenceResults by its spec: the handler needs no mapping of its own for it.
    assert message_type(INFERENCE_SHADOW).DESCRIPTOR.name == "InferenceResult"
    handler = MetricsBatchHandler(EventSink(store, engine_parses_inference=engine), "vigil.dlq",
                                  topics=[INFERENCE_SHADOW, MONITORING])
    result = inference_result(f"shadow-{engine}", shadow=True)
    outcomes = handler([KafkaMessage(INFERENCE_SHADOW, result.SerializeToString()),
                        KafkaMessage(INFERENCE_SHADOW, b"\xff\xfe garbage")])
    assert outcomes[0] == []
    assert isinstance(outcomes[1], Rejected) and outcomes[1].reason == "malformed_event"
    assert store.query_readonly(f"SELECT count(), any(shadow) FROM inference_events "
                                f"WHERE camera_id = 'shadow-{engine}'")["rows"] == [[1, True]]


def test_a_topic_whose_type_the_sink_does_not_store_is_refused_at_start():
    with pytest.raises(ValueError, match="stores no Frame events"):
        topic_decoder(FRAMES)


def test_a_changed_spec_changes_the_decoder(monkeypatch):
    """The catalog is the one source: point vigil.monitoring at another type and the decoder follows it."""
    from dataclasses import replace
    from protos import events_pb2
    monkeypatch.setitem(TOPIC_OF_NAME, MONITORING, replace(TOPIC_OF_NAME[MONITORING], message=events_pb2.Frame))
    with pytest.raises(ValueError, match="stores no Frame events"):
        topic_decoder(MONITORING)
