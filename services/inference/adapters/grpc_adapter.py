"""The Open Inference Protocol (KServe v2) over gRPC, a thin shell around ModelServer: wire types in and out,
core exceptions to status codes, optional TLS and bearer-token check, a bound on concurrent calls, repository
load/unload kept to administrators (an admin token, or without one the local host only), and system shared memory
(Triton's extension) kept to callers on this host, the only ones that can share memory with it."""
from __future__ import annotations

import hmac
from concurrent import futures
from dataclasses import dataclass

import grpc
import numpy as np
from prometheus_client import Counter, Histogram

from protos import inference_pb2, inference_pb2_grpc
from services.inference.adapters.open_inference_tensors import (
    SharedMemoryPlace, TensorError, decode_input, encode_output, shared_memory_place,
)
from services.inference.core.model_repository import ModelNotFound
from services.inference.core.model_server import (
    DETECTOR_INPUTS, DETECTOR_OUTPUTS, EXTENSIONS, SERVER_NAME, SERVER_VERSION, InputTooLarge, InvalidRequest,
    ModelLoadFailed, ModelServer, UnloadRefused,
)
from services.inference.core.shared_memory import (
    InvalidRegion, KeyNotFound, RegionExists, RegionNotFound, SharedMemoryError, SharedMemoryRegistry, TooManyRegions,
)

# Labelled by the name of the model that was resolved (a loaded model), never by what a client asked for: any
# string a client sends would otherwise become a time series of its own.
GRPC_REQUESTS = Counter("vigil_inference_grpc_requests_total", "ModelInfer requests", ["model", "code"])
GRPC_SECONDS = Histogram("vigil_inference_grpc_seconds", "ModelInfer latency", ["model"])
UNRESOLVED_MODEL = "unknown"  # the label of requests naming no loaded model
ADMIN_TOKEN_METADATA = "x-vigil-admin-token"
# Calls admitted at once when not configured: room for a burst of a hundred clients' calls (each waits for a
# worker at most as long as the ones ahead of it take), never an unbounded queue.
DEFAULT_MAX_CONCURRENT = 128

pb = inference_pb2
SHARED_MEMORY_CODES = {
    RegionNotFound: grpc.StatusCode.NOT_FOUND, KeyNotFound: grpc.StatusCode.NOT_FOUND,
    RegionExists: grpc.StatusCode.ALREADY_EXISTS, InvalidRegion: grpc.StatusCode.INVALID_ARGUMENT,
    TooManyRegions: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Room for the request's metadata around an input of the largest accepted size.
MESSAGE_OVERHEAD_BYTES = 64 * 1024


def admin_call_refusal(peer: str, presented: str | None, admin_token: str | None) -> str | None:
    """Why a repository load/unload from `peer` (gRPC's peer string) is refused, or None when it is allowed:
    with an admin token configured, the call must present it (metadata x-vigil-admin-token); without one, only
    callers on this host (loopback, a unix socket) may change what is served."""
    if admin_token is not None:
        if presented is not None and hmac.compare_digest(presented.encode(), admin_token.encode()):
            return None
        return f"repository load/unload needs the admin token ({ADMIN_TOKEN_METADATA} metadata)"
    if is_local_peer(peer):
        return None
    return (f"repository load/unload from {peer} refused: without VIGIL_INFERENCE_GRPC_ADMIN_TOKEN only callers "
            f"on this host may load or unload models")


def is_local_peer(peer: str) -> bool:
    """gRPC peer strings: ipv4:127.0.0.1:5000, ipv6:[::1]:5000, unix:/path."""
    if peer.startswith("unix:"):
        return True
    if peer.startswith("ipv4:"):
        return peer[len("ipv4:"):].startswith("127.")
    if peer.startswith("ipv6:"):
        host = peer[len("ipv6:"):].rsplit(":", 1)[0].strip("[]").lower()
        return host in ("::1", "0:0:0:0:0:0:0:1") or host.startswith("::ffff:127.")
    return False


class SharedMemoryFromAfar(PermissionError):
    """A caller not on this host named a shared memory region: whatever it names is another client's memory."""


def shared_memory_code(exc: SharedMemoryError) -> grpc.StatusCode:
    return next(code for kind, code in SHARED_MEMORY_CODES.items() if isinstance(exc, kind))


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, server: ModelServer, admin_token: str | None = None,
                 shared_memory: SharedMemoryRegistry | None = None) -> None:
        self.server = server
        self.admin_token = admin_token
        self.shared_memory = shared_memory if shared_memory is not None else SharedMemoryRegistry()

    def _require_admin(self, context) -> None:
        presented = dict(context.invocation_metadata() or ()).get(ADMIN_TOKEN_METADATA)
        refusal = admin_call_refusal(context.peer(), presented, self.admin_token)
        if refusal is not None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)

    def _require_local(self, context, what: str) -> None:
        if not is_local_peer(context.peer()):
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"{what} from {context.peer()} refused: shared memory is for callers on this host")

    def _metric_label(self, request: pb.ModelInferRequest) -> str:
        try:
            return self.server.model(request.model_name, request.model_version).name
        except ModelNotFound:
            return UNRESOLVED_MODEL

    def ServerLive(self, request, context):  # noqa: N802 (names are the protocol's)
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):  # noqa: N802
        return pb.ServerReadyResponse(ready=self.server.ready.is_set())

    def ModelReady(self, request, context):  # noqa: N802
        try:
            self.server.model(request.name, request.version)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.server.ready.is_set())

    def ServerMetadata(self, request, context):  # noqa: N802
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=list(EXTENSIONS))

    def ModelMetadata(self, request, context):  # noqa: N802
        try:
            model = self.server.model(request.name, request.version)
        except ModelNotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name, versions=[model.version], platform="openvino",
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in DETECTOR_INPUTS],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in DETECTOR_OUTPUTS],
        )

    def ModelInfer(self, request, context):  # noqa: N802
        label = self._metric_label(request)
        with GRPC_SECONDS.labels(label).time():
            try:
                response = self._infer(request, context.peer())
                GRPC_REQUESTS.labels(label, "OK").inc()
                return response
            except ModelNotFound as exc:
                code, message = grpc.StatusCode.NOT_FOUND, str(exc)
            except InputTooLarge as exc:
                code, message = grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
            except (InvalidRequest, TensorError) as exc:
                code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            except SharedMemoryError as exc:
                code, message = shared_memory_code(exc), str(exc)
            except SharedMemoryFromAfar as exc:
                code, message = grpc.StatusCode.PERMISSION_DENIED, str(exc)
            GRPC_REQUESTS.labels(label, code.name).inc()
            context.abort(code, message)

    def RepositoryIndex(self, request, context):  # noqa: N802
        entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[
            entry(name=e.name, version=e.version, state=e.state, reason=e.reason)
            for e in self.server.index(ready_only=request.ready)
        ])

    def RepositoryModelLoad(self, request, context):  # noqa: N802
        self._require_admin(context)
        try:
            self.server.load(request.model_name)
        except ModelNotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except ModelLoadFailed as exc:
            context.abort(grpc.StatusCode.INTERNAL, str(exc))
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):  # noqa: N802
        self._require_admin(context)
        try:
            self.server.unload(request.model_name)
        except ModelNotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except UnloadRefused as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.RepositoryModelUnloadResponse()

    # -- the system shared memory extension ------------------------------------------------------------------

    def SystemSharedMemoryStatus(self, request, context):  # noqa: N802
        regions = self._on_shared_memory(context, lambda: self.shared_memory.status(request.name))
        status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        return pb.SystemSharedMemoryStatusResponse(regions={
            r.name: status(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size) for r in regions
        })

    def SystemSharedMemoryRegister(self, request, context):  # noqa: N802
        self._require_local(context, "shared memory registration")
        self._on_shared_memory(context, lambda: self.shared_memory.register(request.name, request.key,
                                                                            request.offset, request.byte_size))
        return pb.SystemSharedMemoryRegisterResponse()

    def SystemSharedMemoryUnregister(self, request, context):  # noqa: N802
        self._require_local(context, "shared memory unregistration")
        self._on_shared_memory(context, lambda: self.shared_memory.unregister(request.name))
        return pb.SystemSharedMemoryUnregisterResponse()

    @staticmethod
    def _on_shared_memory(context, action):
        """action()'s result; a registry refusal ends the call with its status."""
        try:
            return action()
        except SharedMemoryError as exc:
            context.abort(shared_memory_code(exc), str(exc))

    # -- inference ---------------------------------------------------------------------------------------------

    def _infer(self, request: pb.ModelInferRequest, peer: str) -> pb.ModelInferResponse:
        in_places = [shared_memory_place(t.parameters, f"input '{t.name}'") for t in request.inputs]
        out_places = {o.name: shared_memory_place(o.parameters, f"output '{o.name}'") for o in request.outputs}
        if not is_local_peer(peer) and any(p is not None for p in (*in_places, *out_places.values())):
            raise SharedMemoryFromAfar(f"shared memory named by {peer}, not on this host")
        self.server.model(request.model_name, request.model_version)  # NOT_FOUND before any input error
        for tensor in request.inputs:
            self.server.check_input_size(tensor.name, tensor.datatype, list(tensor.shape))
        inputs = self._inputs(request, in_places)
        camera = request.parameters.get("camera_id")  # optional: picks a re-scored model's camera thresholds
        model, outputs = self.server.detect(request.model_name, request.model_version, inputs,
                                            camera.string_param if camera is not None else "")
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        self._add_outputs(response, request, outputs, out_places)
        return response

    def _add_outputs(self, response: pb.ModelInferResponse, request: pb.ModelInferRequest,
                     outputs: dict[str, np.ndarray], places: dict[str, SharedMemoryPlace | None]) -> None:
        """The outputs asked for (all when none is named): into shared memory when the request says so, else as
        raw contents."""
        wanted = {o.name for o in request.outputs} or {t.name for t in DETECTOR_OUTPUTS}
        unknown = wanted - {t.name for t in DETECTOR_OUTPUTS}
        if unknown:
            raise InvalidRequest(f"unknown output '{sorted(unknown)[0]}' requested")
        for spec in DETECTOR_OUTPUTS:
            if spec.name not in wanted:
                continue
            value = outputs[spec.name]
            meta, data = encode_output(spec.name, value, spec.datatype, value.shape)
            place = places.get(spec.name)
            if place is not None:
                self.shared_memory.write(place.region, place.offset, data, place.byte_size)
                # As Triton: an empty entry, so raw_output_contents stays aligned with outputs (clients index it).
                data = b""
            response.outputs.append(meta)
            response.raw_output_contents.append(data)

    def _inputs(self, request: pb.ModelInferRequest, places: list[SharedMemoryPlace | None]
                ) -> dict[str, tuple[str, np.ndarray]]:
        """name -> (datatype, array). As in Triton, raw_input_contents holds only the inputs not in shared memory,
        in order; one in shared memory is read in place."""
        raw = list(request.raw_input_contents)
        inline = sum(place is None for place in places)
        if raw and len(raw) != inline:
            raise InvalidRequest(f"{len(raw)} raw_input_contents for {inline} inputs not in shared memory")
        raw_contents = iter(raw)
        inputs = {}
        for tensor, place in zip(request.inputs, places):
            if place is not None:
                data = self._shared_input(tensor.name, place)
            else:
                data = next(raw_contents) if raw else None
            inputs[tensor.name] = (tensor.datatype, decode_input(tensor, data))
        return inputs

    def _shared_input(self, name: str, place: SharedMemoryPlace) -> memoryview:
        # The declared shape was checked against the limit; this bounds BYTES inputs, whose shape says little.
        if place.byte_size > self.server.max_input_bytes:
            raise InputTooLarge(f"input '{name}': {place.byte_size} bytes in shared memory > limit "
                                f"{self.server.max_input_bytes}")
        return self.shared_memory.read(place.region, place.offset, place.byte_size)


@dataclass(frozen=True)
class GrpcSecurity:
    """TLS (PEM certificate chain and private key), a bearer token every call must present, and the admin token
    repository load/unload must present; all optional."""

    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    bearer_token: str | None = None
    admin_token: str | None = None


class BearerTokenCheck(grpc.ServerInterceptor):
    """Refuses (UNAUTHENTICATED) any call without `authorization: Bearer <token>` metadata."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self._refusal = grpc.unary_unary_rpc_method_handler(refuse)

    def intercept_service(self, continuation, handler_call_details):
        presented = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(presented.encode(), self._expected):
            return continuation(handler_call_details)
        return self._refusal


def start_grpc_server(server: ModelServer, host: str, port: int, workers: int, max_input_bytes: int,
                      security: GrpcSecurity = GrpcSecurity(), max_concurrent: int | None = None,
                      shared_memory: SharedMemoryRegistry | None = None) -> tuple[grpc.Server, int]:
    """max_concurrent: calls admitted at once, running on one of the `workers` threads or waiting for one
    (default: DEFAULT_MAX_CONCURRENT); a call beyond it is refused at once with RESOURCE_EXHAUSTED instead of
    joining an unbounded queue, so a burst cannot pile up latency and memory without end. shared_memory: the
    registry of system shared memory regions (default: one of its own); the caller closes it after stopping."""
    max_message = max_input_bytes + MESSAGE_OVERHEAD_BYTES
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        maximum_concurrent_rpcs=max_concurrent or DEFAULT_MAX_CONCURRENT,
        interceptors=[BearerTokenCheck(security.bearer_token)] if security.bearer_token else [],
        options=[
            # A bigger request is refused by gRPC itself (RESOURCE_EXHAUSTED) before it is even parsed.
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
        ],
    )
    servicer = InferenceServicer(server, security.admin_token, shared_memory)
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, grpc_server)
    address = f"{host}:{port}"
    if security.tls_cert and security.tls_key:
        bound = grpc_server.add_secure_port(address, grpc.ssl_server_credentials([(security.tls_key,
                                                                                   security.tls_cert)]))
    else:
        bound = grpc_server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    grpc_server.start()
    return grpc_server, bound
