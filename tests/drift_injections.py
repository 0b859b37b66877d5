"""The drifts injected into real footage by the drift tests and the drift benchmark (issue #10's harness): dusk
(brightness to 30%), defocus (Gaussian blur, sigma 3), a knocked camera (the view shifted by 20%), half the frame
covered, a 10 degree rotation."""
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
        return cv2.warpAffine(frame, np.float32([[1, 0, 0.2 * w], [0, 1, 0]]), (w, h))
    if name == "covered":
        covered = frame.copy()
        covered[:, w // 2:] = 0
        return covered
    if name == "rotated":
        return cv2.warpAffine(frame, cv2.getRotationMatrix2D((w / 2, h / 2), 10, 1.0), (w, h))
    return frame
