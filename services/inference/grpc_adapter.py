"""The Open Inference Protocol (KServe v2) over gRPC, a thin shell around ModelServer."""
from __future__ import annotations

from concurrent import futures

import grpc
from prometheus_client import Counter, Histogram

from protos import inference_pb2, inference_pb2_grpc
from services.inference.serving import (
    DETECTOR_INPUTS, DETECTOR_OUTPUTS, SERVER_NAME, SERVER_VERSION, InvalidRequest, ModelNotFound, ModelServer,
)
from services.inference.tensors import TensorError, decode_input, encode_output

GRPC_REQUESTS = Counter("vigil_inference_grpc_requests_total", "ModelInfer requests", ["model", "code"])
GRPC_SECONDS = Histogram("vigil_inference_grpc_seconds", "ModelInfer latency", ["model"])

pb = inference_pb2


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, server: ModelServer) -> None:
        self.server = server

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
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

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
        with GRPC_SECONDS.labels(request.model_name).time():
            try:
                response = self._infer(request)
                GRPC_REQUESTS.labels(request.model_name, "OK").inc()
                return response
            except ModelNotFound as exc:
                GRPC_REQUESTS.labels(request.model_name, "NOT_FOUND").inc()
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            except (InvalidRequest, TensorError) as exc:
                GRPC_REQUESTS.labels(request.model_name, "INVALID_ARGUMENT").inc()
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise InvalidRequest(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
        inputs = {
            tensor.name: (tensor.datatype, decode_input(tensor, raw[i] if raw else None))
            for i, tensor in enumerate(request.inputs)
        }
        outputs = self.server.detect(request.model_name, request.model_version, inputs)
        model = self.server.model(request.model_name, request.model_version)
        wanted = {o.name for o in request.outputs} or {t.name for t in DETECTOR_OUTPUTS}
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        for spec in DETECTOR_OUTPUTS:
            if spec.name not in wanted:
                continue
            value = outputs[spec.name]
            meta, data = encode_output(spec.name, value, spec.datatype, value.shape)
            response.outputs.append(meta)
            response.raw_output_contents.append(data)
        return response


def start_grpc_server(server: ModelServer, host: str, port: int, workers: int, max_message_bytes: int) -> tuple[grpc.Server, int]:
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(server), grpc_server)
    bound = grpc_server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC server to {host}:{port}")
    grpc_server.start()
    return grpc_server, bound
