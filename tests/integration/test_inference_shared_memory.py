"""System shared memory (Triton's extension) between tritonclient and the real inference service, on real POSIX
shared memory: frames passed through a region get the detections the same frames get inline, outputs land in a
region, status and unregister behave as Triton's, and bad regions get their status while the server keeps serving.

As in test_inference_grpc.py, tritonclient runs in a process of its own (its copy of the `inference` protos
clashes with ours): this module, run as `python -m tests.integration.test_inference_shared_memory URL FOOTAGE`,
prints what it saw as JSON. It imports tritonclient only there."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration
MODEL = "yolov3-tiny"
FRAMES = 6  # frames compared shm against inline, spread over the footage
OUTPUT_BYTES = 64 * 1024  # room for each output of one frame, far more than a frame's detections take


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from tests.integration.test_inference_grpc import inference_stack

    with inference_stack(tmp_path_factory.mktemp("inference-shm")) as stack:
        yield stack


@pytest.fixture(scope="module")
def seen(served) -> dict:
    """One client run for the module (it takes a few seconds); each test checks its part of what it saw."""
    from cli.stack.camera import fetch_footage

    footage = fetch_footage(served.paths.cache)
    probe = subprocess.run([sys.executable, "-m", "tests.integration.test_inference_shared_memory",
                            f"127.0.0.1:{served.config.ports.grpc}", str(footage)],
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    return json.loads(probe.stdout)


def test_a_frame_sent_through_shared_memory_gets_the_same_detections_as_one_sent_inline(seen):
    assert len(seen["inline"]) == FRAMES
    assert sum(d["classes"].count("person") for d in seen["inline"]) >= FRAMES, "the footage shows people"
    for index, (inline, shared) in enumerate(zip(seen["inline"], seen["shared_input"])):
        assert shared["classes"] == inline["classes"], f"frame {index}"
        assert shared["boxes"] == pytest.approx(inline["boxes"], abs=1e-3), f"frame {index}"
        assert shared["scores"] == pytest.approx(inline["scores"], abs=1e-5), f"frame {index}"


def test_outputs_asked_into_shared_memory_are_written_there_not_into_the_response(seen):
    for index, (inline, shared) in enumerate(zip(seen["inline"], seen["shared_output"])):
        assert shared["response_raw_sizes"] == [0, 0, 0], "nothing of theirs comes back through gRPC"
        assert shared["classes"] == inline["classes"], f"frame {index}"
        assert shared["boxes"] == pytest.approx(inline["boxes"], abs=1e-3), f"frame {index}"
        assert shared["scores"] == pytest.approx(inline["scores"], abs=1e-5), f"frame {index}"


def test_status_lists_the_registered_regions_and_unregister_removes_one_or_all(seen):
    assert "system_shared_memory" in seen["extensions"]
    regions = seen["status_registered"]
    assert {name: (r["key"], int(r["byte_size"])) for name, r in regions.items()} == {
        "frames": (seen["keys"]["frames"], seen["frame_bytes"]), "detections": (seen["keys"]["detections"],
                                                                                 3 * OUTPUT_BYTES)}
    assert seen["status_one"] == ["frames"]
    assert seen["status_after_unregister_one"] == ["detections"]
    assert seen["infer_after_unregister"].startswith("StatusCode.NOT_FOUND")
    assert seen["status_after_unregister_all"] == []


def test_bad_regions_get_their_status_and_the_server_keeps_serving(seen):
    bad = seen["bad"]
    assert bad["unknown_region"].startswith("StatusCode.NOT_FOUND") and "'no-such-region'" in bad["unknown_region"]
    assert bad["past_the_region"].startswith("StatusCode.INVALID_ARGUMENT")
    assert bad["size_not_the_shapes"].startswith("StatusCode.INVALID_ARGUMENT") and "'image'" in \
        bad["size_not_the_shapes"]
    assert bad["output_too_small"].startswith("StatusCode.INVALID_ARGUMENT")
    assert bad["duplicate_name"].startswith("StatusCode.ALREADY_EXISTS")
    assert bad["no_such_key"].startswith("StatusCode.NOT_FOUND")
    assert bad["region_past_the_object"].startswith("StatusCode.INVALID_ARGUMENT")
    assert bad["key_outside_dev_shm"].startswith("StatusCode.INVALID_ARGUMENT")
    assert bad["after"] == "OK"


# -- the client process -------------------------------------------------------------------------------------

def probe(url: str, footage: str) -> dict:
    import tritonclient.grpc as triton
    import tritonclient.utils.shared_memory as shm

    from tests.integration.triton_client_probe import status_of

    frames = spread_frames(footage)
    frame_bytes = frames[0].nbytes
    keys = {"frames": f"/vigil-it-{os.getpid()}-frames", "detections": f"/vigil-it-{os.getpid()}-detections"}
    frames_region = shm.create_shared_memory_region("frames", keys["frames"], frame_bytes)
    detections_region = shm.create_shared_memory_region("detections", keys["detections"], 3 * OUTPUT_BYTES)
    client = triton.InferenceServerClient(url=url)
    try:
        client.unregister_system_shared_memory()  # a clean slate, as Triton's own examples start
        client.register_system_shared_memory("frames", keys["frames"], frame_bytes)
        client.register_system_shared_memory("detections", keys["detections"], 3 * OUTPUT_BYTES)
        seen = {"keys": keys, "frame_bytes": frame_bytes,
                "extensions": client.get_server_metadata(as_json=True)["extensions"]}
        seen["inline"] = [detections_of(client.infer(MODEL, [pixels_inline(triton, f)])) for f in frames]
        seen["shared_input"] = [detections_of(client.infer(MODEL, [pixels_in_region(triton, shm, frames_region, f)]))
                                for f in frames]
        seen["shared_output"] = [outputs_in_region(triton, shm, client, frames_region, detections_region, f)
                                 for f in frames]
        seen["status_registered"] = client.get_system_shared_memory_status(as_json=True)["regions"]
        seen["status_one"] = list(client.get_system_shared_memory_status("frames", as_json=True)["regions"])
        seen["bad"] = bad_regions(triton, shm, client, frames_region, frames[0], keys)
        client.unregister_system_shared_memory("frames")
        seen["status_after_unregister_one"] = list(
            client.get_system_shared_memory_status(as_json=True).get("regions", {}))
        seen["infer_after_unregister"] = status_of(
            lambda: client.infer(MODEL, [pixels_in_region(triton, shm, frames_region, frames[0])]))
        client.unregister_system_shared_memory()
        seen["status_after_unregister_all"] = list(
            client.get_system_shared_memory_status(as_json=True).get("regions", {}))
        return seen
    finally:
        client.close()
        shm.destroy_shared_memory_region(frames_region)
        shm.destroy_shared_memory_region(detections_region)


def spread_frames(footage: str, span: int = 300) -> list:
    """FRAMES frames from the footage's first `span`, evenly apart (different scenes, not near-copies)."""
    import cv2

    capture = cv2.VideoCapture(footage)
    frames = []
    for index in range(span):
        ok, image = capture.read()
        assert ok, f"cannot read frame {index} of {footage}"
        if index % (span // FRAMES) == 0:
            frames.append(image)
    return frames


def pixels_inline(triton, frame):
    tensor = triton.InferInput("image", list(frame.shape), "UINT8")
    tensor.set_data_from_numpy(frame)
    return tensor


def pixels_in_region(triton, shm, region, frame, offset: int = 0, byte_size: int | None = None, name="frames"):
    """The frame written into the region (as a same-host client does before each call), named by the input."""
    shm.set_shared_memory_region(region, [frame], offset=offset)
    tensor = triton.InferInput("image", list(frame.shape), "UINT8")
    tensor.set_shared_memory(name, frame.nbytes if byte_size is None else byte_size, offset=offset)
    return tensor


def region_input(triton, shape, name: str, byte_size: int, offset: int = 0):
    """An input naming a place in a region, nothing written there (for places the region does not have)."""
    tensor = triton.InferInput("image", list(shape), "UINT8")
    tensor.set_shared_memory(name, byte_size, offset=offset)
    return tensor


def detections_of(result) -> dict:
    return {"classes": [c.decode() for c in result.as_numpy("classes")],
            "boxes": result.as_numpy("boxes").ravel().tolist(), "scores": result.as_numpy("scores").tolist()}


def requested_in_region(triton, name: str, slot: int, byte_size: int = OUTPUT_BYTES):
    output = triton.InferRequestedOutput(name)
    output.set_shared_memory("detections", byte_size, offset=slot * OUTPUT_BYTES)
    return output


def outputs_in_region(triton, shm, client, frames_region, detections_region, frame) -> dict:
    """Input and every output through shared memory; the outputs read back from the region as the response's
    shapes say (copied out, so the region can be destroyed)."""
    import numpy as np

    names = ("boxes", "scores", "classes")
    result = client.infer(MODEL, [pixels_in_region(triton, shm, frames_region, frame)],
                          outputs=[requested_in_region(triton, name, slot) for slot, name in enumerate(names)])
    response = result.get_response()
    shapes = {o.name: list(o.shape) for o in response.outputs}
    # np.object_ exactly: tritonclient tells BYTES by it (builtin `object` would make it read pointers from memory).
    datatypes = {"boxes": np.float32, "scores": np.float32, "classes": np.object_}
    read = {name: shm.get_contents_as_numpy(detections_region, datatypes[name], shapes[name],
                                            offset=slot * OUTPUT_BYTES).copy() for slot, name in enumerate(names)}
    return {"classes": [c.decode() for c in read["classes"]], "boxes": read["boxes"].ravel().tolist(),
            "scores": read["scores"].tolist(), "response_raw_sizes": [len(r) for r in response.raw_output_contents]}


def bad_regions(triton, shm, client, frames_region, frame, keys) -> dict:
    from tests.integration.triton_client_probe import status_of

    def infer(*inputs, outputs=None):
        return lambda: client.infer(MODEL, list(inputs), outputs=outputs)

    return {
        "unknown_region": status_of(infer(pixels_in_region(triton, shm, frames_region, frame, name="no-such-region"))),
        "past_the_region": status_of(infer(region_input(triton, frame.shape, "frames", frame.nbytes, offset=16))),
        "size_not_the_shapes": status_of(infer(pixels_in_region(triton, shm, frames_region, frame,
                                                                byte_size=frame.nbytes // 2))),
        "output_too_small": status_of(infer(pixels_in_region(triton, shm, frames_region, frame),
                                            outputs=[requested_in_region(triton, "classes", 0, byte_size=4)])),
        "duplicate_name": status_of(lambda: client.register_system_shared_memory("frames", keys["detections"], 16)),
        "no_such_key": status_of(lambda: client.register_system_shared_memory("x", "/vigil-no-such-object", 16)),
        "region_past_the_object": status_of(lambda: client.register_system_shared_memory(
            "x", keys["frames"], 16, offset=frame.nbytes)),
        "key_outside_dev_shm": status_of(lambda: client.register_system_shared_memory("x", "/../etc/passwd", 16)),
        "after": status_of(infer(pixels_in_region(triton, shm, frames_region, frame))),
    }


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], sys.argv[2])))
