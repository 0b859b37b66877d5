import uuid

from libs.common.envelope import derived_envelope, new_envelope


def test_new_envelopes_have_unique_ids_and_the_schema_version():
    a, b = new_envelope("camera/x", "ingest"), new_envelope("camera/x", "ingest")
    assert a.event_id != b.event_id
    assert uuid.UUID(a.event_id)
    assert a.schema_version == 1
    assert a.trace_id and a.producer == "ingest"


def test_a_derived_event_id_is_the_same_for_a_replayed_parent():
    parent = new_envelope("camera/x", "ingest", event_time_ns=1_700_000_000_000_000_000)
    first = derived_envelope(parent, "inference", "yolov3-tiny:1")
    replay = derived_envelope(parent, "inference", "yolov3-tiny:1")
    assert first.event_id == replay.event_id
    assert uuid.UUID(first.event_id)


def test_a_derived_event_keeps_the_trace_and_event_time_but_not_the_id():
    parent = new_envelope("camera/x", "ingest", event_time_ns=1_700_000_000_123_000_000)
    child = derived_envelope(parent, "inference", "m:1")
    assert child.trace_id == parent.trace_id
    assert child.event_time == parent.event_time
    assert child.event_id != parent.event_id
    assert child.producer == "inference"


def test_another_model_version_derives_another_id():
    parent = new_envelope("camera/x", "ingest")
    assert derived_envelope(parent, "inference", "m:1").event_id != derived_envelope(parent, "inference", "m:2").event_id
