"""Hostile and broken input: a corpus of bad files mixed with real photos in one infer.py run, decompression
bombs, range-checked flags in every script, broken models and .rec files, NaN outputs, SIGTERM.
Runs everywhere: the fixtures are generated here from the insightface wheel's photo."""
from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, run_script
from agegender.data.demo import wheel_image
from agegender.model.engine import BUNDLED_MODEL
from agegender.schema import validate

T1 = wheel_image("t1.jpg")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 30000) -> bytes:
    """A valid PNG header claiming side x side RGB pixels, with a few rows of data: under 1 KB on disk,
    2.7 GB once decoded."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * side) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def _save_pil(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder of good photos (t1 in many encodings) and broken files; returns (folder, good, bad) where
    good maps names to 'same' (t1's faces exactly) or 'six' (six faces) or 'any', bad maps names to the
    reason expected."""
    d = tmp_path_factory.mktemp("corpus")
    raw = open(T1, "rb").read()
    rgb = Image.open(T1).convert("RGB")
    files = {
        "a_t1.jpg": raw,
        "b_motion_photo.jpg": raw + b"\x00\x00\x00\x18ftypmp42" + os.urandom(20000),  # data after EOI
        "c_png_trailing.png": _save_pil(rgb, "PNG") + b"trailing bytes after IEND",
        "d_cmyk.jpg": _save_pil(rgb.convert("CMYK"), "JPEG", quality=95),
        "e_grey.jpg": _save_pil(rgb.convert("L"), "JPEG", quality=95),
        "f_rgba.png": _save_pil(rgb.convert("RGBA"), "PNG"),
        "h_one_pixel.png": _save_pil(Image.new("RGB", (1, 1)), "PNG"),
        "i_animated.gif": _save_pil(rgb.convert("P"), "GIF", save_all=True,
                                    append_images=[rgb.convert("P").transpose(Image.FLIP_LEFT_RIGHT)]),
        "j_animated.webp": _save_pil(rgb, "WEBP", save_all=True, append_images=[rgb.rotate(5)]),
        "k_truncated.jpg": raw[:2048],
        "l_empty.jpg": b"",
        "m_text.jpg": b"this is not an image\n" * 10,
        "n_page.jpg": b"<!DOCTYPE html><html><body>404 not found</body></html>",
        "o_bomb.png": bomb_png(),
        "p_truncated.png": _save_pil(rgb, "PNG")[:30000],
    }
    exif_img = rgb.transpose(Image.ROTATE_90)  # stored sideways; orientation 6: turn 90 degrees clockwise to view
    exif = Image.Exif()
    exif[0x0112] = 6
    files["g_exif_rotated.jpg"] = _save_pil(exif_img, "JPEG", quality=95, exif=exif)
    sixteen = (np.asarray(rgb).astype(np.uint16) * 257)[:, :, ::-1]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(sixteen))
    files["q_16bit.png"] = buf.tobytes()
    for name, data in files.items():
        (d / name).write_bytes(data)
    (d / "old.jpg").mkdir()  # a folder named like an image is not an input
    good = {"a_t1.jpg": "same", "b_motion_photo.jpg": "same", "c_png_trailing.png": "same", "d_cmyk.jpg": "six",
            "e_grey.jpg": "six", "f_rgba.png": "same", "g_exif_rotated.jpg": "six", "q_16bit.png": "same",
            "h_one_pixel.png": "none", "i_animated.gif": "any", "j_animated.webp": "any"}
    bad = {"k_truncated.jpg": "truncated", "l_empty.jpg": "empty file", "m_text.jpg": "not image",
           "n_page.jpg": "not image", "o_bomb.png": "too large", "p_truncated.png": "truncated"}
    return d, good, bad


MEASURE = ("import atexit, resource, runpy, sys; "
           "atexit.register(lambda: sys.stderr.write('maxrss_kb %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); "
           "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def test_corpus_of_bad_files_mixed_with_good_photos(corpus, tmp_path):
    folder, good, bad = corpus
    clean = json.loads(run_script("infer.py", "--image", T1, "--json", check=True).stdout)[0]
    jsonl = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-c", MEASURE, os.path.join(ROOT, "infer.py"), "--image", str(folder),
                           "--jsonl", str(jsonl), "--output-dir", str(tmp_path / "drawn")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr  # some images failed, the others were processed
    docs = {os.path.basename(d["image"]): d for d in map(json.loads, jsonl.read_text().splitlines())}
    assert set(docs) == set(good) | set(bad)  # every file once; the folder old.jpg is not an input
    for name, kind in good.items():
        doc = docs[name]
        assert "error" not in doc, (name, doc)
        if kind in ("same", "six"):
            assert len(doc["faces"]) == 6, (name, len(doc["faces"]))
        if kind == "same":
            for a, b in zip(doc["faces"], clean["faces"]):
                assert np.abs(np.array(a["box"]) - b["box"]).max() <= 4, name
                assert a["gender"] == b["gender"] and abs(a["age"] - b["age"]) < 2.5, name
        if kind == "none":
            assert doc["faces"] == []
    for name, reason in bad.items():
        assert reason in docs[name]["error"], (name, docs[name])
        assert f"error: {folder / name}: {reason}" in proc.stderr
    assert "summary: " in proc.stderr and f"{len(bad)} failed" in proc.stderr
    drawn = sorted(os.listdir(tmp_path / "drawn"))
    assert "a_t1_agegender.jpg" in drawn and not any(n.startswith(("k_", "o_")) for n in drawn)
    peak_mb = int(proc.stderr.split("maxrss_kb ")[1].split()[0]) / 1024
    assert peak_mb < 1500, f"peak memory {peak_mb:.0f} MB: the bomb was decoded?"


def test_json_output_lists_failures_and_exit_2_when_nothing_worked(corpus):
    folder, _, _ = corpus
    proc = run_script("infer.py", "--image", str(folder / "k_truncated.jpg"), str(folder / "a_t1.jpg"), "--json")
    assert proc.returncode == 1
    docs = json.loads(proc.stdout)
    assert docs[0] == {"schema_version": 2, "image": str(folder / "k_truncated.jpg"), "error": "truncated", "faces": []}
    assert len(docs[1]["faces"]) == 6
    proc = run_script("infer.py", "--image", str(folder / "k_truncated.jpg"), str(folder / "o_bomb.png"))
    assert proc.returncode == 2 and proc.stdout == ""


def test_max_pixels_limit_and_its_flag(corpus, tmp_path):
    folder, _, _ = corpus
    small = run_script("infer.py", "--image", str(folder / "a_t1.jpg"), "--max-pixels", "1000000")
    assert small.returncode == 2 and "too large: 1280x886" in small.stderr
    assert run_script("infer.py", "--image", str(folder / "a_t1.jpg"), "--max-pixels", "0").returncode == 0


@pytest.mark.parametrize("script,args", [
    ("infer.py", ["--image", T1, "--batch-size", "0"]),
    ("infer.py", ["--image", T1, "--det-thresh", "-1"]),
    ("infer.py", ["--image", T1, "--det-thresh", "nan"]),
    ("infer.py", ["--image", T1, "--min-face", "nan"]),
    ("infer.py", ["--image", T1, "--max-size", "-5"]),
    ("eval.py", ["--batch-size", "100000"]),
    ("eval.py", ["--num-workers", "0"]),
    ("train.py", ["--log-interval", "0"]),
    ("train.py", ["--lr", "-1"]),
    ("train.py", ["--lr", "inf"]),
    ("train.py", ["--save-every", "0"]),
    ("train.py", ["--batch-size", "abc"]),
    ("train.py", ["--gray", "1.5"]),
    ("create_dataset.py", ["--utkface", ".", "--val-ratio", "1"]),
    ("create_dataset.py", ["--utkface", ".", "--det-thresh", "2"]),
    ("create_dataset.py", ["--utkface", ".", "--workers", "-1"]),
    ("create_dataset.py", ["--utkface", ".", "--quality", "0"]),
    ("tools/launch.py", ["-n", "0", "--", "true"]),
    ("tools/launch.py", ["-n", "1", "--timeout", "nan", "--", "true"]),
])
def test_numeric_flags_are_range_checked_in_one_line(script, args):
    proc = run_script(script, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: argument "), proc.stderr


def test_show_age_distribution_refuses_a_jpeg():
    proc = run_script("show_age_distribution.py", T1)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1


def _nan_model(path) -> None:
    from onnx import TensorProto, helper, numpy_helper, save

    w = numpy_helper.from_array(np.full((3, 202), np.nan, np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", ["data"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["fc1_output"])]
    graph = helper.make_graph(nodes, "nan", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("fc1_output", TensorProto.FLOAT, ["N", 202])], [w])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_a_model_that_emits_nan_is_reported_per_face_never_printed(tmp_path):
    model = tmp_path / "nan.onnx"
    _nan_model(model)
    text = run_script("infer.py", "--image", T1, "--model", str(model))
    assert text.returncode == 1 and "nan" not in text.stdout.lower()
    assert text.stdout.count("error: the model's output for this face is not finite") == 6
    js = run_script("infer.py", "--image", T1, "--model", str(model), "--json")
    doc = json.loads(js.stdout, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))[0]
    validate(doc, "image")
    assert len(doc["faces"]) == 6 and all(f["gender"] is None and f["age"] is None and f["error"] for f in doc["faces"])


def test_broken_models_and_detectors_are_one_line_errors(tmp_path):
    trunc = tmp_path / "trunc"
    (tmp_path / "trunc-symbol.json").write_bytes(open(f"{BUNDLED_MODEL}-symbol.json", "rb").read())
    (tmp_path / "trunc-0000.params").write_bytes(open(f"{BUNDLED_MODEL}-0000.params", "rb").read()[:4000])
    (tmp_path / "foreign-symbol.json").write_text('{"nodes": "not a graph"}')
    (tmp_path / "foreign-0000.params").write_bytes(open(f"{BUNDLED_MODEL}-0000.params", "rb").read())
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x01garbage")
    cases = [(["--model", f"{trunc},0"], "trunc-0000.params"), (["--model", f"{tmp_path}/foreign,0"], "foreign"),
             (["--model", str(tmp_path / "garbage.onnx")], "garbage.onnx"),
             (["--det-model", str(tmp_path / "garbage.onnx")], "garbage.onnx")]
    for extra, name in cases:
        proc = run_script("infer.py", "--image", T1, *extra)
        assert proc.returncode == 2, (extra, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], (extra, proc.stderr)
        assert "Traceback" not in proc.stderr


def _write_rec(folder, records) -> str:
    """A .rec/.idx from (jpeg bytes, gender, age) tuples, bypassing create_dataset's checks."""
    import mxnet as mx

    rec = str(folder / "val.rec")
    w = mx.recordio.MXIndexedRecordIO(str(folder / "val.idx"), rec, "w")
    for i, (jpeg, gender, age) in enumerate(records):
        w.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(2, [gender, age], i, 0), jpeg))
    w.close()
    return rec


@pytest.mark.parametrize("broken,message", [
    ((b"not a jpeg at all", 1, 30), "record 5 (index key 5): holds no decodable image"),
    ((None, 5, 30), "record 5 (index key 5): record 5 has gender 5"),
    ((None, 1, 1e9), "record 5 (index key 5): age 1e+09 is not a number of years"),
    ((None, 1, float("nan")), "record 5 (index key 5): age nan"),
])
def test_eval_names_the_bad_record_of_a_rec(tmp_path, broken, message):
    face = cv2.imencode(".jpg", np.full((112, 112, 3), 120, np.uint8))[1].tobytes()
    records = [(face, 1, 30)] * 5 + [(broken[0] or face, broken[1], broken[2])] + [(face, 0, 40)] * 5
    rec = _write_rec(tmp_path, records)
    for script in (["eval.py", "--rec", rec, "--no-progress"],
                   ["train.py", "--data-dir", str(tmp_path), "--prefix", str(tmp_path / "run" / "m")]):
        proc = run_script(*script)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1, proc.stderr
        if script[0] == "eval.py":
            assert message in proc.stderr, proc.stderr


def test_create_dataset_skips_bombs_keeps_trailing_data_and_stops_cleanly_on_sigterm(corpus, tmp_path):
    folder, _, _ = corpus
    lst = tmp_path / "list.csv"
    lines = [f"{folder / n},1,30" for n in ("a_t1.jpg", "b_motion_photo.jpg", "c_png_trailing.png", "o_bomb.png")]
    lst.write_text("\n".join(lines) + "\n")
    out = tmp_path / "packed"
    run_script("create_dataset.py", "--list", str(lst), "--output", str(out), "--val-ratio", "0", "--workers", "1",
               "--no-progress", check=True)
    skipped = (out / "skipped.csv").read_text()
    assert "o_bomb.png,too_large" in skipped and "motion" not in skipped and "trailing" not in skipped
    # SIGTERM in the middle of a long run: one line, exit 143, no traceback, no temporary file left
    lst.write_text("".join(f"{folder / 'a_t1.jpg'},1,{20 + i % 50}\n" for i in range(3000)))
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "create_dataset.py"), "--list", str(lst), "--output",
                             str(out), "--workers", "2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        # mid-run: records are being written (no progress bar to wait for: stderr is a pipe, not a terminal)
        deadline = time.monotonic() + 300
        while not [n for n in os.listdir(out) if n.startswith(".val.lst.") or n.startswith(".train.lst.")
                   if os.path.getsize(out / n) > 0]:
            assert proc.poll() is None and time.monotonic() < deadline, "create_dataset.py never got going"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "terminated"
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    assert "o_bomb.png,too_large" in (out / "skipped.csv").read_text()  # the finished run's files stand
