"""The Python API cannot be misused: FaceAnalyzer.analyze takes an RGB array, a path, bytes or a PIL image
and gives the same faces for each; BGR only when said so; grey, RGBA and 16-bit as infer.py reads them;
anything else a one-line TypeError/ValueError; a list gives a list."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agegender import FaceAnalyzer
from agegender.data.demo import wheel_image
from agegender.data.image import read_image

T1 = wheel_image("t1.jpg")


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer.from_options(net_threads=1)


def _dicts(faces) -> list[dict]:
    return [f.to_dict() for f in faces]


def test_every_accepted_input_gives_the_same_faces(analyzer):
    from PIL import Image

    ref = _dicts(analyzer.analyze(read_image(T1)))
    assert len(ref) == 6
    with open(T1, "rb") as f:
        data = f.read()
    for image in (T1, Path(T1), data, bytearray(data), Image.open(T1)):
        assert _dicts(analyzer.analyze(image)) == ref, type(image).__name__


def test_bgr_only_when_said_so(analyzer):
    ref = _dicts(analyzer.analyze(T1))
    bgr = cv2.imread(T1)
    assert _dicts(analyzer.analyze(bgr, bgr=True)) == ref
    # the reason it must be said: a BGR array taken as RGB gives other labels (the face 4: 30 -> 35)
    swapped = _dicts(analyzer.analyze(bgr))
    assert [f["age"] for f in swapped] != [f["age"] for f in ref]
    with pytest.raises(ValueError, match="arrays only"):
        analyzer.analyze(T1, bgr=True)


@pytest.mark.parametrize("kind", ["grey", "grey1", "rgba", "deep"])
def test_grey_rgba_and_16_bit_arrays_as_infer_reads_the_file(analyzer, tmp_path, kind):
    bgr = cv2.imread(T1)
    pixels = {"grey": cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), "grey1": cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[..., None],
              "rgba": cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA), "deep": bgr.astype(np.uint16) * 257}[kind]
    path = str(tmp_path / f"{kind}.png")
    cv2.imwrite(path, pixels)
    from_file = _dicts(analyzer.analyze(path))
    assert len(from_file) == 6
    array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert _dicts(analyzer.analyze(array, bgr=array.ndim == 3 and array.shape[-1] > 1)) == from_file


@pytest.mark.parametrize("image, error, match", [
    (None, TypeError, "takes an RGB uint8 array"),
    (12, TypeError, "got int"),
    (np.zeros((64, 64, 3), np.float32), TypeError, "must be uint8"),
    (np.zeros((64, 64, 5), np.uint8), ValueError, r"got shape \(64, 64, 5\)"),
    (np.zeros((0, 64, 3), np.uint8), ValueError, "got shape"),
    (b"not an image", ValueError, "not image"),
    (b"", ValueError, "empty file"),
    ("/no/such/photo.jpg", FileNotFoundError, "image not found"),
])
def test_anything_else_is_a_one_line_error(analyzer, image, error, match):
    with pytest.raises(error, match=match) as info:
        analyzer.analyze(image)
    assert "\n" not in str(info.value)


def test_a_list_gives_a_list_batched(analyzer):
    single = [_dicts(analyzer.analyze(im)) for im in (T1, wheel_image("Tom_Hanks_54745.png"))]
    calls = []
    labels = analyzer.labels
    analyzer.labels = lambda crops: calls.append(len(crops)) or labels(crops)
    try:
        both = analyzer.analyze([T1, wheel_image("Tom_Hanks_54745.png"), np.zeros((80, 80, 3), np.uint8)])
    finally:
        del analyzer.labels
    assert calls == [7]  # the faces of all images in one pass
    assert [_dicts(r) for r in both[:2]] == single and both[2] == []
    assert analyzer.analyze([]) == []
