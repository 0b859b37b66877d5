"""Canary routing: which cameras go to a candidate model. A camera's place in [0, 1) is a stable hash of its
id (sha256, the same in every process and on every replica, unlike Python's hash()), so a camera always goes
the same way and a share s sends the cameras below s to the candidate. Raising the share only adds cameras:
none that was on the candidate goes back."""
from __future__ import annotations

import hashlib


def camera_position(camera_id: str) -> float:
    """A number in [0, 1) that depends on the camera id only, spread uniformly over cameras."""
    digest = hashlib.sha256(camera_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def in_canary(camera_id: str, share: float) -> bool:
    """Whether a camera's frames go to the canary model when `share` (0..1) of cameras do."""
    return camera_position(camera_id) < share
