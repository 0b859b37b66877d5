"""The drifts injected into real footage by the drift tests and the drift benchmark (issue #10's harness): dusk
(brightness to 30%), defocus (Gaussian blur, sigma 3), a knocked camera (the view shifted by 20%), half the frame
covered, a 10 degree rotation.

A shifted or turned view is filled at its edges with the picture mirrored, not with black: a knocked or tilted
camera sees more of the scene there, not a black band. Black fill (cv2.warpAffine's default) put 21% (shift) and
8% (rotation) of the frame at luma 0, so those drifts were caught by the share of under-exposed pixels, an
artefact of the injection rather than what such a camera shows. Covering half the frame is meant to be dark."""
from __future__ import annotations

import cv2
import numpy as np

DRIFTS = ("dusk", "defocus", "knocked", "covered", "rotated")


def injected(name: str, frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if name == "dusk":
        return (frame * 0.3).astype(np.uint8)
    if name == "defocus":
        return cv2.GaussianBlur(frame, (0, 0), 3)
    if name == "knocked":
        return cv2.warpAffine(frame, np.float32([[1, 0, 0.2 * w], [0, 1, 0]]), (w, h),
                              borderMode=cv2.BORDER_REFLECT)
    if name == "covered":
        covered = frame.copy()
        covered[:, w // 2:] = 0
        return covered
    if name == "rotated":
        return cv2.warpAffine(frame, cv2.getRotationMatrix2D((w / 2, h / 2), 10, 1.0), (w, h),
                              borderMode=cv2.BORDER_REFLECT)
    return frame
