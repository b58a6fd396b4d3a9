"""Reading images from disk into RGB uint8 arrays, and JPEG encoding that keeps RGB colours.

OpenCV works in BGR; everything this project hands around is RGB. The conversions happen here and
nowhere else, so a stored JPEG decodes (with `mx.image.imdecode` or `ImageRecordIter`) to the
colours of the source image.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

# Skip reasons for unreadable files (also written to skipped.csv).
MISSING = "missing_file"
EMPTY = "empty_file"
NOT_IMAGE = "not_image"
TRUNCATED = "truncated"


class ImageError(Exception):
    """An image that cannot be used; `reason` is one of the skip reasons above."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _looks_truncated(data: bytes) -> bool:
    """True when a JPEG or PNG stream is cut short (libjpeg would pad it with grey silently)."""
    if data[:2] == b"\xff\xd8":
        # JPEG: the EOI marker must be near the end (some writers append a little padding after it).
        return b"\xff\xd9" not in data[-4096:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-64:]
    return False


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes (JPEG, PNG, BMP, WebP, ...) to an RGB uint8 (H, W, 3) array.

    Grayscale becomes 3 channels, alpha is dropped, 16-bit is scaled to 8-bit, and the EXIF
    orientation of JPEGs is applied. Raises ImageError on empty, truncated or undecodable data.
    """
    if not data:
        raise ImageError(EMPTY)
    if _looks_truncated(data):
        raise ImageError(TRUNCATED)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ImageError(NOT_IMAGE)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: str) -> np.ndarray:
    """Read an image file as RGB uint8; raises ImageError with a skip reason on failure."""
    if not os.path.isfile(path):
        raise ImageError(MISSING)
    with open(path, "rb") as f:
        data = f.read()
    return decode_image(data)


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode an RGB uint8 image as a standard JPEG (which decoders return as the same RGB)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageError(NOT_IMAGE, "JPEG encoding failed")
    return buf.tobytes()
