"""Bundled models by name (agegender/model/registry.py): the rule that tells a name from a path, one-line
errors for unknown, absent and ambiguous names, a second model registered at test time (the bundled files
copied under the `small` naming scheme into a folder named by $AGEGENDER_MODELS_DIR, with another gender
temperature so that its answers differ) answering through infer.py, eval.py, the Python API and the
service, and the ONNX metadata `license` / `provenance` round trip."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_script
from agegender import SMALL_TERMS, WEIGHTS_TERMS
from agegender.data.demo import wheel_image
from agegender.errors import UserError
from agegender.model import registry
from agegender.model.engine import BUNDLED_MODEL, BUNDLED_ONNX, TEACHER_ONNX, model_files

T1 = wheel_image("t1.jpg")
SMALL_T = 3.0  # the test's `small` model: the bundled small weights with this gender temperature
SMALL_MODEL = os.path.join(os.path.dirname(BUNDLED_MODEL), "agegender-small")


@pytest.fixture
def without_small(tmp_path, monkeypatch) -> str:
    """The built-in folder as an install without the `small` files (a trimmed one): `default` and `open` only."""
    folder = tmp_path / "builtin"
    folder.mkdir()
    for name in os.listdir(os.path.dirname(BUNDLED_MODEL)):
        if name.startswith("agegender") and not name.startswith("agegender-small"):
            os.symlink(os.path.join(os.path.dirname(BUNDLED_MODEL), name), folder / name)
    monkeypatch.setattr(registry, "BUILTIN_DIR", str(folder))
    monkeypatch.delenv(registry.MODELS_DIR_ENV, raising=False)
    return str(folder)


def _one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


def _run(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture
def small_dir(tmp_path, monkeypatch) -> str:
    """A `small` model dropped into a models folder of its own, which is searched before the built-in one:
    the bundled `small` files, its ONNX and its checkpoint's calibration at gender temperature SMALL_T, and a
    licence file."""
    from agegender.model.engine import with_temperature

    folder = tmp_path / "models"
    folder.mkdir()
    with open(SMALL_MODEL + ".onnx", "rb") as f:
        (folder / "agegender-small.onnx").write_bytes(with_temperature(f.read(), SMALL_T))
    for suffix in ("-symbol.json", "-0000.params"):
        shutil.copy(SMALL_MODEL + suffix, folder / f"agegender-small{suffix}")
    (folder / "agegender-small-calibration.json").write_text(json.dumps({"gender_temperature": SMALL_T}))
    (folder / "agegender-small.LICENSE.md").write_text("# small\nthe bundled model's terms\n")
    monkeypatch.setenv(registry.MODELS_DIR_ENV, str(folder))
    return str(folder)


def test_a_bare_word_is_a_name_anything_with_a_separator_comma_or_dot_is_a_path(tmp_path, monkeypatch, without_small):
    monkeypatch.delenv(registry.MODELS_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    for name in ("small", "default", "open", "my_model-2"):
        assert registry.is_name_like(name)
    for path in ("./small", "small,0", "small.onnx", "models/agegender", "a\\b", ".", "..", "-x", ""):
        assert not registry.is_name_like(path)
        assert path == "" or registry.resolve(path) is None
    assert registry.resolve(None) == registry.resolve("") == registry.resolve("default")
    default = registry.resolve("default")
    assert default.onnx == os.path.join(without_small, "agegender.onnx") and default.prefix.endswith("agegender")
    with pytest.raises(UserError, match=r"^--model nosuch: neither a bundled model's name \(available here: "
                                        r"default, open\) nor a file here"):
        registry.resolve("nosuch")
    with pytest.raises(UserError, match=r"^bundled model 'small' is not installed here .*available here: default, "
                                        r"open$"):
        registry.resolve("small")
    (tmp_path / "mine-symbol.json").write_text("{}")  # an unregistered bare word that is a checkpoint here
    assert registry.resolve("mine") is None


@pytest.mark.parametrize("what", ["small", "small-symbol.json", "small-0003.params", "small/"])
def test_a_name_that_is_also_a_file_here_is_refused_as_ambiguous(tmp_path, monkeypatch, small_dir, what):
    monkeypatch.chdir(tmp_path)
    if what.endswith("/"):
        (tmp_path / what).mkdir()
    else:
        (tmp_path / what).write_text("")
    with pytest.raises(UserError, match=r"^model 'small' is ambiguous: .* write \./small for the one here"):
        registry.resolve("small")
    assert registry.resolve("./small") is None  # the documented way to mean the file
    with pytest.raises(UserError, match="ambiguous"):
        model_files("small")  # the scripts' first step: refused before any work


def test_infer_refuses_an_ambiguous_name_in_one_line(tmp_path):
    (tmp_path / "small").mkdir()
    _one_line_error(_run(os.path.join(ROOT, "infer.py"), "--image", T1, "--model", "small", cwd=str(tmp_path)),
                    "ambiguous", "./small")


def test_unknown_and_absent_names_are_one_line_errors_naming_the_models_here(monkeypatch):
    monkeypatch.delenv(registry.MODELS_DIR_ENV, raising=False)
    _one_line_error(run_script("infer.py", "--image", T1, "--model", "large"), "--model large",
                    "available here: default, small, open")
    with pytest.raises(UserError, match=r"^no bundled model named 'large' \(registered: default, small, open;"):
        registry.lookup("large")
    _one_line_error(run_script("eval.py", "--rec", "nowhere.rec", "--model", "large"), "--model large",
                    "available here: default, small, open")
    _one_line_error(run_script("tools/export_onnx.py", "large", "/tmp/never-written.onnx"), "large")
    assert not os.path.exists("/tmp/never-written.onnx")


def test_a_registered_name_not_installed_is_one_line(without_small):
    """An install without the `small` files (every registered name ships in the checkout and the wheel)."""
    with pytest.raises(UserError, match=r"^bundled model 'small' is not installed here .*available here: default, "
                                        r"open$"):
        registry.resolve("small")
    with pytest.raises(UserError, match="not installed"):
        model_files("small")


def test_the_files_of_a_named_model_are_inputs_no_output_may_replace(small_dir):
    prefix = os.path.join(small_dir, "agegender-small")
    assert model_files("small") == [prefix + ".onnx", prefix + "-symbol.json", prefix + "-0000.params",
                                    prefix + "-calibration.json", prefix + ".LICENSE.md", TEACHER_ONNX]
    assert model_files("small", calibration=False)[3] == prefix + ".LICENSE.md"
    assert model_files(None)[0] == model_files("default")[0] == BUNDLED_ONNX  # the env folder has no default
    for flag in ("--csv", "--jsonl"):
        for target in (prefix + ".LICENSE.md", prefix + "-calibration.json"):
            _one_line_error(run_script("infer.py", "--image", T1, "--model", "small", flag, target), "is an input")
    assert open(prefix + ".LICENSE.md").read().startswith("# small")


def test_small_answers_through_the_api_infer_and_both_engines(small_dir):
    from agegender.model.loading import load_engine
    from agegender.serving.analyzer import FaceAnalyzer

    small = FaceAnalyzer.from_options(model="small", det_threads=1, net_threads=1)
    default = FaceAnalyzer.from_options(det_threads=1, net_threads=1)
    assert small.engine.bundled.name == "small" and default.engine.bundled.name == "default"
    assert small.engine.gender_temperature == SMALL_T != default.engine.gender_temperature
    assert small.engine.license == SMALL_TERMS  # the ONNX metadata's, as the registry states it
    ours = [f.p_male for f in small.analyze(T1)]
    assert len(ours) == 6 and ours != [f.p_male for f in default.analyze(T1)]  # another model answers
    doc = json.loads(run_script("infer.py", "--image", T1, "--model", "small", "--json", check=True).stdout)[0]
    assert [f["p_male"] for f in doc["faces"]] == pytest.approx(ours, abs=1e-4)
    mx = load_engine("small", engine="mxnet")  # the checkpoint under the scheme, with its calibration file
    assert mx.bundled.name == "small" and mx.gender_temperature == SMALL_T and mx.name.endswith("agegender-small,0")


def test_eval_evaluates_a_named_model(small_dir, tmp_path):
    import cv2

    from agegender.data.demo import aligned_demo_faces
    from agegender.data.recordio import SplitWriter

    writer = SplitWriter(str(tmp_path), "val")
    for face in aligned_demo_faces():
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(face.transpose(1, 2, 0).astype("uint8"), cv2.COLOR_RGB2BGR))
        writer.write(jpeg.tobytes(), 1, 40.0, 0, "face.jpg")
    writer.commit()
    out = tmp_path / "report.json"
    run_script("eval.py", "--model", "small", "--rec", str(tmp_path / "val.rec"), "--json", str(out), "--no-progress",
               check=True)
    report = json.loads(out.read_text())
    assert report["model"].endswith("agegender-small.onnx") and report["engine"] == "onnx"


def test_v1_model_and_the_page_name_the_model_and_its_terms(small_dir, tmp_path):
    from fastapi.testclient import TestClient

    from agegender.serving.analyzer import FaceAnalyzer
    from agegender.serving.service import DET_FLOOR, create_app

    for model, bundled, file, terms, origin in (("small", "small", "agegender-small.onnx", SMALL_TERMS, "InsightFace"),
                                                (None, "default", "agegender.onnx", WEIGHTS_TERMS, "the CC0 weights")):
        analyzer = FaceAnalyzer.from_options(model=model, det_thresh=DET_FLOOR, det_threads=1, net_threads=1)
        with TestClient(create_app(analyzer)) as c:
            m, page = c.get("/v1/model").json(), c.get("/")
        assert m["bundled"] == bundled and m["file"] == file and m["license"]["model"] == terms
        assert json.loads(m["provenance"])["data"].startswith("UTKFace + All-Age-Faces + FairFace")  # its export's
        assert page.status_code == 200 and "content-security-policy" in page.headers
        assert f'<b id="model-name">{bundled} ({file})</b>' in page.text
        assert f"terms: the bundled model (fine-tuned from {origin}" in page.text
        assert small_dir not in page.text and small_dir not in json.dumps(m)  # no folder of the machine
    copy = tmp_path / "mine.onnx"  # a model given by its file: no registered name
    shutil.copy(BUNDLED_ONNX, copy)
    analyzer = FaceAnalyzer.from_options(model=str(copy), det_thresh=DET_FLOOR, det_threads=1, net_threads=1)
    with TestClient(create_app(analyzer)) as c:
        assert c.get("/v1/model").json()["bundled"] is None and '<b id="model-name">mine.onnx</b>' in c.get("/").text


def test_an_exported_open_model_carries_its_licence_and_provenance(small_dir):
    """Exported with --license / --provenance and dropped into the models folder as `open`: the engine,
    /v1/model's fields and --version read its terms back; a JSON provenance is stored compact."""
    out = os.path.join(small_dir, "agegender-open.onnx")
    proc = run_script("tools/export_onnx.py", "default", out, "--license", registry.OPEN_TERMS,
                      "--provenance", '{"data": "FairFace train",  "init": "random"}', check=True)
    assert "outputs equal to MXNet's" in proc.stdout
    from agegender.model.loading import load_engine

    engine = load_engine("open", threads=1)
    assert engine.bundled.name == "open" and engine.license == registry.OPEN_TERMS
    assert json.loads(engine.provenance) == {"data": "FairFace train", "init": "random"}
    assert engine.provenance == '{"data":"FairFace train","init":"random"}'
    version = _run("-m", "agegender", "--version")
    assert version.returncode == 0 and "  open: " in version.stdout and registry.OPEN_TERMS in version.stdout
    assert "  small: " in version.stdout and "  default: models/agegender.onnx" in version.stdout
    assert "not installed" not in version.stdout
    _one_line_error(run_script("tools/export_onnx.py", "default", out + ".x.onnx", "--provenance", "{not json"),
                    "--provenance", "not JSON")


def test_an_open_checkpoint_exported_in_memory_or_by_path_states_its_registered_terms(small_dir, tmp_path):
    """`open` with only its checkpoint: exported in memory (the onnx engine) it states the same terms as
    under MXNet, its registered ones; tools/export_onnx.py given its PREFIX,0 by path writes them too."""
    import onnx

    from agegender.model.loading import load_engine

    for suffix in ("-symbol.json", "-0000.params"):
        shutil.copy(BUNDLED_MODEL + suffix, os.path.join(small_dir, f"agegender-open{suffix}"))
    assert load_engine("open", engine="mxnet").license == registry.OPEN_TERMS
    exported = load_engine("open", threads=1)
    assert exported.bundled.name == "open" and exported.license == registry.OPEN_TERMS
    out = str(tmp_path / "open.onnx")
    run_script("tools/export_onnx.py", os.path.join(small_dir, "agegender-open") + ",0", out, check=True)
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["license"] == registry.OPEN_TERMS


def test_every_bundled_model_here_states_the_registered_terms_and_ships_in_the_wheel(monkeypatch):
    """A model dropped into models/ must carry its registered terms in its ONNX metadata and be listed in
    pyproject.toml's wheel table, each of its files."""
    import onnx

    monkeypatch.delenv(registry.MODELS_DIR_ENV, raising=False)
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        pyproject = f.read()
    present = registry.available()
    assert "default" in [m.name for m in present]
    for model in present:
        if model.has_onnx:
            meta = {p.key: p.value for p in onnx.load(model.onnx, load_external_data=False).metadata_props}
            assert meta.get("license") == model.terms, model.name
        for path in model.files():
            if os.path.isfile(path) and os.path.dirname(path) == registry.BUILTIN_DIR:
                name = os.path.basename(path)
                assert f'"models/{name}" = "agegender/weights/{name}"' in pyproject, name


def test_a_name_is_a_checkpoint_for_widen_and_pretrained(small_dir, tmp_path):
    """tools/widen.py SOURCE and train.py --pretrained take a bundled model's name as its checkpoint."""
    proc = run_script("tools/widen.py", "small", str(tmp_path / "wide"), "--multiplier", "0.5", check=True)
    assert "parameters widened" in proc.stdout and (tmp_path / "wide-0000.params").is_file()
    assert registry.resolve("small", strict=False).prefix == os.path.join(small_dir, "agegender-small")


def test_the_docs_quote_the_absent_model_error_as_the_code_writes_it(without_small):
    """docs/model.md quotes the one line an absent name gives (its folder written `models/`), and README
    names all three."""
    with pytest.raises(UserError) as err:
        registry.resolve("small")
    line = "error: " + str(err.value).replace(os.pathsep.join(registry.model_dirs()), "models/")
    with open(os.path.join(ROOT, "docs", "model.md"), encoding="utf-8") as f:
        assert f"`{line}`" in " ".join(f.read().split()), line
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = " ".join(f.read().split())
    assert "`--model open`" in readme and "`--model small`" in readme


def test_a_name_only_installed_as_onnx_is_one_line_naming_its_flag_and_no_engine(tmp_path, packed_demo):
    """`open` with only its .onnx: train.py --pretrained, tools/widen.py and tools/export_onnx.py each say
    it has no checkpoint, naming their own argument, never `--engine` (they have none); infer.py --engine
    mxnet is the one told to use --engine onnx. One function turns a name into a checkpoint (resolve_model)."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(BUNDLED_ONNX, folder / "agegender-open.onnx")
    env = dict(os.environ, **{registry.MODELS_DIR_ENV: str(folder)})

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)

    for args, flag in (((os.path.join(ROOT, "train.py"), "--pretrained", "open", "--prefix", str(tmp_path / "r"),
                         "--data-dir", packed_demo[0], "--batch-size", "4"), "--pretrained open"),
                       ((os.path.join(ROOT, "tools", "widen.py"), "open", str(tmp_path / "w")), "source open"),
                       ((os.path.join(ROOT, "tools", "export_onnx.py"), "open", str(tmp_path / "o.onnx")),
                        "model open")):
        proc = run(*args)
        _one_line_error(proc, flag, "no MXNet checkpoint")
        assert "--engine" not in proc.stderr, proc.stderr
    proc = run(os.path.join(ROOT, "infer.py"), "--image", T1, "--model", "open", "--engine", "mxnet")
    _one_line_error(proc, "no MXNet checkpoint", "use --engine onnx")


def test_the_shipped_open_model_mixes_the_teacher_at_its_own_weight_in_both_engines(monkeypatch):
    """`open` was calibrated with its own weight for the teacher net (tools/calibrate.py on its FairFace split,
    the figure docs/calibration-and-ensemble.md quotes): its ONNX and its checkpoint say the same, /v1/model
    reports it, and the default keeps the plain mean."""
    pytest.importorskip("mxnet", reason="the checkpoint engine needs MXNet (requirements.txt)")
    from fastapi.testclient import TestClient

    from agegender.model.loading import load_engine
    from agegender.serving.analyzer import FaceAnalyzer
    from agegender.serving.service import DET_FLOOR, create_app

    monkeypatch.delenv(registry.MODELS_DIR_ENV, raising=False)
    assert load_engine("open", threads=1).teacher_weight == load_engine("open", engine="mxnet").teacher_weight == 0.35
    assert load_engine(None, threads=1).teacher_weight == 0.5
    analyzer = FaceAnalyzer.from_options(model="open", det_thresh=DET_FLOOR, det_threads=1, net_threads=1)
    with TestClient(create_app(analyzer)) as c:
        m = c.get("/v1/model").json()
    assert m["bundled"] == "open" and m["gender_teacher_weight"] == 0.35 and "weight 0.35" in m["gender_coding"]
