"""Reading images from disk into RGB uint8 arrays, and JPEG encoding that keeps RGB colours.

OpenCV works in BGR; everything this project hands around is RGB. The conversions happen here and
nowhere else, so a stored JPEG decodes (with `mx.image.imdecode` or `ImageRecordIter`) to the
colours of the source image.
"""
from __future__ import annotations

import io
import os

import cv2
import numpy as np

# Skip reasons for unreadable files (also written to skipped.csv).
MISSING = "missing_file"
EMPTY = "empty_file"
NOT_IMAGE = "not_image"
TRUNCATED = "truncated"
TOO_LARGE = "too_large"

MAX_PIXELS = 50_000_000  # default limit on decoded pixels: real photos are under 50 MP (a 108 MP phone photo is not)


class ImageError(Exception):
    """An image that cannot be used; `reason` is one of the skip reasons above."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail

    def describe(self) -> str:
        """`truncated`, `too large: 30000x30000 ...`: the reason in words, with its detail."""
        text = self.reason.replace("_", " ")
        return f"{text}: {self.detail}" if self.detail else text


def _pil_size(source) -> tuple[int, int] | None:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # our own limit applies, before anything is decoded
    try:
        with Image.open(source) as im:
            return im.size
    except Exception:  # noqa: BLE001 -- Pillow raises assorted errors on unknown or broken headers
        return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header, without decoding the pixels; None when Pillow does not
    recognise the format. Such data is refused (`NOT_IMAGE`): a format whose size cannot be read before
    decoding (Radiance .hdr, OpenEXR, PFM, ...) would bypass the pixel limit."""
    return _pil_size(io.BytesIO(data))


# Bytes an image file may hold per pixel before it is refused unread: 16-bit RGBA is 8 per pixel; the
# allowance covers EXIF, ICC profiles, thumbnails and the video a phone's "motion photo" appends.
MAX_BYTES_PER_PIXEL = 8
HEADER_WINDOW = 2 * 2**20  # where an image's size must be found (a JPEG's EXIF, XMP and ICC come first)
BYTES_ALLOWANCE = 64 * 2**20


_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")


def _check_header(size: tuple[int, int] | None, nbytes: int, max_pixels: int, head: bytes = b"") -> None:
    """Refuse, before any pixel is decoded: an unreadable header, too many pixels, or far more bytes than
    the declared pixels can hold (a huge file behind a small header is never read whole)."""
    if size is None and head.startswith(_MAGIC):
        raise ImageError(TRUNCATED, "the header is cut short or damaged")
    if size is None:
        raise ImageError(NOT_IMAGE, "no image size in its header (JPEG, PNG, BMP, WebP, GIF, TIFF are read; "
                                    "formats whose size is unknown before decoding, such as Radiance .hdr, are not)")
    pixels = size[0] * size[1]
    if max_pixels and pixels > max_pixels:
        raise ImageError(TOO_LARGE, f"{size[0]}x{size[1]} = {pixels / 1e6:.0f} MP, over the limit of "
                                    f"{max_pixels / 1e6:g} MP (--max-pixels)")
    if nbytes > pixels * MAX_BYTES_PER_PIXEL + BYTES_ALLOWANCE:
        raise ImageError(TOO_LARGE, f"{nbytes / 2**20:.0f} MB of file for a {size[0]}x{size[1]} image")


def _ends_early(data: bytes) -> bool:
    """True when a JPEG or PNG stream has no end marker where one is expected: either cut short (libjpeg
    would pad it with grey silently), or followed by other data (phone 'motion photos' append a video).
    Only a full decode tells the two apart (`_decodes_completely`)."""
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-4096:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-64:]
    return False


def _decodes_completely(data: bytes) -> bool:
    """Whether Pillow decodes the whole stream without running out of data."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 -- "image file is truncated" and relatives
        return False


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes (JPEG, PNG, BMP, WebP, ...) to an RGB uint8 (H, W, 3) array.

    Grayscale becomes 3 channels, alpha is dropped, 16-bit is scaled to 8-bit, and the EXIF
    orientation of JPEGs is applied. An image over `max_pixels` (0 = no limit), a format whose size its
    header does not give, and far more bytes than the declared pixels need are refused before decoding. Raises ImageError on empty, truncated, too large or undecodable data.
    """
    if not data:
        raise ImageError(EMPTY)
    size = header_size(data)
    _check_header(size, len(data), max_pixels, data[:8])
    if _ends_early(data) and not _decodes_completely(data):
        raise ImageError(TRUNCATED)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is not None and img.size:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if size:  # a format Pillow reads and this OpenCV does not (GIF, for one): its first frame
        try:
            from PIL import Image, ImageOps

            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except Exception:  # noqa: BLE001
            raise ImageError(TRUNCATED, "the header is readable, the pixels are not") from None
    raise ImageError(NOT_IMAGE)


def read_image(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8; raises ImageError with a skip reason on failure. The header is
    read and checked first (`decode_image`'s limits), so a huge file is never read whole."""
    if not os.path.isfile(path):
        raise ImageError(MISSING)
    with open(path, "rb") as f:
        nbytes = os.fstat(f.fileno()).st_size
        if not nbytes:
            raise ImageError(EMPTY)
        # the header only, from a bounded window: Pillow scans junk byte by byte, and never reads past it
        head = f.read(HEADER_WINDOW)
        _check_header(_pil_size(io.BytesIO(head)), nbytes, max_pixels, head[:8])
        data = head + f.read()
    return decode_image(data, max_pixels)


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode an RGB uint8 image as a standard JPEG (which decoders return as the same RGB)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageError(NOT_IMAGE, "JPEG encoding failed")
    return buf.tobytes()
