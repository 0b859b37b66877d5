"""KServe runtime: Vigil's yolov3-tiny as a `kserve.Model`, served by KServe's ModelServer with gRPC enabled.
`python -m bench.peer_runtimes.kserve_yolo MODEL_DIR --grpc_port P --http_port Q [ModelServer flags]`.

predict is async and hands the blocking detect to the event loop's executor (KServe awaits an async predict on
its event loop and calls a sync one right there, blocking it: requests would then run one at a time).
KServe binds 0.0.0.0 (REST) and [::] (gRPC) with no option to change it (in a pod that is the pod's address),
so this launcher narrows both to 127.0.0.1 before the servers are made."""
from __future__ import annotations

import asyncio
import sys

import grpc.aio
import uvicorn

from bench.peer_runtimes.yolo_work import MODEL_NAME, detections_as_arrays, image_from_jpeg, load_detector


def bind_loopback_only() -> None:
    import kserve.protocol.grpc.server as grpc_server_module
    import kserve.protocol.rest.server as rest_server_module

    real_config = uvicorn.Config

    def loopback_config(*args, **kwargs):
        kwargs["host"] = "127.0.0.1"
        return real_config(*args, **kwargs)

    real_server = grpc.aio.server

    def loopback_server(*args, **kwargs):
        server = real_server(*args, **kwargs)
        add_port = server.add_insecure_port
        server.add_insecure_port = lambda address: add_port(address.replace("[::]", "127.0.0.1"))
        return server

    rest_server_module.uvicorn.Config = loopback_config
    grpc_server_module.aio.server = loopback_server


def main() -> None:
    model_dir = sys.argv.pop(1)  # the rest are ModelServer's own flags, which kserve parses from sys.argv
    bind_loopback_only()
    import kserve
    from kserve import InferOutput, InferRequest, InferResponse

    class YoloModel(kserve.Model):
        def load(self) -> bool:
            self.detector = load_detector(model_dir)
            self.ready = True
            return self.ready

        async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
            request_input = payload.inputs[0]
            if request_input.name == "image":
                image = request_input.as_numpy()
            elif request_input.name == "image_bytes":
                image = image_from_jpeg(request_input.as_numpy().reshape(-1)[0])
            else:
                raise ValueError(f"unknown input {request_input.name!r}")
            arrays = await asyncio.get_running_loop().run_in_executor(None, detections_as_arrays, self.detector,
                                                                      image)
            outputs = []
            for name, datatype in (("boxes", "FP32"), ("scores", "FP32"), ("classes", "BYTES")):
                output = InferOutput(name=name, shape=list(arrays[name].shape), datatype=datatype)
                output.set_data_from_numpy(arrays[name])
                outputs.append(output)
            return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outputs,
                                 use_binary_outputs=payload.use_binary_outputs)

    model = YoloModel(MODEL_NAME)
    model.load()
    kserve.ModelServer().start([model])


if __name__ == "__main__":
    main()
