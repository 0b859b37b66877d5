"""The inference service of the real stack through tritonclient (a client nobody here wrote): encoded images,
100 concurrent requests, the repository extension, and bad inputs that leave the server serving.

tritonclient registers its own copy of the `inference` protos in the global descriptor pool, which clashes
with ours, so the client side runs in a process of its own: this very module, run as
`python -m tests.integration.test_inference_grpc URL FOOTAGE`, prints what it saw as JSON. It imports
tritonclient only there."""
from __future__ import annotations

import contextlib
import json
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = pytest.mark.integration
MODEL = "yolov3-tiny"
CONCURRENT = 100
INFERENCE_COMPONENTS = ("kafka", "objectstore", "inference")


@contextlib.contextmanager
def inference_stack(state: Path, inference_env: dict[str, str] | None = None) -> Iterator:
    """A real stack of only what inference needs (Kafka, the object store, the inference service) on free
    ports, with the service's settings as given; always stopped. Independent of the camera and ingest."""
    from cli.stack.local import LocalStack, StackPorts

    stack = LocalStack(state=state, ports=StackPorts.free(), extra_env={"inference": inference_env or {}})
    stack.install()
    stack.supervisor.specs = [s for s in stack.supervisor.specs if s.name in INFERENCE_COMPONENTS]
    try:
        stack.supervisor.up(progress=lambda *_: None)
        wait_until_topics_have_leaders(stack.config.kafka_bootstrap)
        yield stack
    finally:
        if stack.supervisor.running_pid("inference"):
            print(stack.supervisor.log_tail("inference", 20), file=sys.stderr)
        stack.supervisor.down(progress=lambda *_: None)


def wait_until_topics_have_leaders(bootstrap: str, timeout_s: float = 60) -> None:
    """The service creates the topic catalog once it is ready; wait for that (listing all topics, which never
    auto-creates one) and for every partition to answer offset queries."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from libs.common.topics import CATALOG
    from tests.integration.kafka_tools import end_offsets

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while not {s.name for s in CATALOG} <= set(admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, "the inference service did not create the topic catalog"
        time.sleep(0.5)
    for spec in CATALOG:
        while True:
            try:
                end_offsets(bootstrap, spec.name)
                break
            except KafkaException:
                assert time.monotonic() < deadline, f"{spec.name} has no leader"
                time.sleep(0.5)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with inference_stack(tmp_path_factory.mktemp("inference-grpc")) as stack:
        yield stack


@pytest.fixture(scope="module")
def footage(served) -> Path:
    from cli.stack.camera import fetch_footage
    return fetch_footage(served.paths.cache)


def test_tritonclient_gets_persons_from_encoded_images_and_100_concurrent_requests_all_succeed(served, footage):
    seen = run_probe(served, footage)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert [i["name"] for i in seen["metadata"]["inputs"]] == ["image", "image_bytes"]
    assert seen["jpeg_classes"].count("person") >= 3
    assert seen["png_classes"] == seen["raw_classes"], "PNG is lossless: same pixels, same detections"

    assert seen["concurrent"]["failed"] == [], seen["concurrent"]["failed"][:3]
    assert seen["concurrent"]["succeeded"] == CONCURRENT
    assert seen["concurrent"]["ids_match"], "every response answers its own request"
    assert seen["concurrent"]["all_found_persons"]


def test_the_repository_extension_works_through_tritonclient(served, footage):
    seen = run_probe(served, footage)
    assert "model_repository" in seen["server_metadata"]["extensions"]
    index = {m["name"]: m for m in seen["index"]["models"]}
    assert index[MODEL]["state"] == "READY"
    assert seen["reload_default"] == "OK" and seen["ready_after_reload"]
    assert seen["unload_default"].startswith("StatusCode.FAILED_PRECONDITION")
    assert seen["load_unknown"].startswith("StatusCode.NOT_FOUND")


def test_bad_inputs_through_tritonclient_get_their_status_and_the_server_keeps_serving(served, footage):
    bad = run_probe(served, footage)["bad"]
    assert bad["wrong_dtype"].startswith("StatusCode.INVALID_ARGUMENT") and "'image'" in bad["wrong_dtype"]
    assert bad["wrong_shape"].startswith("StatusCode.INVALID_ARGUMENT") and "'image'" in bad["wrong_shape"]
    assert bad["garbage_bytes"].startswith("StatusCode.INVALID_ARGUMENT") and "'image_bytes'" in bad["garbage_bytes"]
    assert bad["bomb"].startswith("StatusCode.RESOURCE_EXHAUSTED") and "'image_bytes'" in bad["bomb"]
    assert bad["unknown_model"].startswith("StatusCode.NOT_FOUND")
    assert bad["after"] == "OK"


_probe_cache: dict[str, dict] = {}


def run_probe(stack, footage) -> dict:
    """One probe run per session (it takes a few seconds); each test checks its part of what it saw."""
    if "seen" not in _probe_cache:
        probe = subprocess.run([sys.executable, "-m", "tests.integration.test_inference_grpc",
                                f"127.0.0.1:{stack.config.ports.grpc}", str(footage)],
                               capture_output=True, text=True, timeout=300)
        assert probe.returncode == 0, probe.stderr[-3000:]
        _probe_cache["seen"] = json.loads(probe.stdout)
    return _probe_cache["seen"]


# -- the client process -------------------------------------------------------------------------------------

def png_header_declaring(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def probe(url: str, footage: str) -> dict:
    import cv2
    import numpy as np
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    from tests.integration.triton_client_probe import status_of

    def pixels_input(image):
        tensor = triton.InferInput("image", list(image.shape), "UINT8")
        tensor.set_data_from_numpy(image)
        return tensor

    def bytes_input(encoded: bytes):
        tensor = triton.InferInput("image_bytes", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([encoded], dtype=object))
        return tensor

    capture = cv2.VideoCapture(footage)
    frames = []
    for index in range(300):
        ok, image = capture.read()
        assert ok, f"cannot read frame {index} of {footage}"
        if index % 30 == 0:
            frames.append(image)
    jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
    client = triton.InferenceServerClient(url=url)

    def classes(result) -> list[str]:
        return [c.decode() for c in result.as_numpy("classes")]

    seen = {
        "live": client.is_server_live(), "ready": client.is_server_ready(), "model_ready": client.is_model_ready(MODEL),
        "metadata": client.get_model_metadata(MODEL, as_json=True),
        "server_metadata": client.get_server_metadata(as_json=True),
        "jpeg_classes": classes(client.infer(MODEL, [bytes_input(jpegs[0])])),
        "raw_classes": classes(client.infer(MODEL, [pixels_input(frames[0])])),
        "png_classes": classes(client.infer(MODEL, [bytes_input(cv2.imencode(".png", frames[0])[1].tobytes())])),
    }

    # 100 requests in flight at once, half as pixels and half as JPEG.
    done = threading.Semaphore(0)
    results: dict[str, object] = {}

    def on_result(request_id, result, error):
        results[request_id] = error if error is not None else result
        done.release()

    for i in range(CONCURRENT):
        frame_index = i % len(frames)
        inputs = [pixels_input(frames[frame_index])] if i % 2 else [bytes_input(jpegs[frame_index])]
        client.async_infer(MODEL, inputs, lambda result, error, rid=str(i): on_result(rid, result, error),
                           request_id=str(i))
    for _ in range(CONCURRENT):
        assert done.acquire(timeout=240), "a concurrent request never completed"
    failed = [f"{rid}: {r}" for rid, r in results.items() if isinstance(r, InferenceServerException)]
    good = {rid: r for rid, r in results.items() if not isinstance(r, InferenceServerException)}
    seen["concurrent"] = {
        "succeeded": len(good), "failed": failed,
        "ids_match": all(r.get_response().id == rid for rid, r in good.items()),
        "all_found_persons": all("person" in classes(r) for r in good.values()),
    }

    seen["index"] = client.get_model_repository_index(as_json=True)
    seen["reload_default"] = status_of(lambda: client.load_model(MODEL))
    seen["ready_after_reload"] = client.is_server_ready() and client.is_model_ready(MODEL)
    seen["unload_default"] = status_of(lambda: client.unload_model(MODEL))
    seen["load_unknown"] = status_of(lambda: client.load_model("no-such-model"))

    wrong_dtype = triton.InferInput("image", [4, 4, 3], "FP32")
    wrong_dtype.set_data_from_numpy(np.zeros((4, 4, 3), np.float32))
    seen["bad"] = {
        "wrong_dtype": status_of(lambda: client.infer(MODEL, [wrong_dtype])),
        "wrong_shape": status_of(lambda: client.infer(MODEL, [pixels_input(frames[0][:, :, :1].copy())])),
        "garbage_bytes": status_of(lambda: client.infer(MODEL, [bytes_input(b"not an image at all")])),
        "bomb": status_of(lambda: client.infer(MODEL, [bytes_input(png_header_declaring(60000, 60000))])),
        "unknown_model": status_of(lambda: client.infer("no-such-model", [pixels_input(frames[0])])),
    }
    seen["bad"]["after"] = status_of(lambda: client.infer(MODEL, [bytes_input(jpegs[1])]))
    client.close()
    return seen


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], sys.argv[2])))
