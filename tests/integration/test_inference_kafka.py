"""The Kafka path of the inference service on a real stack: frames of several cameras interleaved on
vigil.frames are batched together, each camera goes through its own model (or the default), results keep
each camera's order and carry per-stage latency, and a corrupt JPEG goes to vigil.dlq."""
from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request

import cv2
import pytest

from libs.common.envelope import new_envelope
from libs.common.kafka import DLQ_REASON
from libs.common.topics import DLQ, FRAMES, INFERENCE, MONITORING
from protos import events_pb2
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import end_offsets, produce, read_range
from tests.integration.test_inference_grpc import inference_stack

pytestmark = pytest.mark.integration
CAMERAS = ("cam-a", "cam-b", "cam-c")
FRAMES_PER_CAMERA = 24


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list[bytes]:
    from cli.stack.camera import fetch_footage
    from libs.common.cache_dir import default_cache_dir

    capture = cv2.VideoCapture(str(fetch_footage(default_cache_dir())))
    frames = []
    for index in range(FRAMES_PER_CAMERA * 4):
        ok, image = capture.read()
        assert ok
        if index % 4 == 0:
            frames.append(cv2.imencode(".jpg", image)[1].tobytes())
    return frames


@pytest.fixture(scope="module")
def routed_stack(tmp_path_factory):
    from tools.darknet_converter import ensure_default_model

    repository = tmp_path_factory.mktemp("model-repository")
    # Another model for one camera; a version 2 of the default model (the same network, so results are
    # comparable) to swap in while frames flow; and a model that cannot load.
    for directory, name, version in (("people-counter", "people-counter", "1"), ("yolov3-tiny-2", "yolov3-tiny", "2"),
                                     ("broken", "broken", "1")):
        target = repository / directory
        shutil.copytree(ensure_default_model(), target)
        metadata = json.loads((target / "model.json").read_text())
        metadata.update(name=name, version=version)
        (target / "model.json").write_text(json.dumps(metadata))
    (repository / "broken" / "model.bin").write_bytes(b"truncated")
    env = {"VIGIL_INFERENCE_MODEL_REPOSITORY": str(repository),
           "VIGIL_INFERENCE_CAMERA_MODELS": json.dumps({"cam-b": "people-counter"}),
           "VIGIL_INFERENCE_BATCH_MAX_FRAMES": "8", "VIGIL_INFERENCE_BATCH_MAX_WAIT_S": "0.05"}
    with inference_stack(tmp_path_factory.mktemp("inference-kafka"), env) as stack:
        yield stack


def frame_event(camera_id: str, sequence: int, data: bytes) -> events_pb2.Frame:
    return events_pb2.Frame(envelope=new_envelope(f"camera/{camera_id}", "test"), camera_id=camera_id,
                            sequence=sequence, width=768, height=576, encoding="jpeg", data=data)


def scrape(stack, metric: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.config.ports.inference_ops}/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(metric))


def test_interleaved_cameras_are_batched_routed_to_their_model_and_keep_their_order(routed_stack, jpegs):
    bootstrap = routed_stack.config.kafka_bootstrap
    results_start, dlq_start = end_offsets(bootstrap, INFERENCE), end_offsets(bootstrap, DLQ)
    batches_before = scrape(routed_stack, "vigil_kafka_batch_seconds_count")
    messages = []
    for sequence in range(FRAMES_PER_CAMERA):
        for camera_id in CAMERAS:
            messages.append((camera_id.encode(), frame_event(camera_id, sequence, jpegs[sequence]).SerializeToString()))
    corrupt = frame_event("cam-a", 999, jpegs[0][:len(jpegs[0]) // 3])  # a JPEG cut short: header fine, data not
    messages.append((b"cam-a", corrupt.SerializeToString()))
    produce(bootstrap, FRAMES, messages)

    expected = FRAMES_PER_CAMERA * len(CAMERAS)

    def all_results():
        found = read_range(bootstrap, INFERENCE, results_start, end_offsets(bootstrap, INFERENCE))
        return found if len(found) >= expected else None

    results = [events_pb2.InferenceResult.FromString(m.value()) for m in wait_for(all_results, 120, what="results")]
    assert len(results) == expected
    for camera_id in CAMERAS:
        mine = [r for r in results if r.camera_id == camera_id]  # one partition per camera: topic order
        assert [r.frame_sequence for r in mine] == list(range(FRAMES_PER_CAMERA)), camera_id
        assert {r.model.name for r in mine} == {"people-counter" if camera_id == "cam-b" else "yolov3-tiny"}
    for result in results:
        latency = result.stage_latency_ms
        assert set(latency) == {"queue", "decode", "preprocess", "infer", "postprocess"}
        assert all(v >= 0 for v in latency.values()) and latency["infer"] > 0
    assert sum(1 for r in results for d in r.detections if d.label == "person") >= expected
    # The service gives every result its model's frame embedding by default (the copied dirs keep the projection).
    assert all(len(r.embedding) == 64 for r in results)

    # Frames of several cameras went through together: far fewer batches than frames.
    batches = scrape(routed_stack, "vigil_kafka_batch_seconds_count") - batches_before
    assert 0 < batches <= expected / 2, f"{batches} batches for {expected + 1} frames"

    def dead_letters():
        letters = read_range(bootstrap, DLQ, dlq_start, end_offsets(bootstrap, DLQ))
        return letters or None

    letters = wait_for(dead_letters, 30, what="the corrupt frame's dead letter")
    assert [dict(m.headers())[DLQ_REASON].decode() for m in letters] == ["undecodable_image"]
    assert letters[0].value() == corrupt.SerializeToString()


def test_a_new_version_swaps_in_under_a_stream_with_no_failed_or_missing_result_and_a_failed_load_changes_nothing(
        routed_stack, jpegs):
    import grpc

    from protos import inference_pb2 as pb
    from protos import inference_pb2_grpc

    bootstrap = routed_stack.config.kafka_bootstrap
    results_start, monitoring_start = end_offsets(bootstrap, INFERENCE), end_offsets(bootstrap, MONITORING)
    channel = grpc.insecure_channel(f"127.0.0.1:{routed_stack.config.ports.grpc}",
                                    options=[("grpc.max_send_message_length", 16 << 20)])
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="yolov3-tiny")
    request.inputs.append(pb.ModelInferRequest.InferInputTensor(name="image_bytes", datatype="BYTES", shape=[1],
                                                                contents=pb.InferTensorContents(
                                                                    bytes_contents=[jpegs[5]])))
    stop = threading.Event()
    produced: dict[str, list[str]] = {"cam-a": [], "cam-c": []}
    grpc_outcomes: list[str] = []

    def stream_frames():
        from confluent_kafka import Producer
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        sequence = 0
        while not stop.is_set():
            for camera_id in produced:
                frame = frame_event(camera_id, sequence, jpegs[sequence % len(jpegs)])
                producer.produce(FRAMES, frame.SerializeToString(), camera_id.encode())
                produced[camera_id].append(frame.envelope.event_id)
            producer.poll(0)
            sequence += 1
            time.sleep(0.1)
        assert producer.flush(15) == 0

    def call_grpc():
        while not stop.is_set():
            try:
                grpc_outcomes.append(stub.ModelInfer(request, timeout=30).model_version)
            except grpc.RpcError as error:
                grpc_outcomes.append(f"failed: {error.code()}")

    workers = [threading.Thread(target=stream_frames), threading.Thread(target=call_grpc)]
    for worker in workers:
        worker.start()
    def cameras_served_by(version):
        found = [events_pb2.InferenceResult.FromString(m.value())
                 for m in read_range(bootstrap, INFERENCE, results_start, end_offsets(bootstrap, INFERENCE))]
        return {r.camera_id for r in found if r.model.version == version}

    try:
        # The old version serves each camera and a gRPC call before the swap (polled: a loaded box may lag).
        wait_for(lambda: "1" in grpc_outcomes and cameras_served_by("1") >= set(produced), 60,
                 what="version 1 serving every camera and a gRPC call")
        with pytest.raises(grpc.RpcError) as failed_load:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="broken"))
        assert failed_load.value.code() == grpc.StatusCode.INTERNAL
        time.sleep(1)
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="yolov3-tiny"))
        # The stream goes on after the swap until the new version has answered a call and every camera has sent
        # frames since (they must get version 2).
        sent_at_swap = {camera_id: len(ids) for camera_id, ids in produced.items()}
        wait_for(lambda: "2" in grpc_outcomes and all(len(produced[c]) >= n + 10 for c, n in sent_at_swap.items()),
                 60, what="a gRPC answer from version 2 and frames sent after the swap")
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    channel.close()

    expected = {event_id for ids in produced.values() for event_id in ids}

    def every_frame_has_a_result():
        found = [events_pb2.InferenceResult.FromString(m.value())
                 for m in read_range(bootstrap, INFERENCE, results_start, end_offsets(bootstrap, INFERENCE))]
        return found if expected <= {r.frame_event_id for r in found} else None

    results = wait_for(every_frame_has_a_result, 120, what="a result for every streamed frame")
    for camera_id in produced:
        versions = [r.model.version for r in results if r.camera_id == camera_id]
        switch = versions.index("2")  # raises if the new version never took over
        assert versions == ["1"] * switch + ["2"] * (len(versions) - switch), f"{camera_id}: {versions}"
        assert switch > 0, "the old version served until the swap"

    assert grpc_outcomes and not [o for o in grpc_outcomes if o.startswith("failed")], grpc_outcomes
    switch = grpc_outcomes.index("2")
    assert grpc_outcomes == ["1"] * switch + ["2"] * (len(grpc_outcomes) - switch)

    def statuses():
        events = [events_pb2.MonitoringEvent.FromString(m.value()) for m in
                  read_range(bootstrap, MONITORING, monitoring_start, end_offsets(bootstrap, MONITORING))]
        found = [(e.model_status.model.name, e.model_status.model.version, e.model_status.state,
                  e.model_status.reason) for e in events if e.WhichOneof("detail") == "model_status"]
        return found if len(found) >= 4 else None

    announced = wait_for(statuses, 30, what="model status events")
    by_model = {}  # keyed by model: each model's events are in order (one partition), not across models
    for name, version, state, reason in announced:
        by_model.setdefault(name, []).append((version, state, reason))
    assert [(v, s) for v, s, _ in by_model["broken"]] == [("1", "loading"), ("1", "failed")]
    assert by_model["broken"][1][2], "a failed load says why"
    assert [(v, s) for v, s, _ in by_model["yolov3-tiny"]] == [("2", "loading"), ("2", "ready")]
