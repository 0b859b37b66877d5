"""Turns a camera frame into a frame event: JPEG-encode, image statistics, envelope, sequence number."""
from __future__ import annotations

import cv2
import numpy as np

from libs.common.envelope import new_envelope
from libs.common.stage_cpu import stage_cpu
from protos import events_pb2
from services.ingest.image_stats import image_stats

PRODUCER = "ingest"


class FrameEncodingError(RuntimeError):
    pass


class FrameEventBuilder:
    """One per camera: owns the camera's sequence numbers."""

    def __init__(self, camera_id: str, jpeg_quality: int = 85) -> None:
        self.camera_id = camera_id
        self.jpeg_quality = jpeg_quality
        self.sequence = 0

    def build(self, image: np.ndarray, capture_time_ns: int, time_from_stream: bool) -> events_pb2.Frame:
        with stage_cpu("ingest.encode"):
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise FrameEncodingError(f"camera {self.camera_id}: JPEG encoding failed for {image.shape}")
        height, width = image.shape[:2]
        frame = events_pb2.Frame(
            envelope=new_envelope(f"camera/{self.camera_id}", PRODUCER, event_time_ns=capture_time_ns),
            camera_id=self.camera_id,
            sequence=self.sequence,
            width=width,
            height=height,
            encoding="jpeg",
            data=jpeg.tobytes(),
            capture_time_from_stream=time_from_stream,
        )
        with stage_cpu("ingest.stats"):
            frame.image_stats.CopyFrom(image_stats(image))
        self.sequence += 1
        return frame
