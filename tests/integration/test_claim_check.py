"""Claim-check through the real object store (SeaweedFS's S3) and the real broker."""
from __future__ import annotations

import os
import time

import numpy as np

import pytest

from libs.common.claimcheck import ClaimCheckError, ClaimCheckStore, frame_bytes
from libs.common.objectstore import object_store_client
from libs.common.settings import KafkaSettings, ObjectStoreSettings
from libs.common.topics import FRAMES, INFERENCE
from protos import events_pb2
from services.ingest.frames import FrameEventBuilder
from services.ingest.kafka_adapter import FramePublisher
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import end_offsets, read_range

pytestmark = pytest.mark.integration


@pytest.fixture
def claim_check(stack) -> ClaimCheckStore:
    settings = ObjectStoreSettings(endpoint=f"127.0.0.1:{stack.config.ports.s3}", access_key=stack.config.s3_access_key,
                                   secret_key=stack.config.s3_secret_key)
    store = ClaimCheckStore(object_store_client(settings), "vigil-frames-test")
    store.ensure_bucket()
    return store


def test_a_frame_above_the_threshold_round_trips_through_the_object_store_byte_for_byte(stack, claim_check):
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (720, 1280, 3), dtype="uint8")  # incompressible: a JPEG far above 512 KiB
    frame = FrameEventBuilder("big-camera", jpeg_quality=100).build(noise, time.time_ns(), False)
    original = frame.data
    assert len(original) > 512 * 1024

    before = end_offsets(stack.config.kafka_bootstrap, FRAMES)
    publisher = FramePublisher(KafkaSettings(bootstrap_servers=stack.config.kafka_bootstrap), claim_check,
                               threshold_bytes=512 * 1024)
    assert publisher.publish(frame)
    assert publisher.close() == 0
    messages = [m for m in read_range(stack.config.kafka_bootstrap, FRAMES, before,
                                      end_offsets(stack.config.kafka_bootstrap, FRAMES)) if m.key() == b"big-camera"]
    assert len(messages) == 1
    received = events_pb2.Frame.FromString(messages[0].value())
    assert received.WhichOneof("payload") == "ref", "the event carries a reference, not the bytes"
    assert len(messages[0].value()) < 4096
    assert received.ref.size == len(original)
    assert frame_bytes(received, claim_check) == original

    # Inference fetches the referenced frame and answers for it like for any other.
    def result_for_frame():
        end = end_offsets(stack.config.kafka_bootstrap, INFERENCE)
        results = [events_pb2.InferenceResult.FromString(m.value())
                   for m in read_range(stack.config.kafka_bootstrap, INFERENCE, None, end) if m.key() == b"big-camera"]
        return next((r for r in results if r.frame_event_id == frame.envelope.event_id), None)

    # The shared stack's inference may still be working off an earlier test's backlog (the annotation flood
    # test's 10,000 frames took 167 s on a 2-core CPU without bf16): the frame is answered in turn, not at once.
    result = wait_for(result_for_frame, 300, interval_s=2, what="the inference result of the claim-checked frame")
    assert (result.width, result.height) == (1280, 720)


def test_a_small_frame_stays_inline(claim_check):
    frame = events_pb2.Frame(camera_id="c", data=b"\xff\xd8 small jpeg")
    assert frame_bytes(frame, claim_check) == b"\xff\xd8 small jpeg"
    assert frame_bytes(frame, None) == b"\xff\xd8 small jpeg"


def test_a_reference_whose_bytes_changed_is_refused(claim_check):
    ref = claim_check.put("frames/test/tampered.jpg", os.urandom(1000))
    ref.sha256 = "0" * 64
    with pytest.raises(ClaimCheckError, match="sha256"):
        frame_bytes(events_pb2.Frame(ref=ref), claim_check)


def test_a_missing_object_is_a_clear_error(claim_check):
    ref = events_pb2.ObjectRef(bucket=claim_check.bucket, key="frames/none/missing.jpg")
    with pytest.raises(ClaimCheckError, match="NoSuchKey"):
        frame_bytes(events_pb2.Frame(ref=ref), claim_check)
