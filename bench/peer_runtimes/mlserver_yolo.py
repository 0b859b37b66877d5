"""MLServer runtime: Vigil's yolov3-tiny as an `MLModel`. predict hands the blocking detect to a thread, so
requests overlap on the compiled model's infer requests (a blocking predict would serve one at a time, since
MLServer awaits it on its event loop)."""
from __future__ import annotations

import asyncio

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from bench.peer_runtimes.yolo_work import detections_as_arrays, image_from_jpeg, load_detector


class YoloRuntime(MLModel):
    async def load(self) -> bool:
        self.detector = load_detector(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        request_input = payload.inputs[0]
        if request_input.name == "image":
            image = NumpyCodec.decode_input(request_input).reshape(request_input.shape).astype(np.uint8, copy=False)
        elif request_input.name == "image_bytes":
            data = getattr(request_input.data, "root", request_input.data)
            image = image_from_jpeg(data[0])
        else:
            raise ValueError(f"unknown input {request_input.name!r}")
        outputs = await asyncio.get_running_loop().run_in_executor(None, detections_as_arrays, self.detector, image)
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[
            ResponseOutput(name="boxes", datatype="FP32", shape=list(outputs["boxes"].shape),
                           data=outputs["boxes"].reshape(-1).tolist()),
            ResponseOutput(name="scores", datatype="FP32", shape=list(outputs["scores"].shape),
                           data=outputs["scores"].tolist()),
            ResponseOutput(name="classes", datatype="BYTES", shape=list(outputs["classes"].shape),
                           data=list(outputs["classes"])),
        ])
