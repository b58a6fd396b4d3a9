"""`pip install .` gives one importable package, `agegender`, with its console command, the bundled model and
detector found from any folder, and nothing else on sys.path; one version everywhere."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

import agegender
from agegender.data.demo import wheel_image


def _run(*args: str, cwd: str = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    # under `make test` (CI) a nested make would print "make[1]: Entering directory" lines: run it as a user would
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_version_in_one_place_and_the_console_command():
    proc = _run(sys.executable, "-m", "agegender", "--version")
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == f"agegender {agegender.__version__}"
    assert "Apache-2.0" in proc.stdout and "non-commercial" in proc.stdout
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    assert 'dynamic = ["version"]' in text and 'path = "agegender/__init__.py"' in text
    with open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8") as f:
        assert f"## {agegender.__version__}" in f.read()
    usage = _run(sys.executable, "-m", "agegender", "infer", "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: agegender infer")
    bad = _run(sys.executable, "-m", "agegender", "detect")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown command 'detect'" in bad.stderr


def test_the_bundled_model_states_its_terms():
    from agegender.model.loading import load_engine

    engine = load_engine(threads=1)
    assert engine.is_bundled and "non-commercial" in engine.license == agegender.WEIGHTS_TERMS
    assert engine.version == agegender.__version__  # the export wrote the version and the terms into its metadata
    assert engine.metadata["license"] == agegender.WEIGHTS_TERMS
    with open(os.path.join(ROOT, "models", "README.md"), encoding="utf-8") as f:
        card = f.read()
    assert "non-commercial" in card.lower() and "Apache-2.0" in card
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        assert "Apache License" in f.readline() + f.readline()


def _index_reachable(tmp) -> bool:
    """Whether pip can fetch from its package index here (the build backend and the dependencies come
    from there)."""
    proc = _run(sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                "-d", str(tmp), "hatchling", timeout=120)
    return proc.returncode == 0


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_works_from_any_folder(tmp_path):
    if not _index_reachable(tmp_path / "probe"):
        pytest.skip("pip cannot reach a package index here: the wheel's build backend and dependencies come from it")
    dist = tmp_path / "dist"
    build = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w",
                 str(dist), ROOT)
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.iterdir()
    assert wheel.name == f"agegender-{agegender.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"agegender", f"agegender-{agegender.__version__}.dist-info"}
    for needed in ("agegender/weights/agegender.onnx", "agegender/weights/README.md",
                   "agegender/schema/face.schema.json", "agegender/_scripts/infer.py"):
        assert needed in names
    assert any(n.endswith("licenses/LICENSE") for n in names)

    venv = tmp_path / "venv"  # a fresh venv: nothing from this checkout's environment
    assert _run(sys.executable, "-m", "venv", str(venv)).returncode == 0
    py = str(venv / "bin" / "python")
    install = _run(py, "-m", "pip", "install", "--disable-pip-version-check", "-q", str(wheel), timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import importlib.util, json, sys\n"
            "assert not any(importlib.util.find_spec(n) for n in ('utils', 'symbols', 'infer', 'serving'))\n"
            "import agegender\n"
            "from agegender import FaceAnalyzer\n"
            "faces = FaceAnalyzer.from_options(net_threads=1).analyze(sys.argv[1])\n"
            "print(json.dumps({'file': agegender.__file__, 'faces': [f.to_dict() for f in faces]}))\n")
    t1 = wheel_image("t1.jpg")
    got = _run(py, "-c", code, t1, cwd=str(elsewhere))
    assert got.returncode == 0, got.stderr
    doc = json.loads(got.stdout)
    assert doc["file"].startswith(str(venv))  # the installed package, not this checkout
    from agegender import FaceAnalyzer

    here = [f.to_dict() for f in FaceAnalyzer.from_options(net_threads=1).analyze(t1)]
    # the same faces and labels; the fresh venv has the newest numpy/OpenCV/onnxruntime, whose JPEG decoding
    # and arithmetic differ from this environment's in the last digits
    assert [f["gender"] for f in doc["faces"]] == [f["gender"] for f in here]
    for a, b in zip(doc["faces"], here):
        assert max(abs(x - y) for x, y in zip(a["box"], b["box"])) <= 2
        assert abs(a["p_male"] - b["p_male"]) <= 0.01 and abs(a["age"] - b["age"]) <= 0.5
    cli = _run(str(venv / "bin" / "agegender"), "infer", "--image", t1, "--json", cwd=str(elsewhere))
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)[0]["faces"] == doc["faces"]
    # the CC0 teacher ships in the wheel too: the ensemble works from an installed package
    ens = _run(str(venv / "bin" / "agegender"), "infer", "--image", t1, "--json", "--gender-ensemble",
               cwd=str(elsewhere))
    assert ens.returncode == 0, ens.stderr
    assert len(json.loads(ens.stdout)[0]["faces"]) == len(doc["faces"])
    version = _run(str(venv / "bin" / "agegender"), "--version", cwd=str(elsewhere))
    assert version.stdout.startswith(f"agegender {agegender.__version__}")
    serve = _run(str(venv / "bin" / "agegender"), "serve", "--port", "0", cwd=str(elsewhere))  # no [serve] extra
    assert serve.returncode == 2 and serve.stderr.count("\n") == 1 and "agegender[serve]" in serve.stderr
    # with the extra, as the README says: everything `agegender serve` imports comes with it (httptools was not)
    extra = _run(py, "-m", "pip", "install", "--disable-pip-version-check", "-q", f"{wheel}[serve]", timeout=900)
    assert extra.returncode == 0, extra.stderr[-2000:]
    _serves_health(str(venv / "bin" / "agegender"), tmp_path, cwd=str(elsewhere))


def _serves_health(agegender_cmd: str, tmp, cwd: str) -> None:
    """`agegender serve` on a free port answers /health with the model loaded, then stops on SIGTERM."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp / "serve.log", "w+")
    proc = subprocess.Popen([agegender_cmd, "serve", "--port", str(port)], cwd=cwd, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline, answer = time.time() + 120, None
        while time.time() < deadline and answer is None:
            assert proc.poll() is None, "agegender serve exited: " + (tmp / "serve.log").read_text()[-2000:]
            try:
                answer = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2))
            except OSError:
                time.sleep(0.3)
        assert answer == {"status": "ok", "model_loaded": True}, (tmp / "serve.log").read_text()[-2000:]
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
        log.close()


def _fake_python(path, version: str) -> str:
    """An executable that answers the Makefile's version question as a Python of `version` would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.skipif(not shutil.which("make"), reason="needs make")
def test_make_demo_rebuilds_its_venv_when_another_python_is_asked_for(tmp_path):
    """`make demo DEMO_PYTHON=python3.13` after a `make demo` on 3.11: .venv-infer is rebuilt, and make says
    so; with the same Python it is left as it is."""
    venv = tmp_path / "venv-infer"
    _fake_python(venv / "bin" / "python", "3.11.9")
    (venv / ".installed-python3.11.9").touch()
    same = _fake_python(tmp_path / "py311", "3.11.9")
    other = _fake_python(tmp_path / "py313", "3.13.1")
    up = _run("make", "-q", "install-infer", f"INFER_VENV={venv}", f"DEMO_PYTHON={same}")
    assert up.returncode == 0, up.stdout + up.stderr  # up to date: nothing is rebuilt
    plan = _run("make", "-n", "install-infer", f"INFER_VENV={venv}", f"DEMO_PYTHON={other}")
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.splitlines()
    said = next(i for i, line in enumerate(lines) if "rebuilding" in line)
    assert f"has Python 3.11.9 and {other} is Python 3.13.1: rebuilding {venv}" in lines[said]
    assert f"rm -rf {venv}" in lines[said]
    assert lines.index(f"{other} -m venv {venv}") > said and lines[-1] == f"touch {venv}/.installed-python3.13.1"
