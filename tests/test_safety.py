"""What our tools write never destroys what a user already has: inputs, other files, devices, links,
earlier training runs, checkpoints of completed epochs; and no file from a checkpoint folder is ever
executed (no pickle). One test per item of the review that found them."""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import threading

import cv2

from agegender.symbols import checkpoint_epochs
from tests.conftest import ROOT, as_in_a_terminal, run_script
from agegender.data.demo import wheel_image

T1 = wheel_image("t1.jpg")


def _digest(path) -> bytes:
    return open(path, "rb").read()


def test_infer_never_writes_over_an_input(tmp_path):
    photo = tmp_path / "x.jpg"
    shutil.copy(T1, photo)
    before = _digest(photo)
    proc = run_script("infer.py", "--image", str(photo), "--output", str(photo))
    assert proc.returncode == 2 and "would be replaced" in proc.stderr and _digest(photo) == before
    album = tmp_path / "album"
    album.mkdir()
    for n in ("a.jpg", "b.png"):
        cv2.imwrite(str(album / n), cv2.imread(T1))
    originals = {n: _digest(album / n) for n in os.listdir(album)}
    run_script("infer.py", "--image", str(album), "--output", str(album), check=True)
    assert {n: _digest(album / n) for n in originals} == originals
    assert sorted(os.listdir(album)) == ["a.jpg", "a_agegender.jpg", "b.png", "b_agegender.png"]


def test_every_input_gets_its_own_annotated_copy(tmp_path):
    for rel in ("a/photo.jpg", "a/photo.png", "b/photo.jpg"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / rel), cv2.imread(T1))
    run_script("infer.py", "--image", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "out"),
               check=True)
    found = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "out") for d, _, fs in os.walk(tmp_path / "out")
                   for f in fs)
    assert found == ["a/photo_agegender.jpg", "a/photo_agegender.png", "b/photo_agegender.jpg"]


def test_outputs_write_through_links_fifos_and_stdout(packed_utkface, tmp_path):
    rec = os.path.join(packed_utkface, "val.rec")
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    run_script("eval.py", "--rec", rec, "--json", str(link), "--no-progress", check=True)
    assert link.is_symlink() and '"acc"' in target.read_text()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()))
    reader.start()
    run_script("eval.py", "--rec", rec, "--json", str(fifo), "--no-progress", check=True)
    reader.join(60)
    assert fifo.exists() and not fifo.is_file() and '"acc"' in got[0]
    out = run_script("eval.py", "--rec", rec, "--json", "-", "--no-progress", check=True).stdout
    assert '"mae"' in out


def test_a_planted_symlink_at_a_temporary_name_redirects_nothing(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("out.jpg.tmp", ".out.jpg.tmp"):
        (tmp_path / name).symlink_to(victim)
    run_script("infer.py", "--image", T1, "--output", str(tmp_path / "out.jpg"), check=True)
    assert victim.read_text() == "precious"
    assert cv2.imread(str(tmp_path / "out.jpg")) is not None
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp") and not os.path.islink(tmp_path / n)]


def test_unwritable_outputs_fail_before_the_work_in_one_line(packed_utkface, tmp_path):
    rec = os.path.join(packed_utkface, "val.rec")
    for flag, path in (("--json", tmp_path / "missing" / "e.json"), ("--plot", tmp_path / "missing" / "e.png"),
                       ("--json", "/proc/e.json")):
        proc = run_script("eval.py", "--rec", rec, flag, str(path), "--no-progress")
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: cannot write {flag}"), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "eval:" not in proc.stderr  # no evaluation ran
    proc = run_script("infer.py", "--image", T1, "--jsonl", str(tmp_path / "missing" / "x.jsonl"))
    assert proc.returncode == 2 and "cannot write --jsonl" in proc.stderr
    proc = run_script("show_age_distribution.py", rec, "--output", "/proc/h.png")
    assert proc.returncode == 2 and "cannot write" in proc.stderr
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def _train(data_dir, prefix, *extra, check=True):
    return run_script("train.py", "--data-dir", data_dir, "--prefix", prefix, "--multiplier", "0.25",
                      "--version-input", "0", "--batch-size", "4", *extra, check=check)


def test_a_prefix_holding_a_run_is_never_clobbered(packed_demo, tmp_path):
    data_dir, _ = packed_demo
    prefix = str(tmp_path / "run" / "m")
    _train(data_dir, prefix, "--end-epoch", "2")
    files = {f: _digest(os.path.join(tmp_path / "run", f)) for f in os.listdir(tmp_path / "run")
             if not f.endswith(".log")}
    proc = _train(data_dir, prefix, "--end-epoch", "1", check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr and "--overwrite" in proc.stderr
    assert {f: _digest(os.path.join(tmp_path / "run", f)) for f in files} == files
    _train(data_dir, prefix, "--end-epoch", "1", "--overwrite")
    assert checkpoint_epochs(prefix) == [1]
    assert open(prefix + "-metrics.csv").read().count("\n") == 2  # header + the new run's one epoch


def test_resume_wins_over_pretrained(packed_demo, tmp_path, random_model):
    """An interrupted fine-tuning resumed with the same command continues from its own weights."""
    import signal

    data_dir, _ = packed_demo
    prefix = str(tmp_path / "m")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--data-dir", data_dir, "--prefix", prefix,
           "--multiplier", "0.25", "--version-input", "0", "--batch-size", "4", "--pretrained", random_model,
           "--log-interval", "1"]
    proc = subprocess.Popen(cmd + ["--end-epoch", "50"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=as_in_a_terminal)
    try:
        for line in proc.stdout:
            if "Epoch[0] Batch [2-3]" in line:
                break
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert checkpoint_epochs(prefix + "-interrupted") == [0]
    resumed = subprocess.run(cmd + ["--end-epoch", "1", "--resume"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "interrupted-0000" in resumed.stdout
    assert "pretrained" not in resumed.stdout.split("resumed from")[1].split("\n")[0]
    assert " pretrained " not in resumed.stdout and "optimizer state restored" in resumed.stdout


def test_optimizer_state_is_never_unpickled(packed_demo, tmp_path):
    data_dir, _ = packed_demo
    prefix = str(tmp_path / "m")
    _train(data_dir, prefix, "--end-epoch", "1")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(prefix + "-0001.states", "wb") as f:
        pickle.dump(Exploit(), f)
    proc = _train(data_dir, prefix, "--end-epoch", "2", "--resume")
    assert not marker.exists()
    assert "not an optimizer state written by this version" in proc.stdout + proc.stderr


def test_launch_refuses_host_lines_that_are_ssh_options(tmp_path):
    hosts = tmp_path / "hosts.txt"
    marker = tmp_path / "pwned"
    hosts.write_text(f"-oProxyCommand=touch {marker}\n")
    proc = run_script("tools/launch.py", "-n", "1", "-H", str(hosts), "--", "true")
    assert proc.returncode == 2 and "not a host name" in proc.stderr and not marker.exists()
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_run_that_packs_nothing_leaves_the_previous_run_intact(packed_demo, tmp_path):
    out, _ = packed_demo
    before = {f: _digest(os.path.join(out, f)) for f in os.listdir(out) if os.path.isfile(os.path.join(out, f))}
    lst = tmp_path / "bad.csv"
    lst.write_text(f"{tmp_path / 'missing.jpg'},1,30\n")
    proc = run_script("create_dataset.py", "--list", str(lst), "--output", out)
    assert proc.returncode == 2 and "nothing packed" in proc.stderr and "unchanged" in proc.stderr
    after = {f: _digest(os.path.join(out, f)) for f in os.listdir(out) if os.path.isfile(os.path.join(out, f))}
    assert after == before
