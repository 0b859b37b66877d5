"""Encoded images (JPEG, PNG) to BGR arrays, refusing oversized ones before any pixel is decoded.

A few hundred bytes of PNG can declare a 60000 x 60000 image; decoding it would take gigabytes. So the size is
read from the header first (PNG's IHDR, JPEG's start-of-frame marker) and checked against the limit."""
from __future__ import annotations

import struct
import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# libjpeg decodes at 1/2, 1/4 or 1/8 scale by dropping DCT coefficients: fewer pixels out for less work (a
# 1920x1080 JPEG at 1/2 in about half the CPU), and no resize to pay for them afterwards.
REDUCED_JPEG_READS = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}


class ImageRefused(ValueError):
    """reason: oversized_payload, oversized_image or undecodable_image (also a dead letter's reason)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the JPEG or PNG header declares it; None when it is neither or the header is broken."""
    if data.startswith(PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if not data.startswith(b"\xff\xd8"):
        return None
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # stand-alone markers, no length
            offset += 2
            continue
        (length,) = struct.unpack(">H", data[offset + 2:offset + 4])
        if marker in JPEG_SOF_MARKERS:
            if offset + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[offset + 5:offset + 9])
            return width, height
        offset += 2 + length
    return None


def jpeg_reduction(size: tuple[int, int], at_least: tuple[int, int] | None) -> int:
    """The largest DCT scale divisor (8, 4, 2, else 1) that still leaves an image of `size` (width, height) at
    least `at_least` in both dimensions: a frame at least twice the network's input is decoded at half size."""
    if at_least is None:
        return 1
    for divisor in REDUCED_JPEG_READS:
        if size[0] >= divisor * at_least[0] and size[1] >= divisor * at_least[1]:
            return divisor
    return 1


def decode_image(data: bytes, max_bytes: int, what: str = "image",
                 at_least: tuple[int, int] | None = None) -> np.ndarray:
    """BGR uint8 [H, W, 3]. Refused (ImageRefused) when the encoded bytes exceed max_bytes, when the declared
    decoded size (W*H*3) does, or when it is not a decodable JPEG or PNG. With `at_least` (width, height), a
    JPEG that large several times over is decoded at a reduced DCT scale (see jpeg_reduction), never below it."""
    if len(data) > max_bytes:
        raise ImageRefused("oversized_payload", f"{what}: {len(data)} encoded bytes > limit {max_bytes}")
    size = declared_size(data)
    if size is None:
        raise ImageRefused("undecodable_image", f"{what}: {len(data)} bytes are not a JPEG or PNG image")
    width, height = size
    if width == 0 or height == 0:
        raise ImageRefused("undecodable_image", f"{what}: header declares an empty {width}x{height} image")
    if width * height * 3 > max_bytes:
        raise ImageRefused("oversized_image", f"{what}: {width}x{height} decodes to {width * height * 3} bytes "
                                              f"> limit {max_bytes}")
    if data.startswith(b"\xff\xd8") and b"\xff\xd9" not in data[-32:]:
        # libjpeg decodes a JPEG cut short into an image grey from the cut down, without an error.
        raise ImageRefused("undecodable_image", f"{what}: the JPEG is truncated (no end-of-image marker)")
    divisor = jpeg_reduction(size, at_least) if data.startswith(b"\xff\xd8") else 1
    image = cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED_JPEG_READS.get(divisor, cv2.IMREAD_COLOR))
    if image is None:
        raise ImageRefused("undecodable_image", f"{what}: {len(data)} bytes do not decode as JPEG or PNG")
    return image
