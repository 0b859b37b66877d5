"""Stable train/val/test splits, and the leakage check across them.

An item's split is a pure function of its group key: the sha256 of the key read as a number in [0, 1) against the
cumulative ratios. sha256 (not Python's salted `hash`) gives the same answer in every process, run and machine,
and adding items never moves an existing one. The group key is the camera and a 10-minute bucket of the capture
time, so the near-identical neighbouring frames of one camera land in one split, and a model is not validated on
frames a few seconds away from ones it trained on.

Frames either side of a bucket boundary (09:59:59 and 10:00:01) are neighbours in different groups: a fixed
bucket is what keeps the assignment stable as items arrive (grouping by gaps between frames would re-draw groups
when a new frame bridges two). `leakage` finds such pairs, and any other near-duplicate images across splits
(a static scene seen days apart), by the Hamming distance of their 64-bit perceptual hashes (imagehash's pHash)."""
from __future__ import annotations

import functools
import hashlib
import io
import math
from typing import Protocol, Sequence

import imagehash
import numpy as np
from PIL import Image

from services.datasets.manifest import SPLITS, Item, Manifest

DEFAULT_RATIOS = (0.8, 0.1, 0.1)
DEFAULT_BUCKET_S = 600.0
# Hashes compared at once in the leakage check: a block of 256 rows against 10,000 items is 20 MB of XORs.
_BLOCK = 256


def group_key(camera_id: str, captured_at: float, bucket_s: float = DEFAULT_BUCKET_S) -> str:
    """The camera and the number of the `bucket_s`-second bucket (counted from the epoch) the capture falls in."""
    if not (math.isfinite(captured_at) and bucket_s > 0):
        raise ValueError(f"captured_at {captured_at!r} and bucket_s {bucket_s!r} must be finite, bucket_s > 0")
    return f"{camera_id}@{int(captured_at // bucket_s)}"


@functools.lru_cache(maxsize=65536)  # a dataset has few groups (cameras x buckets) for many items
def assign_split(group_key: str, ratios: Sequence[float] = DEFAULT_RATIOS) -> str:
    """"train", "val" or "test" for the group, the same wherever and whenever it is asked."""
    if len(ratios) != len(SPLITS) or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be {len(SPLITS)} non-negative numbers with a positive sum, not {ratios}")
    # 52 bits of the digest: exactly representable as a float fraction in [0, 1).
    point = (int.from_bytes(hashlib.sha256(group_key.encode()).digest()[:8], "big") >> 12) / 2**52
    total, cumulative = sum(ratios), 0.0
    for name, ratio in zip(SPLITS, ratios):
        cumulative += ratio / total
        if point < cumulative:
            return name
    return next(name for name, ratio in zip(reversed(SPLITS), reversed(ratios)) if ratio > 0)


def item_split(item: Item, ratios: Sequence[float] = DEFAULT_RATIOS, bucket_s: float = DEFAULT_BUCKET_S) -> str:
    return assign_split(group_key(item.camera_id, item.captured_at, bucket_s), tuple(ratios))


# --- leakage --------------------------------------------------------------------------------------------------------


class BlobSource(Protocol):
    def get_blob(self, sha256: str) -> bytes: ...


def image_hash_bits(image: bytes) -> int:
    """pHash of the image as a 64-bit integer. A JPEG is decoded at a reduced scale in grey (PIL's draft mode:
    libjpeg's IDCT scaling), which is all pHash's 32x32 resample needs."""
    with Image.open(io.BytesIO(image)) as picture:
        picture.draft("L", (128, 128))
        bits = imagehash.phash(picture.convert("L")).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def cross_split_pairs(hashes: dict[str, int], splits: dict[str, str], distance: int) -> list[tuple[str, str]]:
    """Pairs of items in different splits whose hashes differ in at most `distance` bits, each pair once
    (ordered by item id)."""
    ids = sorted(hashes)
    values = np.array([hashes[i] for i in ids], dtype=np.uint64)
    split_codes = np.array([SPLITS.index(splits[i]) if splits[i] in SPLITS else -1 for i in ids])
    found = []
    for start in range(0, len(ids), _BLOCK):
        block = values[start:start + _BLOCK]
        # Only pairs (i, j) with j > i: each block against itself and what follows it.
        near = np.bitwise_count(block[:, None] ^ values[None, start:]) <= distance
        other_split = split_codes[start:start + _BLOCK, None] != split_codes[None, start:]
        rows, cols = np.nonzero(near & other_split)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i, j = start + r, start + c
            if j > i:
                found.append((ids[i], ids[j]))
    return sorted(found)


def leakage(manifest: Manifest, store: BlobSource, distance: int = 6,
            hash_cache: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """Near-duplicate images across splits: (item_a, item_b) item ids, item_a < item_b, each in a different
    split, their pHashes at most `distance` bits apart (of 64). `hash_cache` (blob sha256 -> hash) spares
    reading and hashing a blob again: a blob's hash never changes."""
    cache = {} if hash_cache is None else hash_cache
    hashes, splits = {}, {}
    for item in manifest.items:
        if item.blob not in cache:
            cache[item.blob] = image_hash_bits(store.get_blob(item.blob))
        hashes[item.item_id] = cache[item.blob]
        splits[item.item_id] = item.split
    return cross_split_pairs(hashes, splits, distance)
