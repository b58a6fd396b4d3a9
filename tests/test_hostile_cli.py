"""Safety, round 4 (issue 32), the command lines: the model is an input too, a run keeps its own checkpoint,
spreadsheets cannot be forged, a full disk leaves no temporary file, bad lists are one line, a split counts
once, a closed pipe is quiet. One test per finding of the hostile review (the service's are in
tests/test_hostile_service.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from agegender.data.demo import wheel_image
from agegender.model.engine import BUNDLED_MODEL, BUNDLED_ONNX, TEACHER_ONNX, model_files
from tests.conftest import ROOT, digest, one_line_error, run_script

T1 = wheel_image("t1.jpg")




@pytest.fixture
def models(tmp_path) -> dict:
    """Hard links to the bundled model and the teacher (an output written there would be refused the same
    as on the file itself, and a run that was not refused replaces only the link), and a copy of the
    bundled model as a .onnx file and as a checkpoint with its calibration file."""
    own = tmp_path / "models"
    own.mkdir()
    os.link(BUNDLED_ONNX, own / "bundled.onnx")
    os.link(TEACHER_ONNX, own / "teacher.onnx")
    shutil.copy(BUNDLED_ONNX, own / "mine.onnx")
    for suffix in ("-symbol.json", "-0000.params", "-calibration.json"):
        shutil.copy(BUNDLED_MODEL + suffix, own / f"ck{suffix}")
    return {"bundled": str(own / "bundled.onnx"), "teacher": str(own / "teacher.onnx"), "onnx": str(own / "mine.onnx"),
            "ck": str(own / "ck"), "digests": {p: digest(p) for p in own.iterdir()}}


def _unchanged(models: dict) -> None:
    for path, before in models["digests"].items():
        assert digest(path) == before, f"{path} was written"


# --- 1. the model is an input ---------------------------------------------------------------------------
def test_model_files_name_every_file_a_model_is_read_from(models):
    ck = models["ck"]
    assert model_files(None) == [BUNDLED_ONNX, f"{BUNDLED_MODEL}-symbol.json", f"{BUNDLED_MODEL}-0000.params",
                                 f"{BUNDLED_MODEL}-calibration.json", TEACHER_ONNX]
    assert model_files(f"{ck},0") == [f"{ck}-symbol.json", f"{ck}-0000.params", f"{ck}-calibration.json", TEACHER_ONNX]
    assert model_files(ck, calibration=False) == [f"{ck}-symbol.json", f"{ck}-0000.params", TEACHER_ONNX]
    assert model_files("a,b.onnx") == ["a,b.onnx", TEACHER_ONNX]  # a .onnx file, as load_engine reads it
    assert model_files() == [TEACHER_ONNX]


@pytest.mark.parametrize("flag", ["--csv", "--jsonl", "--parquet", "--output"])
def test_infer_outputs_never_replace_the_model(models, flag):
    ck = models["ck"]
    cases = [([], models["bundled"]), (["--model", models["onnx"]], models["onnx"]),
             (["--model", f"{ck},0"], f"{ck}-0000.params"), (["--model", ck], f"{ck}-calibration.json"),
             (["--model", f"{ck},0"], f"{ck}-symbol.json"), (["--gender-ensemble"], models["teacher"]),
             (["--det-model", models["onnx"]], models["onnx"])]
    for extra, out in cases:
        proc = run_script("infer.py", "--image", T1, *extra, flag, out)
        one_line_error(proc, 2, "is an input")
        assert proc.stdout == ""
    _unchanged(models)


def test_annotated_copies_and_video_outputs_never_replace_the_model(models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(T1, tmp_path / "a.jpg")
    os.link(BUNDLED_ONNX, out / "a_agegender.jpg")  # where the annotated copy of a.jpg would go
    proc = run_script("infer.py", "--image", str(tmp_path / "a.jpg"), str(tmp_path / "a.jpg"), "--output-dir", str(out))
    one_line_error(proc, 2, "is an input")
    for flag in ("--jsonl", "--output"):
        proc = run_script("infer.py", "--video", str(tmp_path / "clip.mp4"), flag, models["bundled"])
        one_line_error(proc, 2, "is an input")
    _unchanged(models)


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_eval_outputs_never_replace_the_model(models, tmp_path, flag):
    rec = str(tmp_path / "val.rec")  # refused before the split is read
    for extra, out in (([], models["bundled"]), ([], models["teacher"]), (["--model", models["onnx"]], models["onnx"]),
                       (["--model", f"{models['ck']},0"], f"{models['ck']}-calibration.json")):
        one_line_error(run_script("eval.py", "--rec", rec, *extra, flag, out), 2, "is an input")
    _unchanged(models)


def test_tools_never_write_over_a_model(models, tmp_path):
    ck = models["ck"]
    lst = tmp_path / "val.lst"
    lst.write_text(f"0\t1\t30\t{T1}\n")
    for script, args in (("tools/export_onnx.py", [f"{ck},0", models["teacher"]]),
                         ("tools/calibrate.py", ["--lst", str(lst), "--write", models["bundled"]]),
                         ("tools/calibrate.py", ["--model", models["onnx"], "--lst", str(lst), "--write", models["teacher"]]),
                         ("tools/teacher_gender.py", [str(lst), models["teacher"]]),
                         ("show_age_distribution.py", [str(lst), "--output", models["teacher"]])):
        one_line_error(run_script(script, *args), 2, "is an input")
    _unchanged(models)
    # the one model file a tool rewrites by design: a checkpoint's calibration file (the run then fails on the
    # missing list, after the check)
    proc = run_script("tools/calibrate.py", "--model", f"{ck},0", "--lst", str(tmp_path / "none.lst"), "--write",
                      f"{ck}-calibration.json")
    assert "is an input" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# --- 2. a run keeps the checkpoint it starts from --------------------------------------------------------
@pytest.mark.parametrize("flags", [["--overwrite"], []])
def test_train_refuses_to_start_from_its_own_prefix(models, tmp_path, flags):
    ck = models["ck"]
    for pretrained in (f"{ck},0", f"{os.path.dirname(ck)}/../models/ck,0"):
        proc = run_script("train.py", "--data-dir", str(tmp_path / "data"), "--prefix", ck, "--pretrained", pretrained,
                          *flags)
        one_line_error(proc, 2, "this run's own --prefix")
    _unchanged(models)
    assert sorted(os.listdir(os.path.dirname(ck))) == sorted(os.path.basename(p) for p in models["digests"])


def test_train_with_pretrained_never_deletes_the_bundled_model(tmp_path):
    """`train.py --pretrained ../shared/weights/insightface-genderage/model,0 --prefix models/agegender
    --overwrite`, as typed in a checkout, is refused: --pretrained does not lift the bundled model's
    protection. Run on copies (a checkout of its own in tmp_path, $AGEGENDER_MODELS_DIR pointing at them)."""
    from tests.conftest import insightface_model

    shared = os.path.dirname(os.path.dirname(os.path.dirname(insightface_model())))  # skips without ../shared
    os.symlink(shared, tmp_path / "shared")
    work = tmp_path / "checkout"
    (work / "models").mkdir(parents=True)
    for suffix in (".onnx", "-symbol.json", "-0000.params", "-calibration.json"):
        shutil.copy(BUNDLED_MODEL + suffix, work / "models" / f"agegender{suffix}")
    before = {p: digest(p) for p in (work / "models").iterdir()}
    env = dict(os.environ, AGEGENDER_MODELS_DIR=str(work / "models"))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--pretrained",
                           "../shared/weights/insightface-genderage/model,0", "--prefix", "models/agegender",
                           "--overwrite"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    one_line_error(proc, 2, "would write over the input")
    assert {p: digest(p) for p in (work / "models").iterdir()} == before


# --- 7. a CSV cannot carry a formula ---------------------------------------------------------------------
def test_csv_text_cells_that_begin_like_formulas_are_quoted_numbers_stay_numbers():
    import csv
    import io

    from agegender.serving.inference import csv_text

    rows = [{"image": name, "face": 1, "x1": -3, "y1": 0, "x2": 10.5, "y2": 12, "score": 0.9, "gender": "male",
             "p_male": 0.75, "age": 30, "error": ""} for name in ("=1+1", "+cmd", "-2+3", "@SUM(1+1)", "\tx", "\rx")]
    rows.append({"image": "a=b.jpg", "error": "-bad file"})  # an error cell too; `=` further in is harmless
    text = csv_text(rows)
    assert "\r\n" not in text and text.count("\n") == 1 + len(rows) and "\"'\rx\"" in text  # the CR is quoted
    back = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [r["image"] for r in back] == ["'=1+1", "'+cmd", "'-2+3", "'@SUM(1+1)", "'\tx", "'\rx", "a=b.jpg"]
    assert back[-1]["error"] == "'-bad file"
    assert all(r["x1"] == "-3" and r["x2"] == "10.5" and r["score"] == "0.9" for r in back[:-1])


def test_infer_csv_of_photos_named_like_formulas(tmp_path):
    import csv

    names = ['=HYPERLINK("evil","y").jpg', "@SUM(1+1).jpg", "+cmd.jpg"]
    shutil.copy(T1, tmp_path / names[0])
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), "--image", *names, "--csv", "out.csv",
                           "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr  # two of the three are missing
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["image"] for r in rows} == {"'" + n for n in names}
    faces = [r for r in rows if r["face"]]
    assert faces and all(int(r["x1"]) == int(r["x1"]) and not r["x1"].startswith("'") for r in faces)


# --- 9. a full disk while closing the Parquet file -------------------------------------------------------
def test_a_full_disk_when_the_parquet_file_closes_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (pip install -r requirements-ray.txt)")
    import errno

    from agegender.errors import run_cli
    from agegender.serving.batch import write_parquet

    out = tmp_path / "out.parquet"
    out.write_bytes(b"the earlier run")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "close", full)
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: write_parquet(str(out), [{"image": "a.jpg", "faces": []}]))
    assert stop.value.code == 1
    assert capsys.readouterr().err == f"error: cannot write {out}: No space left on device\n"
    assert os.listdir(tmp_path) == ["out.parquet"] and out.read_bytes() == b"the earlier run"


# --- 10. bad lists and files are one line ----------------------------------------------------------------
def test_image_lists_that_are_not_text_or_not_paths_are_one_line(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install -r requirements-ray.txt)")
    import pyarrow.parquet as pq

    latin = tmp_path / "list.txt"
    latin.write_bytes(f"{T1}\n".encode() + "caf\xe9.jpg\n".encode("latin-1"))
    numbers = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": [1, 2]}), numbers)
    for spec, text in ((latin, "line 2: not UTF-8"), (numbers, "column path holds int64")):
        proc = run_script("infer.py", "--ray", "--image", str(spec), "--parquet", str(tmp_path / "out"))
        one_line_error(proc, 2, text)
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + f"{T1}\n".encode())  # as Notepad saves it: the first path is still a path
    from agegender.serving.ray_batch import expand_inputs

    assert expand_inputs([str(bom)]) == ([T1], [])


def test_calibrate_on_a_list_that_is_not_utf8_is_one_line(tmp_path):
    lst = tmp_path / "val.lst"
    lst.write_bytes(f"0\t1\t30\t{T1}\n".encode() + "1\t0\t20\tcaf\xe9.jpg\n".encode("latin-1"))
    one_line_error(run_script("tools/calibrate.py", "--lst", str(lst)), 2, "line 2: not UTF-8")


@pytest.mark.parametrize("digits", [300, 400])
def test_learning_curve_reference_with_a_huge_number_is_one_line(tmp_path, digits):
    (tmp_path / "utkface").mkdir()
    (tmp_path / "utkface" / "val.rec").write_bytes(b"")
    rows = ["series,rec,faces,model,acc,acc_0_9,mae,cs5"]
    rows += [f"runs,utkface/val,{n},m{n},0.9,0.8,5.0,0.7" for n in ("1" * digits, "200", "400")]
    (tmp_path / "ref.csv").write_text("\n".join(rows) + "\n")
    rows = ["series,rec,faces,model,acc,acc_0_9,mae,cs5"]
    rows += [f"runs,utkface/val,{n},m{n},0.9,0.8,{'1' * digits},0.7" for n in ("100", "200", "400")]
    (tmp_path / "ref2.csv").write_text("\n".join(rows) + "\n")
    for ref, text in (("ref.csv", "faces must be from 1"), ("ref2.csv", "mae a number of years")):
        proc = run_script("tools/learning_curve.py", "--reference", str(tmp_path / ref), "--rec",
                          str(tmp_path / "utkface" / "val.rec"))
        one_line_error(proc, 2, text)
    proc = run_script("tools/learning_curve.py", f"{'1' * digits}=m,0", "200=m,0", "400=m,0", "--rec",
                      str(tmp_path / "utkface" / "val.rec"))
    one_line_error(proc, 2, "bad run")


def test_a_truncated_pil_image_is_a_value_error():
    import io

    from PIL import Image

    from agegender import FaceAnalyzer

    data = open(T1, "rb").read()
    image = Image.open(io.BytesIO(data[:len(data) // 2]))  # opened lazily: decoded by analyze()
    with pytest.raises(ValueError, match="cannot use the image .PIL RGB"):
        FaceAnalyzer.from_options(net_threads=1).analyze(image)


# --- 12a. a split counts once -----------------------------------------------------------------------------
def test_eval_counts_a_split_named_twice_once(packed_demo, tmp_path):
    import json

    data_dir, _ = packed_demo
    rec = os.path.join(data_dir, "val.rec")
    os.symlink(rec, tmp_path / "link.rec")
    once = run_script("eval.py", "--rec", rec, "--json", str(tmp_path / "once.json"), "--no-progress", check=True)
    proc = run_script("eval.py", "--rec", rec, "--rec", str(tmp_path / "link.rec"), "--rec", rec, "--json",
                      str(tmp_path / "twice.json"), "--no-progress", check=True)
    assert proc.stderr.splitlines() == [f"note: {tmp_path / 'link.rec'} is the same file as {rec}: evaluated once",
                                        f"note: {rec} is given twice: evaluated once"]
    assert proc.stdout == once.stdout
    first, second = (json.loads((tmp_path / n).read_text()) for n in ("once.json", "twice.json"))
    assert first == second


# --- 12c. a closed pipe is quiet --------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_the_console_command_into_a_closed_pipe_ends_quietly(args):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line, as `| head -1` may be after it: every write fails
    try:
        proc = subprocess.run([sys.executable, "-m", "agegender", *args], cwd=ROOT, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_other_lists_that_are_not_utf8_are_one_line(tmp_path):
    import importlib.util

    from agegender.errors import UserError

    hosts = tmp_path / "hosts.txt"
    hosts.write_bytes("h\xf4te\n".encode("latin-1"))
    proc = run_script("tools/launch.py", "-n", "1", "-H", str(hosts), "--", "python", "-c", "pass")
    one_line_error(proc, 2, "line 1: not UTF-8")
    spec = importlib.util.spec_from_file_location("model_report", os.path.join(ROOT, "tools", "model_report.py"))
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    (tmp_path / "val.lst").write_bytes(b"0\t1\t30\ta/25_1_2_x.jpg\n" + "1\t0\t20\tcaf\xe9.jpg\n".encode("latin-1"))
    with pytest.raises(UserError, match="line 2: not UTF-8"):
        report.races_of(str(tmp_path / "val.rec"))
    (tmp_path / "val.lst").write_text("0\t1\t30\ta/25_1_2_x.jpg\n1\t0\t20\tb.jpg\n")
    assert report.races_of(str(tmp_path / "val.rec")) == [2, None]  # one entry per record, as before
