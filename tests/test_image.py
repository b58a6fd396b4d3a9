"""Image reading (formats, EXIF, bad files) and the RGB colour round trip of stored JPEGs."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from agegender.data.demo import synthetic_face_image
from agegender.data.image import ImageError, decode_image, encode_jpeg, read_image


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def test_grayscale_rgba_and_16bit_png_become_rgb_uint8():
    gray = np.full((20, 30), 200, np.uint8)
    assert decode_image(_png(gray)).shape == (20, 30, 3)
    bgra = np.zeros((20, 30, 4), np.uint8)
    bgra[..., 2] = 255  # red in OpenCV's BGRA
    bgra[..., 3] = 128
    rgb = decode_image(_png(bgra))
    assert rgb.shape == (20, 30, 3) and tuple(rgb[0, 0]) == (255, 0, 0)
    deep = np.full((10, 10, 3), 65535, np.uint16)
    out = decode_image(_png(deep))
    assert out.dtype == np.uint8 and out.max() == 255


def test_exif_orientation_is_applied():
    img = np.zeros((40, 80, 3), np.uint8)  # wide image, red left half
    img[:, :40] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(buf.getvalue())
    assert out.shape[:2] == (80, 40)  # displayed upright: tall
    assert out[5, 20, 0] > 200 and out[75, 20, 0] < 60  # red half now on top


@pytest.mark.parametrize("data,reason", [(b"", "empty_file"), (b"hello, not an image", "not_image"),
                                         (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "truncated")])
def test_bad_bytes_raise_with_reason(data, reason):
    with pytest.raises(ImageError) as exc:
        decode_image(data)
    assert exc.value.reason == reason


def test_truncated_jpeg_and_png_are_detected():
    card = synthetic_face_image()
    jpeg = encode_jpeg(card)
    assert decode_image(jpeg).shape == card.shape
    with pytest.raises(ImageError, match="truncated"):
        decode_image(jpeg[: len(jpeg) // 2])
    png = _png(card)
    with pytest.raises(ImageError, match="truncated"):
        decode_image(png[:-40])


def test_missing_file(tmp_path):
    with pytest.raises(ImageError) as exc:
        read_image(str(tmp_path / "none.jpg"))
    assert exc.value.reason == "missing_file"


def test_jpeg_round_trip_keeps_rgb_through_mxnet():
    import mxnet as mx

    card = synthetic_face_image()
    decoded = mx.image.imdecode(encode_jpeg(card, quality=95)).asnumpy()  # MXNet decodes to RGB
    for (y, x), colour in {(20, 20): (255, 0, 0), (20, 90): (0, 255, 0), (90, 20): (0, 0, 255),
                           (90, 90): (255, 255, 255)}.items():
        assert np.abs(decoded[y, x].astype(int) - colour).max() < 12, ((y, x), decoded[y, x])
