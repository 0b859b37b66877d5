"""Runs tritonclient against the inference server in a process of its own and prints what it saw as JSON.

A process of its own because tritonclient registers its copy of the `inference` protos in the global
descriptor pool, which clashes with ours; a real client process never loads both."""
from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def status_of(call) -> str:
    try:
        call()
        return "OK"
    except InferenceServerException as error:
        return f"{error.status()}: {error.message()}"


def main(url: str, image_path: str, frame_index: int) -> None:
    client = triton.InferenceServerClient(url=url)
    capture = cv2.VideoCapture(image_path)
    capture.set(cv2.CAP_PROP_POS_FRAMES, frame_index)
    ok, image = capture.read()
    assert ok, f"cannot read frame {frame_index} of {image_path}"

    image_input = triton.InferInput("image", list(image.shape), "UINT8")
    image_input.set_data_from_numpy(image)
    response = client.infer("yolov3-tiny", [image_input])
    wrong = triton.InferInput("image", [4, 4, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((4, 4, 3), np.float32))

    print(json.dumps({
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("yolov3-tiny"),
        "metadata": client.get_model_metadata("yolov3-tiny", as_json=True),
        "boxes_shape": list(response.as_numpy("boxes").shape),
        "scores": response.as_numpy("scores").tolist(),
        "classes": [c.decode() for c in response.as_numpy("classes")],
        "wrong_dtype": status_of(lambda: client.infer("yolov3-tiny", [wrong])),
        "unknown_model": status_of(lambda: client.get_model_metadata("no-such-model")),
    }))
    client.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
