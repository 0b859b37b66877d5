"""Faces blurred before an image is stored for people to see (annotation tasks, imported dataset items), found by
the CenterFace model that inference serves (a gRPC ModelInfer call over the Open Inference Protocol, the JPEG as
the `image_bytes` input).

When the face model cannot be reached, no image is stored: FacesUnavailable makes the caller retry later (the
annotation intake retries its batch) rather than keep an unblurred image."""
from __future__ import annotations

import cv2
import grpc
import numpy as np
from prometheus_client import Counter

from protos import inference_pb2, inference_pb2_grpc

BLURRED = Counter("vigil_faces_blurred_total", "Faces blurred in images before they were stored")
# A face box grown by this share on each side: CenterFace's boxes are tight, hair and ears identify people too.
MARGIN = 0.2


class FacesUnavailable(RuntimeError):
    """The face model did not answer: the image must not be stored unblurred."""


class FaceBlurrer:
    def __init__(self, target: str, model: str = "centerface", min_score: float = 0.3, timeout_s: float = 10.0,
                 token: str | None = None) -> None:
        self.model = model
        self.min_score = min_score
        self.timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 32 << 20),
                                                               ("grpc.max_receive_message_length", 32 << 20)])
        self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def faces(self, jpeg: bytes) -> np.ndarray:
        """Face boxes (N, 4) in pixels x1, y1, x2, y2, scored at least min_score."""
        request = inference_pb2.ModelInferRequest(model_name=self.model)
        request.inputs.append(inference_pb2.ModelInferRequest.InferInputTensor(
            name="image_bytes", datatype="BYTES", shape=[1],
            contents=inference_pb2.InferTensorContents(bytes_contents=[jpeg])))
        try:
            response = self._stub.ModelInfer(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise FacesUnavailable(f"{self.model}: {exc.code()}: {exc.details()}") from exc
        outputs = {o.name: (o, raw) for o, raw in zip(response.outputs, response.raw_output_contents)}
        boxes_meta, boxes_raw = outputs["boxes"]
        _, scores_raw = outputs["scores"]
        boxes = np.frombuffer(boxes_raw, dtype="<f4").reshape(-1, 4)
        scores = np.frombuffer(scores_raw, dtype="<f4")
        return boxes[scores >= self.min_score]

    def blur(self, jpeg: bytes) -> tuple[bytes, int]:
        """The image with every face found blurred beyond recognition, and how many there were (the bytes as
        given when none)."""
        boxes = self.faces(jpeg)
        if len(boxes) == 0:
            return jpeg, 0
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        blur_faces(image, boxes)
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError("could not encode the blurred image")
        BLURRED.inc(len(boxes))
        return encoded.tobytes(), len(boxes)


def blur_faces(image: np.ndarray, boxes: np.ndarray) -> None:
    """Blurs each box (grown by MARGIN) in place: pixelated to an 8x8 mosaic, then smoothed, so no detail of the
    face survives whatever its size."""
    height, width = image.shape[:2]
    for x1, y1, x2, y2 in boxes:
        dx, dy = (x2 - x1) * MARGIN, (y2 - y1) * MARGIN
        left, top = max(0, int(x1 - dx)), max(0, int(y1 - dy))
        right, bottom = min(width, int(np.ceil(x2 + dx))), min(height, int(np.ceil(y2 + dy)))
        if right - left < 2 or bottom - top < 2:
            continue
        region = image[top:bottom, left:right]
        mosaic = cv2.resize(region, (8, 8), interpolation=cv2.INTER_AREA)
        region[:] = cv2.GaussianBlur(cv2.resize(mosaic, (right - left, bottom - top),
                                                interpolation=cv2.INTER_LINEAR), (0, 0), 3)
