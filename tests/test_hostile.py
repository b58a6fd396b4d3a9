"""Safety, round 3 (issue 23): no output lands on an input, every decode is bounded, the detector has a
floor, and full disks, closed pipes, odd cameras, missing packages and damaged run files are one line.
One test per finding of the hostile review (the HTTP service's findings are tested with the service)."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import stat
import subprocess
import sys

import cv2
import pytest

from agegender.data.demo import pan_and_zoom, wheel_image
from tests.conftest import ROOT, digest, one_line_error, run_script

T1 = wheel_image("t1.jpg")
PY = sys.executable




@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("clip") / "clip.mp4")
    pan_and_zoom(T1, path, frames=6)
    return path


@pytest.fixture
def album(tmp_path):
    folder = tmp_path / "j"
    folder.mkdir()
    shutil.copy(T1, folder / "a.jpg")
    shutil.copy(T1, folder / "b.jpg")
    return folder


# --- no output lands on an input -------------------------------------------------------------------------
def test_jsonl_never_replaces_an_input_image(album, tmp_path):
    before = digest(album / "a.jpg")
    os.link(album / "a.jpg", tmp_path / "hard.jpg")
    (tmp_path / "sym.jsonl").symlink_to(album / "b.jpg")
    for spec, jsonl in ((album / "a.jpg", album / "a.jpg"), (album, album / "b.jpg"), (album, tmp_path / "hard.jpg"),
                        (album, tmp_path / "sym.jsonl")):
        proc = run_script("infer.py", "--image", str(spec), "--jsonl", str(jsonl))
        one_line_error(proc, 2, "is an input")
        assert proc.stdout == ""  # refused before any image is read
    assert digest(album / "a.jpg") == before and digest(album / "b.jpg") == before
    proc = run_script("infer.py", "--image", str(album / "a.jpg"), "--jsonl", str(tmp_path / "o.jpg"), "--output",
                      str(tmp_path / "o.jpg"))
    one_line_error(proc, 2, "the same file")


@pytest.mark.parametrize("flag", ["--csv", "--parquet"])
def test_csv_and_parquet_never_replace_an_input_or_another_output(album, tmp_path, flag):
    if flag == "--parquet":
        pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install -r requirements-ray.txt)")
    before = digest(album / "a.jpg")
    (tmp_path / "sym.out").symlink_to(album / "b.jpg")
    for spec, out in ((album / "a.jpg", album / "a.jpg"), (album, album / "b.jpg"), (album, tmp_path / "sym.out")):
        proc = run_script("infer.py", "--image", str(spec), flag, str(out))
        one_line_error(proc, 2, "is an input")
        assert proc.stdout == ""
    assert digest(album / "a.jpg") == before and digest(album / "b.jpg") == before
    same = tmp_path / "faces.out"
    (tmp_path / "link.out").symlink_to(same)
    for other in ("--jsonl", "--csv" if flag == "--parquet" else "--parquet"):
        proc = run_script("infer.py", "--image", str(album), flag, str(same), other, str(tmp_path / "link.out"))
        one_line_error(proc, 2, "the same file")
    assert not same.exists()  # refused before any work: nothing written


def test_video_outputs_never_replace_the_input_video(clip):
    before = digest(clip)
    for flag in ("--output", "--jsonl"):
        one_line_error(run_script("infer.py", "--video", clip, flag, clip), 2, "is an input")
    assert digest(clip) == before


def test_eval_and_distribution_never_replace_the_packed_dataset(tmp_path):
    ev = tmp_path / "ev"
    ev.mkdir()
    for ext in ("rec", "idx", "lst"):
        (ev / f"val.{ext}").write_bytes(f"packed {ext}".encode())
    cases = [("eval.py", "--rec", str(ev / "val.rec"), "--json", str(ev / "val.rec")),
             ("eval.py", "--rec", str(ev / "val.rec"), "--plot", str(ev / "val.idx")),
             ("show_age_distribution.py", str(ev / "val.rec"), "--output", str(ev / "val.rec")),
             ("show_age_distribution.py", str(ev / "val.lst"), "--output", str(ev / "val.lst"))]
    for script, *args in cases:
        one_line_error(run_script(script, *args), 2, "is an input")
    assert {p.name: p.read_bytes() for p in ev.iterdir()} == {f"val.{e}": f"packed {e}".encode()
                                                               for e in ("rec", "idx", "lst")}


def test_packing_and_checkpoint_tools_never_replace_their_inputs(tmp_path, random_model):
    lst_dir = tmp_path / "lists"
    lst_dir.mkdir()
    shutil.copy(T1, lst_dir / "p.jpg")
    (lst_dir / "train.lst").write_text("p.jpg,1,30\n")
    before = (lst_dir / "train.lst").read_text()
    proc = run_script("create_dataset.py", "--list", str(lst_dir / "train.lst"), "--output", str(lst_dir))
    one_line_error(proc, 2, "is an input")
    assert (lst_dir / "train.lst").read_text() == before and sorted(os.listdir(lst_dir)) == ["p.jpg", "train.lst"]

    prefix = random_model.rsplit(",", 1)[0]
    symbol = digest(f"{prefix}-symbol.json")
    one_line_error(run_script("tools/average_checkpoints.py", prefix, "0", prefix), 2, "is an input")
    one_line_error(run_script("tools/widen.py", random_model, prefix), 2, "is an input")
    assert digest(f"{prefix}-symbol.json") == symbol


def test_train_never_writes_its_prefix_over_an_input(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    teacher = tmp_path / "run-teacher.csv"
    teacher.write_text("index,p_male\n0,0.9\n")
    proc = run_script("train.py", "--data-dir", str(data), "--prefix", str(tmp_path / "run"), "--teacher-gender",
                      str(teacher))
    one_line_error(proc, 2, "would write over the input")
    assert teacher.read_text() == "index,p_male\n0,0.9\n" and sorted(os.listdir(tmp_path)) == ["data",
                                                                                                 "run-teacher.csv"]


def test_output_paths_number_copies_that_would_still_meet(tmp_path):
    from agegender.serving.inference import output_paths

    for n in ("x.jpg", "x.JPG", "y.gif", "y.gif.jpg"):
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "x.jpg")  # another name of x.jpg: resolves to the same copy name
    names = ("x.jpg", "x.JPG", "y.gif", "y.gif.jpg", "link.jpg")
    out = output_paths([str(tmp_path / n) for n in names], str(tmp_path / "o"))
    assert sorted(os.path.basename(p) for p in out.values()) == ["x_agegender-2.jpg", "x_agegender.JPG",
                                                                 "x_agegender.jpg", "y.gif_agegender.jpg",
                                                                 "y_agegender.gif.jpg"]


def test_annotated_copies_of_names_that_differ_in_case_are_distinct(tmp_path):
    album = tmp_path / "album"
    album.mkdir()
    shutil.copy(T1, album / "x.jpg")
    cv2.imwrite(str(album / "x.JPG"), cv2.imread(T1)[::2, ::2])
    run_script("infer.py", "--image", str(album), "--output-dir", str(tmp_path / "out"), check=True)
    out = sorted(os.listdir(tmp_path / "out"))
    assert out == ["x_agegender.JPG", "x_agegender.jpg"]
    shapes = {n: cv2.imread(str(tmp_path / "out" / n)).shape[:2] for n in out}
    assert shapes["x_agegender.jpg"] != shapes["x_agegender.JPG"]  # neither overwrote the other


def test_jsonl_replaces_an_earlier_file_only_when_the_run_completes(album, tmp_path):
    old = tmp_path / "faces.jsonl"
    old.write_text("earlier run\n")
    with open("/dev/full", "w") as full:  # stdout fails at the first image: the run stops by an error
        proc = subprocess.run([PY, os.path.join(ROOT, "infer.py"), "--image", str(album), "--jsonl", str(old)],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert old.read_text() == "earlier run\n"
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []
    run_script("infer.py", "--image", str(album), "--jsonl", str(old), check=True)
    assert [json.loads(ln)["image"] for ln in old.read_text().splitlines()] == [str(album / "a.jpg"),
                                                                                 str(album / "b.jpg")]


def test_video_outputs_write_through_fifos_and_stdout(clip, tmp_path):
    fifo = tmp_path / "lines.fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    run_script("infer.py", "--video", clip, "--jsonl", str(fifo), "--no-progress", check=True)
    lines = reader.communicate(timeout=60)[0].decode().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["frame"] == 0
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO, not a regular file

    proc = subprocess.run([PY, os.path.join(ROOT, "infer.py"), "--video", clip, "--jsonl", "-", "--no-progress"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and [json.loads(ln)["frame"] for ln in proc.stdout.splitlines()] == list(range(6))
    proc = subprocess.run([PY, os.path.join(ROOT, "infer.py"), "--video", clip, "--output", "-", "--no-progress"],
                          cwd=tmp_path, capture_output=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout[4:8] == b"ftyp"  # an MP4 on stdout, the summary on stderr
    assert b"frames" in proc.stderr and not (tmp_path / "-").exists()


# --- every decode is bounded ------------------------------------------------------------------------------
def _radiance_header(side: int) -> bytes:
    return b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {side} +X {side}\n".encode() + bytes(range(256)) * 8


def test_formats_whose_size_the_header_does_not_give_are_refused(tmp_path):
    from agegender.data.image import NOT_IMAGE, ImageError, decode_image, read_image

    data = _radiance_header(12000)
    with pytest.raises(ImageError) as exc:
        decode_image(data)
    assert exc.value.reason == NOT_IMAGE and ".hdr" in exc.value.detail
    (tmp_path / "x.hdr").write_bytes(data)
    with pytest.raises(ImageError):
        read_image(str(tmp_path / "x.hdr"))


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def test_a_huge_file_among_good_photos_costs_only_itself(album, tmp_path):
    for name, head in (("zeros.jpg", b""), ("tail.jpg", open(T1, "rb").read())):
        with open(album / name, "wb") as f:  # sparse: 6 GB on paper, nothing on disk
            f.write(head)
            f.truncate(6 << 30)
    out = tmp_path / "faces.jsonl"
    proc = subprocess.run([PY, os.path.join(ROOT, "infer.py"), "--image", str(album), "--jsonl", str(out)],
                          capture_output=True, text=True, timeout=300, preexec_fn=_limit_memory)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    docs = {os.path.basename(d["image"]): d for d in map(json.loads, out.read_text().splitlines())}
    assert len(docs["a.jpg"]["faces"]) == 6 and len(docs["b.jpg"]["faces"]) == 6
    assert "too large" in docs["tail.jpg"]["error"] and "6144 MB" in docs["tail.jpg"]["error"]
    assert "no image size" in docs["zeros.jpg"]["error"]


def test_an_unexpected_error_on_one_file_keeps_the_others(album, monkeypatch):
    import agegender.serving.analyzer as analyzer_mod
    from agegender.serving.analyzer import FaceAnalyzer

    real = analyzer_mod.read_image

    def flaky(path, max_pixels):
        if path.endswith("a.jpg"):
            raise MemoryError()
        return real(path, max_pixels)

    monkeypatch.setattr(analyzer_mod, "read_image", flaky)
    analyzer = FaceAnalyzer.from_options(det_threads=1, net_threads=1)
    results = list(analyzer.analyze_paths([str(album / "a.jpg"), str(album / "b.jpg")], threads=1))
    assert "out of memory" in results[0].error and not results[0].faces
    assert results[1].error is None and len(results[1].faces) == 6


# --- the detector's floor ---------------------------------------------------------------------------------
def test_every_entry_point_floors_the_detector_threshold(tmp_path):
    from agegender.cli import DET_THRESH_MIN
    from agegender.data.face import load_detector
    from agegender.serving.service import DET_FLOOR

    assert DET_FLOOR == DET_THRESH_MIN == 0.3
    one_line_error(run_script("infer.py", "--image", T1, "--det-thresh", "0"), 2, "--det-thresh")
    one_line_error(run_script("create_dataset.py", "--utkface", str(tmp_path), "--det-thresh", "0.1"), 2,
                    "--det-thresh")
    with pytest.raises(ValueError, match="out of range"):
        load_detector(thresh=0.0)


def test_candidate_boxes_are_capped_before_nms(monkeypatch):
    import agegender.data.face as face
    from agegender.data.image import read_image

    sizes = []
    real_nms = face.nms
    monkeypatch.setattr(face, "nms", lambda boxes, scores, iou: sizes.append(len(boxes)) or real_nms(boxes, scores, iou))
    det = face.load_detector(thresh=0.8)
    det.thresh = 0.0  # what a caller bypassing the floor would do: ~19,000 candidates on t1.jpg
    det.detect(read_image(T1))
    assert sizes == [face.MAX_CANDIDATES]


# --- one line, never a traceback --------------------------------------------------------------------------
@pytest.mark.parametrize("args,stdout_full", [(["--jsonl", "/dev/full"], False), ([], True), (["--json"], True)])
def test_a_full_disk_is_one_line(album, args, stdout_full):
    with open("/dev/full", "w") if stdout_full else open(os.devnull, "w") as out:
        proc = subprocess.run([PY, os.path.join(ROOT, "infer.py"), "--image", str(album), *args],
                              stdout=out, stderr=subprocess.PIPE, text=True, timeout=300)
    one_line_error(proc, 1, "No space left on device")


def test_eval_json_on_a_full_disk_is_one_line(packed_demo):
    out, _ = packed_demo
    proc = run_script("eval.py", "--rec", os.path.join(out, "val.rec"), "--json", "/dev/full", "--no-progress")
    one_line_error(proc, 1, "No space left on device")
    assert "interrupted" not in proc.stderr


def test_a_closed_pipe_ends_quietly(album):
    proc = subprocess.Popen([PY, os.path.join(ROOT, "infer.py"), "--image", str(album), str(album), str(album)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0 and first.endswith(b":\n")
    assert "Traceback" not in err and "Exception ignored" not in err, err


@pytest.mark.parametrize("index", ["99999999999999999999", "4096"])
def test_a_camera_index_out_of_range_is_one_line(index):
    one_line_error(run_script("infer.py", "--video", index), 2, "out of range")


@pytest.fixture(scope="module")
def no_mxnet(tmp_path_factory) -> dict:
    """An environment in which `import mxnet` and `import tqdm` fail, as in an inference-only install."""
    folder = tmp_path_factory.mktemp("blocked")
    for name in ("mxnet", "tqdm"):
        (folder / f"{name}.py").write_text(f"raise ModuleNotFoundError(\"No module named '{name}'\", name='{name}')\n")
    return {**os.environ, "PYTHONPATH": str(folder)}


def test_a_missing_optional_dependency_is_one_line(no_mxnet, clip):
    for args in (["--engine", "mxnet"], ["--model", os.path.join(ROOT, "models", "agegender") + ",0"]):
        proc = subprocess.run([PY, os.path.join(ROOT, "infer.py"), "--image", T1, *args], env=no_mxnet,
                              capture_output=True, text=True, timeout=300)
        one_line_error(proc, 2, "needs mxnet")
    proc = subprocess.run([PY, os.path.join(ROOT, "eval.py"), "--rec", "x.rec"], env=no_mxnet, capture_output=True,
                          text=True, timeout=300)
    one_line_error(proc, 2, "pip install mxnet")
    proc = subprocess.run([PY, os.path.join(ROOT, "infer.py"), "--video", clip], env=no_mxnet, capture_output=True,
                          text=True, timeout=300)  # tqdm absent: no progress bar, the same results
    assert proc.returncode == 0 and "6 frames" in proc.stdout, proc.stderr


def _resume_prefix(tmp_path, random_model) -> str:
    src = random_model.rsplit(",", 1)[0]
    prefix = str(tmp_path / "run" / "m")
    os.makedirs(os.path.dirname(prefix))
    shutil.copy(f"{src}-symbol.json", f"{prefix}-symbol.json")
    shutil.copy(f"{src}-0000.params", f"{prefix}-0001.params")
    return prefix


TRAIN_ARGS = ["--network", "m50", "--multiplier", "0.25", "--version-input", "0", "--batch-size", "4",
              "--end-epoch", "2", "--resume"]


def test_resume_from_a_truncated_checkpoint_is_one_line(packed_demo, tmp_path, random_model):
    prefix = _resume_prefix(tmp_path, random_model)
    data = open(f"{prefix}-0001.params", "rb").read()
    open(f"{prefix}-0001.params", "wb").write(data[: len(data) // 2])
    proc = run_script("train.py", "--data-dir", packed_demo[0], "--prefix", prefix, *TRAIN_ARGS)
    one_line_error(proc, 2, "--resume: cannot load")


def test_resume_reports_a_garbage_metrics_history(packed_demo, tmp_path, random_model):
    prefix = _resume_prefix(tmp_path, random_model)
    garbage = b"\x00\xffnot,a\nmetrics file\n"
    open(f"{prefix}-metrics.csv", "wb").write(garbage)
    proc = run_script("train.py", "--data-dir", packed_demo[0], "--prefix", prefix, *TRAIN_ARGS)
    one_line_error(proc, 2, "metrics")
    assert open(f"{prefix}-metrics.csv", "rb").read() == garbage  # reported, not dropped


# --- requirements-infer.txt covers the MXNet-free path ----------------------------------------------------
def _fresh_python() -> str | None:
    """A Python for the inference-only venv: $AGEGENDER_INFER_PYTHON, a python3.13 / 3.12 that runs, else
    this one."""
    for cand in (os.environ.get("AGEGENDER_INFER_PYTHON"), shutil.which("python3.13"), shutil.which("python3.12"),
                 sys.executable):
        if cand and subprocess.run([cand, "-c", "import venv"], capture_output=True).returncode == 0:
            return cand
    return None


@pytest.fixture(scope="session")
def infer_venv() -> str:
    """A venv holding requirements-infer.txt only, built once and cached under ~/.cache (keyed by the file
    and the interpreter): later runs reuse it. Skips, saying why, when it cannot be built (offline)."""
    python = _fresh_python()
    req = os.path.join(ROOT, "requirements-infer.txt")
    if python is None:
        pytest.skip("no Python with the venv module to build the inference-only environment")
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True).stdout
    key = hashlib.sha256(open(req, "rb").read() + version.encode()).hexdigest()[:12]
    home = os.path.join(os.path.expanduser("~"), ".cache", "agegender-tests", f"infer-venv-{key}")
    vpy = os.path.join(home, "bin", "python")
    if not os.path.isfile(os.path.join(home, "installed")):
        shutil.rmtree(home, ignore_errors=True)
        steps = [[python, "-m", "venv", home], [vpy, "-m", "pip", "install", "-q", "-r", req]]
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                pytest.skip(f"cannot build the inference-only venv ({' '.join(cmd[1:4])}): {last}")
        open(os.path.join(home, "installed"), "w").close()
    return vpy


def test_requirements_infer_cover_the_mxnet_free_path(infer_venv, clip, tmp_path):
    assert subprocess.run([infer_venv, "-c", "import mxnet"], capture_output=True).returncode != 0
    run = lambda *a: subprocess.run([infer_venv, os.path.join(ROOT, "infer.py"), *a], cwd=tmp_path,  # noqa: E731
                                    capture_output=True, text=True, timeout=600)
    proc = run("--image", T1, "--jsonl", str(tmp_path / "p.jsonl"))
    assert proc.returncode == 0 and proc.stdout.count("gender:") == 6, proc.stderr
    proc = run("--video", clip, "--jsonl", str(tmp_path / "v.jsonl"), "--output", str(tmp_path / "v.mp4"))
    assert proc.returncode == 0 and "6 frames" in proc.stdout, proc.stderr
    proc = run("--image", T1, "--engine", "mxnet")
    one_line_error(proc, 2, "needs mxnet")


# --- launch.py on real hosts ------------------------------------------------------------------------------
FAKE_SSH = """#!/bin/bash
# a fake ssh: logs its arguments and runs the remote command here (the servers only logged)
printf '%s\\n' "$*" >> "$FAKE_SSH_LOG"
remote="${@: -1}"
case "$remote" in *"import mxnet"*) exit 0;; esac
exec bash -c "$remote"
"""


def test_launch_over_ssh_with_user_at_host_lines(tmp_path):
    from agegender.model.launch import REMOTE_PORT

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    (tmp_path / "hosts.txt").write_text("alice@127.0.0.1\n")
    log = tmp_path / "ssh.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SSH_LOG": str(log)}
    show = "import os, sys; print(os.environ['DMLC_PS_ROOT_URI'], os.environ['DMLC_PS_ROOT_PORT'], sys.executable)"
    proc = subprocess.run([PY, os.path.join(ROOT, "tools", "launch.py"), "-n", "2", "-H", str(tmp_path / "hosts.txt"),
                           "--timeout", "60", "--", "python", "-c", show], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    workers = [ln.split("] ", 1)[1].split() for ln in proc.stdout.splitlines() if ln.startswith("[worker")]
    assert workers == [["127.0.0.1", str(REMOTE_PORT), PY]] * 2  # the URI is the host, not user@host
    calls = log.read_text().splitlines()
    assert len(calls) == 4 and all(" -- alice@127.0.0.1 " in c for c in calls)  # ssh gets user@host
    assert all(f"{PY} -c" in c for c in calls)  # the same interpreter everywhere, servers included
    assert "DMLC_ROLE=scheduler" in calls[0] and f"DMLC_PS_ROOT_PORT={REMOTE_PORT}" in calls[0]
