"""What the scripts print around their results: progress bars on a terminal only (no `\\r` bars in pipes or
CI logs), MXNet's C++ INFO lines hidden unless --verbose."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import ROOT, run_script

from agegender.data.demo import wheel_image


def test_no_progress_bars_into_pipes(packed_demo, tmp_path):
    _, proc = packed_demo  # create_dataset.py with stderr a pipe
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(wheel_image("t1.jpg"), tmp_path / name)
    infer = run_script("infer.py", "--image", str(tmp_path), check=True)
    assert "\r" not in infer.stderr and "summary: 2 images: 2 labelled (12 faces), 0 failed" in infer.stderr


def test_a_progress_bar_over_images_on_a_terminal(tmp_path):
    import pty

    for name in ("a.jpg", "b.jpg", "c.jpg"):
        shutil.copy(wheel_image("t1.jpg"), tmp_path / name)
    import fcntl
    import struct
    import termios

    main, tty = pty.openpty()
    fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a width
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), "--image", str(tmp_path), "--json"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=tty, timeout=300)
    os.close(tty)
    err = b""
    try:
        while chunk := os.read(main, 65536):
            err += chunk
    except OSError:  # the terminal's other end closed
        pass
    os.close(main)
    assert proc.returncode == 0 and b"0/3 [" in err and b"image/s" in err  # tqdm's bar, on stderr
    assert proc.stdout.lstrip().startswith(b"[") and b"\r" not in proc.stdout  # stdout stays clean JSON


def test_mxnet_info_lines_only_with_verbose(packed_demo):
    out, _ = packed_demo
    rec = os.path.join(out, "val.rec")
    quiet = run_script("eval.py", "--rec", rec, "--no-progress", check=True)
    assert "iter_image_recordio" not in quiet.stderr and "ImageRecordIter" not in quiet.stderr
    loud = run_script("eval.py", "--rec", rec, "--no-progress", "--verbose", check=True)
    assert "Create ImageRecordIter2" in loud.stderr
