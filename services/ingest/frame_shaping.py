"""What is done to a frame before it is encoded: region-of-interest mask, downscale, and the motion gate
that skips frames in which nothing moved."""
from __future__ import annotations

import cv2
import numpy as np


def apply_roi(image: np.ndarray, roi: tuple[tuple[float, float, float, float], ...]) -> np.ndarray:
    """Blacks out everything outside the regions (normalized x1, y1, x2, y2). No regions: unchanged."""
    if not roi:
        return image
    height, width = image.shape[:2]
    masked = np.zeros_like(image)
    for x1, y1, x2, y2 in roi:
        top, bottom = int(round(y1 * height)), int(round(y2 * height))
        left, right = int(round(x1 * width)), int(round(x2 * width))
        masked[top:bottom, left:right] = image[top:bottom, left:right]
    return masked


def fit_within(image: np.ndarray, max_width: int, max_height: int) -> np.ndarray:
    """Downscales (never upscales) to fit max_width x max_height, keeping the aspect ratio; 0 = no limit."""
    height, width = image.shape[:2]
    scale = min(max_width / width if max_width else 1.0, max_height / height if max_height else 1.0)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class MotionGate:
    """Keeps a frame when enough of it changed since the last kept frame.

    Compared on a small blurred grey thumbnail, so sensor noise and compression artefacts do not count as
    motion and the cost per frame stays a fraction of a millisecond."""

    THUMBNAIL_WIDTH = 160
    PIXEL_DELTA = 25  # grey levels a pixel must change by to count as changed

    def __init__(self, min_changed_fraction: float) -> None:
        self.min_changed_fraction = min_changed_fraction
        self._last: np.ndarray | None = None
        self.skipped = 0

    def keep(self, image: np.ndarray) -> bool:
        if self.min_changed_fraction <= 0:
            return True
        height, width = image.shape[:2]
        thumb = cv2.resize(image, (self.THUMBNAIL_WIDTH, max(1, height * self.THUMBNAIL_WIDTH // width)),
                           interpolation=cv2.INTER_AREA)
        grey = cv2.GaussianBlur(cv2.cvtColor(thumb, cv2.COLOR_BGR2GRAY), (5, 5), 0)
        if self._last is None or self._last.shape != grey.shape:
            self._last = grey
            return True
        changed = np.count_nonzero(cv2.absdiff(grey, self._last) > self.PIXEL_DELTA) / grey.size
        if changed < self.min_changed_fraction:
            self.skipped += 1
            return False
        self._last = grey
        return True
