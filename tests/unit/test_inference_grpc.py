"""The Open Inference Protocol servicer in process, on the real default model, through a real gRPC channel:
both image inputs, every kind of bad input and its status, the repository extension, TLS and the bearer token.
(tritonclient, a client nobody here wrote, is run against the service in tests/integration.)"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import threading
import uuid
import zlib

import cv2
import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from protos import inference_pb2 as pb
from protos import inference_pb2_grpc
from services.inference.adapters.grpc_adapter import GrpcSecurity, admin_call_refusal, start_grpc_server
from services.inference.core.model_repository import DirectoryRepository
from services.inference.core.model_server import ModelServer
from services.inference.detectors import detector_loader

LIMIT = 4 << 20  # small enough to test, big enough for a 768x576 frame
MODEL = "yolov3-tiny"


@pytest.fixture(scope="module")
def frame(opencv_samples_dir) -> np.ndarray:
    capture = cv2.VideoCapture(str(opencv_samples_dir / "vtest.avi"))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 200)
    ok, image = capture.read()
    assert ok
    return image


@pytest.fixture(scope="module")
def repository_dir(tmp_path_factory, yolov3_tiny_model_dir):
    """A model repository: a second model (the same network under another name) and one that cannot load."""
    root = tmp_path_factory.mktemp("repository")
    for name, corrupt in (("people-counter", False), ("broken", True)):
        target = root / name
        shutil.copytree(yolov3_tiny_model_dir, target)
        metadata = json.loads((target / "model.json").read_text())
        metadata["name"] = name
        (target / "model.json").write_text(json.dumps(metadata))
        if corrupt:
            (target / "model.xml").write_text("<net>this is not a model</net>")
    return root


@pytest.fixture(scope="module")
def model_server(yolov3_tiny_model_dir, repository_dir) -> ModelServer:
    loader = detector_loader("CPU", "f32", 0.25)
    server = ModelServer(loader(yolov3_tiny_model_dir),
                         DirectoryRepository(repository_dir, loader, also=(yolov3_tiny_model_dir,)), LIMIT)
    server.warm_up()
    return server


@pytest.fixture(scope="module")
def stub(model_server):
    grpc_server, port = start_grpc_server(model_server, "127.0.0.1", 0, 4, LIMIT)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)])
    yield inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()
    grpc_server.stop(0).wait()


def image_tensor(image: np.ndarray, name: str = "image", datatype: str = "UINT8"):
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(image.shape)), image.tobytes()


def bytes_tensor(encoded: bytes, name: str = "image_bytes", count: int = 1):
    raw = (struct.pack("<I", len(encoded)) + encoded) * count
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype="BYTES", shape=[count]), raw


def infer_request(*tensors, model: str = MODEL, outputs=()) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id="t")
    for meta, raw in tensors:
        request.inputs.append(meta)
        request.raw_input_contents.append(raw)
    for name in outputs:
        request.outputs.append(pb.ModelInferRequest.InferRequestedOutputTensor(name=name))
    return request


def detections(response: pb.ModelInferResponse) -> list[tuple[str, float, np.ndarray]]:
    by_name = dict(zip([o.name for o in response.outputs], response.raw_output_contents))
    scores = np.frombuffer(by_name["scores"], "<f4")
    boxes = np.frombuffer(by_name["boxes"], "<f4").reshape(-1, 4)
    raw, labels = by_name["classes"], []
    while raw:
        (length,) = struct.unpack_from("<I", raw)
        labels.append(raw[4:4 + length].decode())
        raw = raw[4 + length:]
    return list(zip(labels, scores.tolist(), boxes))


def status_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def png_header_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb's first bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + b"\x00" * 64)


def test_image_bytes_jpeg_and_png_find_the_persons_the_raw_image_does(stub, frame):
    from_pixels = detections(stub.ModelInfer(infer_request(image_tensor(frame))))
    png = cv2.imencode(".png", frame)[1].tobytes()
    from_png = detections(stub.ModelInfer(infer_request(bytes_tensor(png))))
    jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    from_jpeg = detections(stub.ModelInfer(infer_request(bytes_tensor(jpeg))))

    assert sum(1 for label, _, _ in from_pixels if label == "person") >= 3
    # PNG is lossless: the very same pixels, so the very same detections (f32 inference).
    assert [(label, round(score, 5)) for label, score, _ in from_png] == \
           [(label, round(score, 5)) for label, score, _ in from_pixels]
    # JPEG is lossy: the same persons, boxes within a few pixels.
    persons = [box for label, _, box in from_pixels if label == "person"]
    jpeg_persons = [box for label, _, box in from_jpeg if label == "person"]
    assert len(jpeg_persons) == len(persons)
    for box in persons:
        assert min(np.abs(box - other).max() for other in jpeg_persons) < 8


def test_the_response_names_the_model_that_ran_and_only_the_outputs_asked_for(stub, frame):
    response = stub.ModelInfer(infer_request(image_tensor(frame), outputs=["scores"]))
    assert (response.model_name, response.model_version, response.id) == (MODEL, "1", "t")
    assert [o.name for o in response.outputs] == ["scores"]


def test_typed_contents_are_accepted_as_well_as_raw(stub, frame):
    small = cv2.resize(frame, (96, 72))
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.append(pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="UINT8", shape=list(small.shape),
        contents=pb.InferTensorContents(uint_contents=small.reshape(-1).tolist())))
    typed = stub.ModelInfer(request)
    raw = stub.ModelInfer(infer_request(image_tensor(small)))
    assert typed.raw_output_contents == raw.raw_output_contents


BAD_REQUESTS = {
    "wrong dtype": (lambda f: infer_request(image_tensor(f[:64, :64].astype(np.float32), datatype="FP32")),
                    grpc.StatusCode.INVALID_ARGUMENT, "'image'"),
    "wrong shape": (lambda f: infer_request(image_tensor(f[:, :, :2].copy())), grpc.StatusCode.INVALID_ARGUMENT,
                    "'image'"),
    "raw size does not match shape": (
        lambda f: infer_request((pb.ModelInferRequest.InferInputTensor(name="image", datatype="UINT8",
                                                                       shape=[10, 10, 3]), b"\x00" * 17)),
        grpc.StatusCode.INVALID_ARGUMENT, "'image'"),
    "no input": (lambda f: infer_request(), grpc.StatusCode.INVALID_ARGUMENT, "'image'"),
    "both inputs": (lambda f: infer_request(image_tensor(f), bytes_tensor(cv2.imencode(".jpg", f)[1].tobytes())),
                    grpc.StatusCode.INVALID_ARGUMENT, "'image_bytes'"),
    "unknown input": (lambda f: infer_request(image_tensor(f, name="picture")), grpc.StatusCode.INVALID_ARGUMENT,
                      "'picture'"),
    "image_bytes not an image": (lambda f: infer_request(bytes_tensor(b"GIF89a not a jpeg")),
                                 grpc.StatusCode.INVALID_ARGUMENT, "'image_bytes'"),
    "image_bytes a truncated jpeg": (
        lambda f: infer_request(bytes_tensor(cv2.imencode(".jpg", f)[1].tobytes()[:300])),
        grpc.StatusCode.INVALID_ARGUMENT, "'image_bytes'"),
    "image_bytes two images": (lambda f: infer_request(bytes_tensor(cv2.imencode(".jpg", f)[1].tobytes(), count=2)),
                               grpc.StatusCode.INVALID_ARGUMENT, "'image_bytes'"),
    "image_bytes as UINT8": (lambda f: infer_request(image_tensor(cv2.imencode(".jpg", f)[1], name="image_bytes")),
                             grpc.StatusCode.INVALID_ARGUMENT, "'image_bytes'"),
    "declared shape too large": (
        lambda f: infer_request((pb.ModelInferRequest.InferInputTensor(name="image", datatype="UINT8",
                                                                       shape=[40000, 40000, 3]), b"")),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "'image'"),
    "decompression bomb": (lambda f: infer_request(bytes_tensor(png_header_declaring(60000, 60000))),
                           grpc.StatusCode.RESOURCE_EXHAUSTED, "'image_bytes'"),
    "unknown output": (lambda f: infer_request(image_tensor(f), outputs=["masks"]), grpc.StatusCode.INVALID_ARGUMENT,
                       "'masks'"),
    "unknown model": (lambda f: infer_request(image_tensor(f), model="no-such-model"), grpc.StatusCode.NOT_FOUND,
                      "'no-such-model'"),
    "message over the limit": (lambda f: infer_request(image_tensor(np.zeros((1400, 1100, 3), np.uint8))),
                               grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
}


@pytest.mark.parametrize("kind", list(BAD_REQUESTS))
def test_each_bad_input_gets_its_status_naming_the_input_and_the_server_keeps_serving(stub, frame, kind):
    build, expected_code, named = BAD_REQUESTS[kind]
    code, message = status_of(lambda: stub.ModelInfer(build(frame)))
    assert code == expected_code, message
    assert named in message
    assert detections(stub.ModelInfer(infer_request(image_tensor(frame))))


def test_the_repository_lists_loads_and_unloads_models_and_a_failed_load_leaves_the_rest_serving(stub, frame):
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert index[MODEL].state == "READY"
    assert index["people-counter"].state == "UNAVAILABLE" and index["broken"].state == "UNAVAILABLE"
    assert [m.name for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models] == [MODEL]

    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="people-counter"))
    assert stub.ModelReady(pb.ModelReadyRequest(name="people-counter")).ready
    response = stub.ModelInfer(infer_request(image_tensor(frame), model="people-counter"))
    assert response.model_name == "people-counter" and detections(response)

    code, message = status_of(lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="broken")))
    assert code == grpc.StatusCode.INTERNAL and "broken" in message
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert index["broken"].state == "UNAVAILABLE" and index["broken"].reason
    assert detections(stub.ModelInfer(infer_request(image_tensor(frame))))

    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="people-counter"))
    assert not stub.ModelReady(pb.ModelReadyRequest(name="people-counter")).ready
    code, _ = status_of(lambda: stub.ModelInfer(infer_request(image_tensor(frame), model="people-counter")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = status_of(lambda: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, _ = status_of(lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nothing")))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "model_repository" in stub.ServerMetadata(pb.ServerMetadataRequest()).extensions


def test_tls_with_a_bearer_token_serves_callers_with_the_token_and_refuses_the_others(model_server, tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    cert = (tmp_path / "cert.pem").read_bytes()
    security = GrpcSecurity(tls_cert=cert, tls_key=(tmp_path / "key.pem").read_bytes(), bearer_token="s3cret")
    grpc_server, port = start_grpc_server(model_server, "127.0.0.1", 0, 2, LIMIT, security)
    try:
        with grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(cert)) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = pb.ServerReadyRequest()
            assert stub.ServerReady(request, metadata=[("authorization", "Bearer s3cret")]).ready
            assert status_of(lambda: stub.ServerReady(request))[0] == grpc.StatusCode.UNAUTHENTICATED
            wrong = [("authorization", "Bearer guess")]
            assert status_of(lambda: stub.ServerReady(request, metadata=wrong))[0] == grpc.StatusCode.UNAUTHENTICATED
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(plain)
            code, _ = status_of(lambda: stub.ServerReady(pb.ServerReadyRequest(), timeout=5,
                                                         metadata=[("authorization", "Bearer s3cret")]))
            assert code == grpc.StatusCode.UNAVAILABLE, "a plaintext client cannot talk to the TLS port"
    finally:
        grpc_server.stop(0).wait()


class FailingRepository:
    """A repository whose new version of the default model cannot load (pure logic of ModelServer.load)."""

    def available(self) -> dict[str, str]:
        return {MODEL: "2"}

    def load(self, name: str):
        raise RuntimeError("model.bin is truncated")


def test_a_version_that_fails_to_load_leaves_the_previous_one_serving_and_says_so(model_server, frame):
    from services.inference.core.model_server import ModelLoadFailed

    announced = []
    server = ModelServer(model_server.default_model, FailingRepository(), LIMIT,
                         on_status=lambda *status: announced.append(status))
    server.warm_up()
    with pytest.raises(ModelLoadFailed, match="truncated"):
        server.load(MODEL)
    assert server.model(MODEL) is model_server.default_model and server.ready.is_set()
    assert [(name, version, state) for name, version, state, _ in announced] == [
        (MODEL, "2", "loading"), (MODEL, "2", "failed")]
    assert "truncated" in announced[1][3] and "version 1 keeps serving" in announced[1][3]
    assert server.detect(MODEL, "", {"image": ("UINT8", frame)})[0].version == "1"


# -- bounds: concurrent calls, metric labels, who may change what is served ---------------------------------------

class BlockingDetector:
    """A detector that holds each call until released, to fill the server with calls in flight."""
    name, version, input_size, inference_precision = "slow", "1", (8, 8), "f32"

    def __init__(self) -> None:
        self.inside = threading.Semaphore(0)
        self.release = threading.Event()

    def detect(self, bgr):
        self.inside.release()
        self.release.wait(30)
        return []


def test_calls_beyond_the_concurrency_bound_are_refused_at_once_not_queued():
    detector = BlockingDetector()
    grpc_server, port = start_grpc_server(ModelServer(detector), "127.0.0.1", 0, 2, LIMIT, max_concurrent=2)
    request = infer_request(image_tensor(np.zeros((8, 8, 3), np.uint8)), model="slow")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            admitted = [stub.ModelInfer.future(request, timeout=30) for _ in range(2)]
            assert detector.inside.acquire(timeout=10) and detector.inside.acquire(timeout=10)
            code, details = status_of(lambda: stub.ModelInfer(request, timeout=10))
            detector.release.set()
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
            assert [call.result().model_name for call in admitted] == ["slow", "slow"]
            assert stub.ModelInfer(request, timeout=10).model_name == "slow", "the bound frees up again"
    finally:
        detector.release.set()
        grpc_server.stop(0).wait()


def test_metric_labels_name_only_loaded_models_whatever_the_clients_ask_for(stub, frame):
    asked = [f"made-up-{uuid.uuid4().hex}" for _ in range(3)]
    unknown_before = REGISTRY.get_sample_value("vigil_inference_grpc_requests_total",
                                               {"model": "unknown", "code": "NOT_FOUND"}) or 0
    for name in asked:
        assert status_of(lambda: stub.ModelInfer(infer_request(image_tensor(frame), model=name)))[0] \
            == grpc.StatusCode.NOT_FOUND
    labels = {sample.labels.get("model") for metric in REGISTRY.collect()
              if metric.name.startswith("vigil_inference_grpc") for sample in metric.samples}
    assert not labels & set(asked), "a client's model string became a label"
    assert REGISTRY.get_sample_value("vigil_inference_grpc_requests_total",
                                     {"model": "unknown", "code": "NOT_FOUND"}) == unknown_before + 3


def test_with_an_admin_token_repository_changes_need_it(model_server):
    grpc_server, port = start_grpc_server(model_server, "127.0.0.1", 0, 2, LIMIT, GrpcSecurity(admin_token="adm1n"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            unload = pb.RepositoryModelUnloadRequest(model_name="not-loaded")
            load = pb.RepositoryModelLoadRequest(model_name="not-in-the-repository")
            for call in (lambda **kw: stub.RepositoryModelUnload(unload, **kw),
                         lambda **kw: stub.RepositoryModelLoad(load, **kw)):
                code, details = status_of(lambda: call())
                assert code == grpc.StatusCode.PERMISSION_DENIED and "admin token" in details
                assert status_of(lambda: call(metadata=[("x-vigil-admin-token", "guess")]))[0] \
                    == grpc.StatusCode.PERMISSION_DENIED
                # Past the gate: the model is simply not there.
                assert status_of(lambda: call(metadata=[("x-vigil-admin-token", "adm1n")]))[0] \
                    == grpc.StatusCode.NOT_FOUND
            assert stub.RepositoryIndex(pb.RepositoryIndexRequest()).models, "reading the index stays open"
    finally:
        grpc_server.stop(0).wait()


@pytest.mark.parametrize("peer, allowed", [
    ("ipv4:127.0.0.1:40000", True), ("ipv4:127.3.2.1:1", True), ("ipv6:[::1]:40000", True),
    ("unix:/run/vigil.sock", True), ("ipv6:[::ffff:127.0.0.1]:5", True),
    ("ipv4:10.0.0.7:40000", False), ("ipv6:[2001:db8::1]:40000", False), ("ipv4:128.0.0.1:1", False),
])
def test_without_an_admin_token_only_callers_on_this_host_may_load_or_unload(peer, allowed):
    refusal = admin_call_refusal(peer, None, None)
    assert (refusal is None) == allowed
    if not allowed:
        assert peer in refusal and "VIGIL_INFERENCE_GRPC_ADMIN_TOKEN" in refusal
