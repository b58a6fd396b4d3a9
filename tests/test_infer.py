"""infer.py: the six faces of t1.jpg, the line and JSON formats, agreement with InsightFace's own decoding
of the same aligned crops, every input kind, and the error cases."""
from __future__ import annotations

import io
import json
import os
import re

import cv2
import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import insightface_model, run_script, shared_path
from agegender.data.demo import wheel_image
from agegender.data.face import align_face, load_detector
from agegender.data.image import read_image
from agegender.schema import validate

LINE = re.compile(r"^face (\d+), box \((-?\d+), (-?\d+), (-?\d+), (-?\d+)\), gender: (male|female), age: (\d+) "
                  r"\((\d+)-(\d+)\)(, low quality: (small|blurred|turned)(, (small|blurred|turned))*)?$")


@pytest.fixture(scope="module")
def t1_faces():
    img = read_image(wheel_image("t1.jpg"))
    faces = sorted(load_detector(thresh=0.8).detect(img), key=lambda f: f.box[0])
    return img, faces


def test_six_faces_of_t1_in_the_line_format(random_model, t1_faces, tmp_path):
    _, faces = t1_faces
    out_png = tmp_path / "t1.png"
    proc = run_script("infer.py", "--image", wheel_image("t1.jpg"), "--model", random_model, "--output", str(out_png),
                      check=True)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 6
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [int(m[1]) for m in parsed] == [1, 2, 3, 4, 5, 6]
    assert all(int(m[8]) <= int(m[7]) <= int(m[9]) for m in parsed)  # the age inside its range
    boxes = np.array([[int(m[i]) for i in range(2, 6)] for m in parsed])
    assert (np.diff(boxes[:, 0]) > 0).all()  # left to right
    np.testing.assert_allclose(boxes, np.array([f.box for f in faces]), atol=1.0)  # the detector's own boxes
    drawn = cv2.imread(str(out_png))
    assert drawn.shape[:2] == t1_faces[0].shape[:2]


def test_json_schema_and_several_images(random_model, tmp_path):
    docs = json.loads(run_script("infer.py", "--image", wheel_image("t1.jpg"), "--model", random_model, "--json",
                                 check=True).stdout)
    assert isinstance(docs, list) and len(docs) == 1  # --json is a list, whatever the number of inputs
    one = docs[0]
    validate(one, "image")
    assert one["image"] == wheel_image("t1.jpg") and len(one["faces"]) == 6
    for f in one["faces"]:
        assert set(f) == {"face", "box", "score", "landmarks", "gender", "p_male", "age", "age_low", "age_high", "flags"}
        assert len(f["box"]) == 4 and all(isinstance(v, int) for v in f["box"])
        assert np.array(f["landmarks"]).shape == (5, 2)
        assert f["gender"] == ("male" if f["p_male"] >= 0.5 else "female")
        assert 0 <= f["age"] <= 100 and 0.8 <= f["score"] <= 1.0
    # a folder: a list, one document per image, faces of all images batched together
    folder = tmp_path / "imgs"
    folder.mkdir()
    img = cv2.imread(wheel_image("t1.jpg"))
    cv2.imwrite(str(folder / "a.jpg"), img)
    cv2.imwrite(str(folder / "b.png"), cv2.flip(img, 1))
    cv2.imwrite(str(folder / "c.png"), np.full((200, 300, 3), 128, np.uint8))  # no face
    docs = json.loads(run_script("infer.py", "--image", str(folder), "--model", random_model, "--json",
                                 check=True).stdout)
    assert [os.path.basename(d["image"]) for d in docs] == ["a.jpg", "b.png", "c.png"]
    assert [len(d["faces"]) for d in docs] == [6, 6, 0]
    text = run_script("infer.py", "--image", str(folder / "*.png"), "--model", random_model, "--output",
                      str(tmp_path / "drawn"), check=True).stdout
    assert f"no face found in {folder / 'c.png'}" in text and text.count("gender:") == 6
    assert sorted(os.listdir(tmp_path / "drawn")) == ["b_agegender.png", "c_agegender.png"]  # inputs keep their names


def test_matches_insightface_own_decoding_of_the_same_crops(t1_faces):
    """With InsightFace's checkpoint and --age-decode vote, infer equals that model run the way code written
    for it runs it (Module on fc1_output; gender argmax, age = sum of the pairs' argmax)."""
    model = insightface_model()
    img, faces = t1_faces
    crops = np.stack([align_face(img, f.landmarks) for f in faces]).transpose(0, 3, 1, 2).astype(np.float32)
    prefix, epoch = model.split(",")
    sym, arg, aux = mx.model.load_checkpoint(prefix, int(epoch))
    mod = mx.mod.Module(sym.get_internals()["fc1_output"], context=mx.cpu(), label_names=None)
    mod.bind(data_shapes=[("data", crops.shape)], for_training=False)
    mod.set_params(arg, aux)
    mod.forward(mx.io.DataBatch([mx.nd.array(crops)]), is_train=False)
    out = mod.get_outputs()[0].asnumpy()
    genders = ["male" if g == 1 else "female" for g in out[:, :2].argmax(1)]
    ages = out[:, 2:].reshape(-1, 100, 2).argmax(2).sum(1)
    doc = json.loads(run_script("infer.py", "--image", wheel_image("t1.jpg"), "--model", model, "--age-decode",
                                "vote", "--no-flip", "--json", check=True).stdout)[0]
    assert [f["gender"] for f in doc["faces"]] == genders
    assert [f["age"] for f in doc["faces"]] == [float(a) for a in ages]


def _exif_rotated(bgr: np.ndarray) -> bytes:
    """The image stored rotated 90 degrees counter-clockwise with EXIF orientation 6 (display: rotate back)."""
    stored = np.ascontiguousarray(np.rot90(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 1))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def test_every_input_kind_finds_the_same_six_faces(random_model, t1_faces, tmp_path):
    _, faces = t1_faces
    bgr = cv2.imread(wheel_image("t1.jpg"))
    d = tmp_path / "kinds"
    d.mkdir()
    cv2.imwrite(str(d / "png.png"), bgr)
    cv2.imwrite(str(d / "bmp.bmp"), bgr)
    cv2.imwrite(str(d / "webp.webp"), bgr, [cv2.IMWRITE_WEBP_QUALITY, 95])
    cv2.imwrite(str(d / "gray.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(d / "rgba.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(d / "deep.png"), bgr.astype(np.uint16) * 257)
    (d / "exif.jpg").write_bytes(_exif_rotated(bgr))
    docs = json.loads(run_script("infer.py", "--image", str(d), "--model", random_model, "--json", check=True).stdout)
    ref = np.array([f.box for f in faces])
    for doc in docs:
        boxes = np.array([f["box"] for f in doc["faces"]])
        assert boxes.shape == (6, 4), doc["image"]
        assert np.abs(boxes - ref).max() <= 4, doc["image"]  # same places, orientation respected


def test_huge_images_are_scaled_for_detection_and_boxes_mapped_back(random_model, t1_faces, tmp_path):
    _, faces = t1_faces
    big = cv2.resize(cv2.imread(wheel_image("t1.jpg")), None, fx=3, fy=3)
    cv2.imwrite(str(tmp_path / "big.jpg"), big)
    doc = json.loads(run_script("infer.py", "--image", str(tmp_path / "big.jpg"), "--model", random_model, "--json",
                                "--max-size", "1280", check=True).stdout)[0]
    boxes = np.array([f["box"] for f in doc["faces"]])
    assert boxes.shape == (6, 4)
    assert np.abs(boxes - 3 * np.array([f.box for f in faces])).max() <= 12
    small = json.loads(run_script("infer.py", "--image", str(tmp_path / "big.jpg"), "--model", random_model,
                                  "--json", "--min-face", "300", check=True).stdout)[0]
    assert 0 < len(small["faces"]) < 6


def test_real_photos_with_an_insightface_detector(random_model):
    det = shared_path("weights", "scrfd", "det_500m.onnx")
    doc = json.loads(run_script("infer.py", "--image", shared_path("data", "photos", "insightface_t1.jpg"),
                                "--model", random_model, "--det-model", det, "--det-thresh", "0.5", "--json",
                                check=True).stdout)[0]
    assert len(doc["faces"]) == 6


def test_bad_inputs(random_model, tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((120, 160, 3), 90, np.uint8))
    cases = [(["--image", str(tmp_path / "missing.jpg")], "missing.jpg: not found"),
             (["--image", str(tmp_path / "text.jpg")], "text.jpg: not image"),
             (["--image", str(tmp_path / "nothing*.png")], "no file matches"),
             (["--image", str(tmp_path / "blank.png"), "--det-model", str(tmp_path / "none.onnx")], "not found"),
             (["--image", str(tmp_path / "blank.png"), "--model", "nowhere/model,1"], "model file not found"),
             (["--image", str(tmp_path / "blank.png"), "--gpus", "3"], "GPU 3 is not available")]
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        cases.append((["--image", str(tmp_path / "blank.png"), "--show"], "--show needs a display"))
    for args, message in cases:
        full = args if "--model" in args else args + ["--model", random_model]
        proc = run_script("infer.py", *full)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1, \
            proc.stderr
    empty = run_script("infer.py", "--image", str(tmp_path / "blank.png"), "--model", random_model)
    assert empty.returncode == 0 and empty.stdout.strip() == f"no face found in {tmp_path / 'blank.png'}"
