"""System shared memory (Triton's extension): the registry on real POSIX shared memory objects, made as a client
makes them (multiprocessing.shared_memory, which tritonclient.utils.shared_memory wraps), and the gRPC servicer
reading inputs from and writing outputs to them over a loopback channel, with a stand-in detector (no model).
tritonclient itself runs against the real service in tests/integration/test_inference_shared_memory.py."""
from __future__ import annotations

import ctypes
import struct
import threading
import uuid
from multiprocessing import shared_memory

import grpc
import numpy as np
import pytest

from protos import inference_pb2 as pb
from protos import inference_pb2_grpc
from services.inference.adapters.grpc_adapter import InferenceServicer, start_grpc_server
from services.inference.adapters.open_inference_tensors import SharedMemoryPlace, TensorError, shared_memory_place
from services.inference.core.model_server import EXTENSIONS, ModelServer
from services.inference.core.shared_memory import (
    SHM_DIR, InvalidRegion, KeyNotFound, RegionExists, RegionNotFound, SharedMemoryRegistry, TooManyRegions,
)
from services.inference.detectors.base import Detection

LIMIT = 4 << 20


@pytest.fixture
def client_memory():
    """A POSIX shared memory object as a client creates it; unlinked at the end."""
    made = []

    def make(size: int) -> shared_memory.SharedMemory:
        memory = shared_memory.SharedMemory(name=f"vigil-test-{uuid.uuid4().hex[:12]}", create=True, size=size)
        made.append(memory)
        return memory

    yield make
    for memory in made:
        memory.close()
        memory.unlink()


@pytest.fixture
def registry():
    registry = SharedMemoryRegistry()
    yield registry
    registry.close()


def key_of(memory: shared_memory.SharedMemory) -> str:
    return "/" + memory.name  # tritonclient's keys start with '/', as shm_open's names do


# -- the registry -------------------------------------------------------------------------------------------------

def test_a_registered_region_is_read_in_place_so_later_client_writes_show_through(registry, client_memory):
    memory = client_memory(4096)
    registry.register("frames", key_of(memory), 0, 4096)
    view = np.frombuffer(registry.read("frames", 16, 8), np.uint8)
    memory.buf[16:24] = bytes(range(8))
    assert view.tolist() == list(range(8)), "the view is the client's memory, not a copy of it"
    assert not view.flags.writeable, "the server never scribbles on a client's input"


def test_a_region_starting_inside_the_object_is_addressed_from_its_own_start(registry, client_memory):
    memory = client_memory(3 * 4096)
    memory.buf[5000:5004] = b"abcd"
    registry.register("late", key_of(memory), 5000, 100)
    assert bytes(registry.read("late", 0, 4)) == b"abcd"
    registry.write("late", 50, b"xyz")
    assert bytes(memory.buf[5050:5053]) == b"xyz"


def test_status_names_each_region_with_its_key_offset_and_size(registry, client_memory):
    first, second = client_memory(4096), client_memory(8192)
    registry.register("a", key_of(first), 0, 4096)
    registry.register("b", key_of(second), 4096, 4096)
    assert {(s.name, s.key, s.offset, s.byte_size) for s in registry.status()} == {
        ("a", key_of(first), 0, 4096), ("b", key_of(second), 4096, 4096)}
    assert [s.name for s in registry.status("b")] == ["b"]
    with pytest.raises(RegionNotFound, match="'c'"):
        registry.status("c")


def test_unregistering_one_region_leaves_the_others_and_with_no_name_removes_all(registry, client_memory):
    for name in ("a", "b", "c"):
        registry.register(name, key_of(client_memory(4096)), 0, 4096)
    registry.unregister("b")
    assert sorted(s.name for s in registry.status()) == ["a", "c"]
    with pytest.raises(RegionNotFound, match="'b'"):
        registry.read("b", 0, 1)
    with pytest.raises(RegionNotFound):
        registry.unregister("b")
    registry.unregister()
    assert registry.status() == []


def test_a_region_unregistered_while_a_request_still_reads_it_stays_readable_for_that_request(registry,
                                                                                               client_memory):
    memory = client_memory(4096)
    memory.buf[0:4] = b"live"
    registry.register("frames", key_of(memory), 0, 4096)
    in_flight = np.frombuffer(registry.read("frames", 0, 4), np.uint8)
    registry.unregister("frames")  # must neither fail nor unmap memory a request still uses
    assert in_flight.tobytes() == b"live"
    registry.register("frames", key_of(memory), 0, 4096)  # the name is free again at once


def test_a_duplicate_name_is_refused_and_the_first_region_keeps_serving(registry, client_memory):
    first, second = client_memory(4096), client_memory(4096)
    first.buf[0] = 1
    registry.register("frames", key_of(first), 0, 4096)
    with pytest.raises(RegionExists, match="'frames'"):
        registry.register("frames", key_of(second), 0, 4096)
    assert bytes(registry.read("frames", 0, 1)) == b"\x01"


def test_a_key_with_no_shared_memory_object_is_refused_naming_it(registry):
    with pytest.raises(KeyNotFound, match="/vigil-no-such-object"):
        registry.register("frames", "/vigil-no-such-object", 0, 4096)


@pytest.mark.parametrize("key", ["/../etc/passwd", "../etc/passwd", "/a/b", "", "/", "/..", "."])
def test_a_key_naming_anything_but_a_shared_memory_object_is_refused(registry, key):
    with pytest.raises(InvalidRegion, match="not the name of a POSIX shared memory object"):
        registry.register("frames", key, 0, 16)


def test_a_symlink_in_dev_shm_is_not_followed(registry, tmp_path):
    target = tmp_path / "server-file"
    target.write_bytes(b"\0" * 4096)
    link = SHM_DIR / f"vigil-test-link-{uuid.uuid4().hex[:12]}"
    link.symlink_to(target)
    try:
        with pytest.raises(InvalidRegion, match="cannot open"):
            registry.register("frames", "/" + link.name, 0, 4096)
    finally:
        link.unlink()


@pytest.mark.parametrize("offset, byte_size", [(0, 4097), (4000, 200), (0, 0), (-1, 10)])
def test_a_region_outside_its_object_or_empty_is_refused(registry, client_memory, offset, byte_size):
    memory = client_memory(4096)
    with pytest.raises(InvalidRegion):
        registry.register("frames", key_of(memory), offset, byte_size)
    assert registry.status() == []


def test_reads_and_writes_outside_the_region_are_refused(registry, client_memory):
    memory = client_memory(8192)
    registry.register("small", key_of(memory), 0, 100)  # the object goes on, the region does not
    with pytest.raises(InvalidRegion, match="outside shared memory region 'small'"):
        registry.read("small", 90, 20)
    with pytest.raises(InvalidRegion, match="do not fit"):
        registry.write("small", 0, b"x" * 20, byte_size=10)
    with pytest.raises(InvalidRegion, match="do not fit the 5 bytes"):
        registry.write("small", 95, b"x" * 10)
    with pytest.raises(InvalidRegion, match="outside"):
        registry.write("small", 95, b"x", byte_size=10)  # room set aside past the region's end
    assert bytes(memory.buf[100:120]) == b"\0" * 20, "nothing was written past the region"


def test_regions_beyond_the_bound_are_refused(client_memory):
    registry = SharedMemoryRegistry(max_regions=2)
    memory = client_memory(4096)
    try:
        registry.register("a", key_of(memory), 0, 4096)
        registry.register("b", key_of(memory), 0, 4096)
        with pytest.raises(TooManyRegions):
            registry.register("c", key_of(memory), 0, 4096)
    finally:
        registry.close()


def test_close_unmaps_every_region(client_memory):
    registry = SharedMemoryRegistry()
    registry.register("a", key_of(client_memory(4096)), 0, 4096)
    registry.close()
    assert registry.status() == []


def test_concurrent_clients_each_with_their_own_region_never_see_each_others_bytes(registry, client_memory):
    memories = [client_memory(4096) for _ in range(8)]
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            for round_ in range(200):
                name = f"client-{index}"
                registry.register(name, key_of(memories[index]), 0, 4096)
                payload = bytes([index, round_ % 256]) * 8
                registry.write(name, 0, payload)
                assert bytes(registry.read(name, 0, len(payload))) == payload
                registry.status()
                registry.unregister(name)
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(memories))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert registry.status() == []


# -- a tensor's shared memory parameters --------------------------------------------------------------------------

def parameters(**values) -> dict[str, pb.InferParameter]:
    out = {}
    for key, value in values.items():
        out[key] = (pb.InferParameter(string_param=value) if isinstance(value, str)
                    else pb.InferParameter(int64_param=value))
    return out


def test_the_parameters_tritonclient_sets_name_the_place_of_a_tensor():
    assert shared_memory_place({}, "input 'image'") is None
    assert shared_memory_place(parameters(shared_memory_region="r", shared_memory_byte_size=12), "x") \
        == SharedMemoryPlace("r", 12, 0)
    assert shared_memory_place(parameters(shared_memory_region="r", shared_memory_byte_size=12,
                                          shared_memory_offset=4), "x") == SharedMemoryPlace("r", 12, 4)


@pytest.mark.parametrize("values, complaint", [
    ({"shared_memory_region": "r"}, "needs shared_memory_byte_size"),
    ({"shared_memory_region": "r", "shared_memory_byte_size": -1}, "must not be negative"),
    ({"shared_memory_region": "r", "shared_memory_byte_size": "12"}, "must be an integer"),
    ({"shared_memory_region": "", "shared_memory_byte_size": 12}, "must be a region's name"),
])
def test_incomplete_shared_memory_parameters_are_refused_naming_the_input(values, complaint):
    with pytest.raises(TensorError, match=f"input 'image'.*{complaint}"):
        shared_memory_place(parameters(**values), "input 'image'")


# -- the gRPC servicer ----------------------------------------------------------------------------------------------

class FrameEchoDetector:
    """Stands in for a model: one detection whose score is the frame's mean pixel / 255, box the whole frame;
    it remembers where the last frame's pixels were, to tell a view of shared memory from a copy."""
    name, version, input_size, inference_precision = "echo", "1", (8, 8), "f32"

    def __init__(self) -> None:
        self.last_address = 0

    def detect(self, bgr: np.ndarray) -> list[Detection]:
        self.last_address = bgr.__array_interface__["data"][0]
        height, width = bgr.shape[:2]
        return [Detection("person", 0, float(bgr.mean()) / 255, (0.0, 0.0, float(width), float(height)))]


@pytest.fixture
def served(registry):
    detector = FrameEchoDetector()
    grpc_server, port = start_grpc_server(ModelServer(detector, max_input_bytes=LIMIT), "127.0.0.1", 0, 2, LIMIT,
                                          shared_memory=registry)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield inference_pb2_grpc.GRPCInferenceServiceStub(channel), detector
    channel.close()
    grpc_server.stop(0).wait()


def image_request(image: np.ndarray, region: str | None = None, offset: int = 0,
                  byte_size: int | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo", id="t")
    tensor = request.inputs.add(name="image", datatype="UINT8", shape=list(image.shape))
    if region is None:
        request.raw_input_contents.append(image.tobytes())
    else:
        tensor.parameters["shared_memory_region"].string_param = region
        tensor.parameters["shared_memory_byte_size"].int64_param = image.nbytes if byte_size is None else byte_size
        tensor.parameters["shared_memory_offset"].int64_param = offset
    return request


def register(stub, name: str, memory: shared_memory.SharedMemory) -> None:
    stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
        name=name, key=key_of(memory), offset=0, byte_size=memory.size))


def status_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def test_an_input_in_shared_memory_reaches_the_detector_without_a_copy(served, registry, client_memory):
    stub, detector = served
    image = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    memory = client_memory(2 * image.nbytes)
    memory.buf[100:100 + image.nbytes] = image.tobytes()
    register(stub, "frames", memory)

    shared = stub.ModelInfer(image_request(image, "frames", offset=100))
    inline = stub.ModelInfer(image_request(image))
    assert shared.raw_output_contents == inline.raw_output_contents
    shared_start = ctypes.addressof(ctypes.c_char.from_buffer(registry._regions["frames"].mapping))
    stub.ModelInfer(image_request(image, "frames", offset=100))
    assert detector.last_address == shared_start + 100, "the detector got the client's memory itself, no copy"


def test_outputs_asked_into_shared_memory_are_written_there_and_left_empty_in_the_response(served, client_memory):
    stub, _ = served
    image = np.full((8, 8, 3), 51, np.uint8)
    memory = client_memory(4096)
    register(stub, "out", memory)
    request = image_request(image)
    boxes = request.outputs.add(name="boxes")
    boxes.parameters["shared_memory_region"].string_param = "out"
    boxes.parameters["shared_memory_byte_size"].int64_param = 1024
    boxes.parameters["shared_memory_offset"].int64_param = 64
    request.outputs.add(name="scores")

    response = stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["boxes", "scores"]
    assert list(response.raw_output_contents) == [b"", struct.pack("<f", np.float32(51 / 255))], \
        "an empty entry keeps the outputs and raw contents aligned"
    assert list(response.outputs[0].shape) == [1, 4]
    assert np.frombuffer(memory.buf[64:80], "<f4").tolist() == [0, 0, 8, 8]


def test_bad_regions_get_their_status_and_the_server_keeps_serving(served, client_memory):
    stub, _ = served
    image = np.zeros((8, 8, 3), np.uint8)
    memory = client_memory(4096)
    register(stub, "frames", memory)
    output_too_small = image_request(image)
    scores = output_too_small.outputs.add(name="scores")
    scores.parameters["shared_memory_region"].string_param = "frames"
    scores.parameters["shared_memory_byte_size"].int64_param = 2
    cases = {
        "unknown region": (image_request(image, "nope"), grpc.StatusCode.NOT_FOUND, "'nope'"),
        "past the region": (image_request(image, "frames", offset=4000), grpc.StatusCode.INVALID_ARGUMENT,
                            "outside"),
        "size not the shape's": (image_request(image, "frames", byte_size=100), grpc.StatusCode.INVALID_ARGUMENT,
                                 "'image'"),
        "above the limit": (image_request(np.zeros((2048, 2048, 3), np.uint8), "frames"),
                            grpc.StatusCode.RESOURCE_EXHAUSTED, "'image'"),
        "output does not fit": (output_too_small, grpc.StatusCode.INVALID_ARGUMENT, "do not fit"),
    }
    for what, (request, code, detail) in cases.items():
        got = status_of(lambda: stub.ModelInfer(request))
        assert got[0] == code and detail in got[1], (what, got)
    assert status_of(lambda: register(stub, "frames", memory))[0] == grpc.StatusCode.ALREADY_EXISTS
    assert status_of(lambda: stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
        name="x", key="/vigil-no-such-object", byte_size=16)))[0] == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="x")))[0] \
        == grpc.StatusCode.NOT_FOUND
    assert stub.ModelInfer(image_request(image, "frames")).model_name == "echo"


def test_status_and_unregister_over_grpc(served, client_memory):
    stub, _ = served
    memory = client_memory(4096)
    register(stub, "a", memory)
    register(stub, "b", memory)
    regions = stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions
    assert {name: (r.name, r.key, r.offset, r.byte_size) for name, r in regions.items()} == {
        "a": ("a", key_of(memory), 0, 4096), "b": ("b", key_of(memory), 0, 4096)}
    stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="a"))
    assert list(stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions) == ["b"]
    stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())
    assert not stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions
    assert "system_shared_memory" in EXTENSIONS


class Aborted(Exception):
    pass


class RemoteCall:
    """A call's context as gRPC gives it for a caller on another host (a real channel is always loopback here)."""

    def __init__(self, peer: str) -> None:
        self._peer = peer
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self):
        return ()

    def abort(self, code, details):
        self.code, self.details = code, details
        raise Aborted(details)


@pytest.mark.parametrize("peer", ["ipv4:10.0.0.7:40000", "ipv6:[2001:db8::1]:40000"])
def test_callers_on_other_hosts_may_neither_register_nor_name_shared_memory(registry, client_memory, peer):
    servicer = InferenceServicer(ModelServer(FrameEchoDetector(), max_input_bytes=LIMIT), shared_memory=registry)
    memory = client_memory(4096)
    calls = {
        "register": lambda context: servicer.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
            name="r", key=key_of(memory), byte_size=4096), context),
        "unregister": lambda context: servicer.SystemSharedMemoryUnregister(
            pb.SystemSharedMemoryUnregisterRequest(), context),
        "infer": lambda context: servicer.ModelInfer(image_request(np.zeros((8, 8, 3), np.uint8), "r"), context),
    }
    registry.register("r", key_of(memory), 0, 4096)  # a local client's region, which a remote one names
    for what, call in calls.items():
        context = RemoteCall(peer)
        with pytest.raises(Aborted):
            call(context)
        assert context.code == grpc.StatusCode.PERMISSION_DENIED and peer in context.details, what
    assert [s.name for s in registry.status()] == ["r"], "the local client's region is untouched"
    inline = servicer.ModelInfer(image_request(np.zeros((8, 8, 3), np.uint8)), RemoteCall(peer))
    assert inline.model_name == "echo", "inline requests from other hosts are served as before"

