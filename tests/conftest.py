"""Shared fixtures: the miniature source layouts, built once per session, and ../shared paths."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
sys.path.insert(0, ROOT)


def shared_path(*parts: str) -> str:
    """A path under ../shared; skips the calling test (with the reason) when it is absent."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real asset not available: {path} (../shared is absent on this machine)")
    return path


@pytest.fixture(scope="session")
def demo_sources(tmp_path_factory) -> dict[str, str]:
    from agegender.data.demo import build_demo_sources

    return build_demo_sources(str(tmp_path_factory.mktemp("raw")))


def as_in_a_terminal() -> None:
    """preexec_fn for a child that the tests interrupt with SIGINT: a shell starts background jobs (CI's
    `nohup ... &` included) with SIGINT ignored, which the child would inherit, and Python then never
    raises KeyboardInterrupt; a user's Ctrl-C in a terminal reaches a process with the default action."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_script(script: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run one of the top-level scripts as a user would; returns the finished process."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def digest(path) -> bytes:
    """A file's SHA-256: what "unchanged" means in the tests that try to overwrite inputs."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).digest()


def one_line_error(proc: subprocess.CompletedProcess, code: int, text: str = "") -> None:
    """The contract for a refused or failed run: exit `code`, one `error:` line naming `text`, no traceback."""
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in err if ln.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], proc.stderr


@pytest.fixture(scope="session")
def packed_demo(demo_sources, tmp_path_factory) -> tuple[str, subprocess.CompletedProcess]:
    """The miniature layouts packed by create_dataset.py (30% val): (output folder, finished process)."""
    out = str(tmp_path_factory.mktemp("packed"))
    proc = run_script("create_dataset.py", "--afad", demo_sources["afad"], "--megaage", demo_sources["megaage"],
                      "--agedb", demo_sources["agedb"], "--utkface", demo_sources["utkface"],
                      "--list", demo_sources["list"], "--output", out, "--val-ratio", "0.3", "--workers", "2",
                      check=True)
    return out, proc


@pytest.fixture(scope="session")
def packed_utkface(tmp_path_factory) -> str:
    """48 real UTKFace faces from ../shared, spread over the age range, packed with RetinaFace alignment
    (25% val). Skips when ../shared is absent."""
    src = shared_path("data", "utkface")
    names = sorted(n for n in os.listdir(src) if n.count("_") == 3)[::400][:48]
    root = tmp_path_factory.mktemp("utk48")
    (root / "raw").mkdir()
    for n in names:
        os.symlink(os.path.join(src, n), root / "raw" / n)
    run_script("create_dataset.py", "--utkface", str(root / "raw"), "--output", str(root / "packed"),
               "--val-ratio", "0.25", "--workers", "1", "--no-progress", check=True)
    return str(root / "packed")


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> str:
    """An untrained m50 x0.25 checkpoint, `PREFIX,0`: for tests of formats and plumbing, not of accuracy."""
    import mxnet as mx

    from agegender.symbols import get_network, save_checkpoint

    net = get_network("m50", multiplier=0.25, version_input=0)
    net.initialize()
    net(mx.nd.zeros((1, 3, 112, 112)))
    rng = np.random.RandomState(0)
    for name, p in net.collect_params().items():  # spread-out outputs, no ties at P = 0.5
        v = rng.normal(0, 0.3, p.shape)
        p.set_data(mx.nd.array(np.abs(v) + 0.5 if name.endswith(("running_var", "gamma")) else v))
    prefix = str(tmp_path_factory.mktemp("random_model") / "model")
    save_checkpoint(net, prefix, 0)
    return f"{prefix},0"


def insightface_model() -> str:
    """InsightFace's released gender-age checkpoint as `PREFIX,0`; skips when ../shared is absent."""
    return os.path.join(shared_path("weights", "insightface-genderage"), "model") + ",0"
