"""Dataset items for the datasets tests: an item with sensible defaults, and small distinct JPEGs."""
from __future__ import annotations

import hashlib

import cv2
import numpy as np

from services.datasets.manifest import Item, Label

T0 = 1_764_403_200.0  # 2025-11-29 08:00:00 UTC, on a 10-minute boundary


def item(item_id: str, *labels: tuple, blob: str | None = None, size: int = 100, width: int = 640,
         height: int = 480, camera_id: str = "cam-1", captured_at: float = T0, split: str = "train",
         verdict: str | None = None, schema_version: str = "", **fields) -> Item:
    """An item whose labels are (class, x1, y1, x2, y2) tuples; labelled when it has any, else nothing_to_label."""
    return Item(item_id=item_id, blob=blob or hashlib.sha256(item_id.encode()).hexdigest(), size=size,
                width=width, height=height, camera_id=camera_id, captured_at=captured_at, split=split,
                source_task_ids=(f"task-{item_id}",),
                labels=tuple(Label(name, tuple(float(v) for v in box)) for name, *box in labels),
                verdict=verdict or ("labelled" if labels else "nothing_to_label"), schema_version=schema_version,
                **fields)


def jpeg(seed: int, width: int = 160, height: int = 120, brightness: int = 0) -> bytes:
    """A JPEG of smooth random shapes (pHash sees its structure), distinct per seed; `brightness` shifts it."""
    rng = np.random.default_rng(seed)
    picture = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (width, height),
                         interpolation=cv2.INTER_CUBIC).astype(np.int16)
    picture = np.clip(picture + brightness, 0, 255).astype(np.uint8)
    return cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
