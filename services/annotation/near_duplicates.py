"""Near-duplicate frames: a 64-bit perceptual hash (imagehash's pHash) of a JPEG decoded cheaply, and one camera's
bounded memory of the hashes of its recently selected frames, so a static scene is not sent to people twice."""
from __future__ import annotations

from collections import deque

import cv2
import imagehash
import numpy as np
from PIL import Image

HASH_BITS = 64


def perceptual_hash(jpeg: bytes) -> imagehash.ImageHash:
    """pHash (8x8 DCT signs, 64 bits) of the JPEG decoded by libjpeg at a quarter of its size in grey: pHash
    shrinks to 32x32 anyway, and the reduced decode (IDCT scaling) costs a fraction of a full one."""
    data = np.frombuffer(jpeg, dtype=np.uint8)
    gray = cv2.imdecode(data, cv2.IMREAD_REDUCED_GRAYSCALE_4)
    if gray is None:
        raise ValueError(f"not a decodable image ({len(jpeg)} bytes)")
    if min(gray.shape) < 32:  # a small image: every pixel it has, rather than fewer than pHash's 32x32
        gray = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    return imagehash.phash(Image.fromarray(gray))


def hash_bits(image_hash: imagehash.ImageHash | int) -> int:
    """The hash as a 64-bit integer (Hamming distance is then a XOR and a popcount)."""
    if isinstance(image_hash, int):
        return image_hash
    return int.from_bytes(np.packbits(image_hash.hash.flatten()).tobytes(), "big")


class RecentHashes:
    """One camera's recently selected frames' hashes: at most `capacity`, none older than `max_age_s`."""

    __slots__ = ("capacity", "max_age_s", "_entries")

    def __init__(self, capacity: int = 256, max_age_s: float = 3600.0):
        self.capacity = capacity
        self.max_age_s = max_age_s
        self._entries: deque[tuple[float, int]] = deque(maxlen=capacity)  # (selected at, hash bits)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, image_hash: imagehash.ImageHash | int, at: float) -> None:
        self._entries.append((at, hash_bits(image_hash)))

    def nearest(self, image_hash: imagehash.ImageHash | int, now: float) -> int | None:
        """The smallest Hamming distance to a hash kept (expired ones dropped first), None when none is kept."""
        self._expire(now)
        if not self._entries:
            return None
        bits = hash_bits(image_hash)
        return min((bits ^ kept).bit_count() for _at, kept in self._entries)

    def _expire(self, now: float) -> None:
        # Entries are appended in (nearly) time order; a restored older one behind a newer one just waits.
        oldest = now - self.max_age_s
        while self._entries and self._entries[0][0] < oldest:
            self._entries.popleft()
