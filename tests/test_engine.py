"""The onnxruntime engine and the ONNX export: the shipped ONNX equals the shipped MXNet checkpoint, the
export tool, `--engine`/`--model FILE.onnx` in infer.py and eval.py, FaceAnalyzer, and inference without
MXNet. Runs everywhere except the tests marked with ../shared assets."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import onnx
import pytest

from tests.conftest import ROOT, insightface_model, run_script
from agegender.data.demo import aligned_demo_faces, wheel_image
from agegender.model.engine import BUNDLED_MODEL, BUNDLED_ONNX, OnnxEngine
from agegender.errors import UserError
from agegender.data.image import read_image


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return aligned_demo_faces()


def test_shipped_onnx_equals_shipped_mxnet_checkpoint(faces):
    """A model update that forgets tools/export_onnx.py fails here."""
    from agegender.model.mxnet_engine import MxnetEngine

    assert os.path.isfile(BUNDLED_ONNX), "models/agegender.onnx must be committed beside the MXNet files"
    onnx_out = OnnxEngine(BUNDLED_ONNX).outputs(faces)
    mx_out = MxnetEngine(BUNDLED_MODEL, 0).outputs(faces)
    assert onnx_out.shape == (len(faces), 202)
    assert np.abs(onnx_out - mx_out).max() <= 1e-4
    meta = {p.key: p.value for p in onnx.load(BUNDLED_ONNX).metadata_props}
    assert meta["source_checkpoint"] == "agegender,0"


def test_shipped_onnx_equals_mxnet_on_real_utkface_faces(packed_utkface):
    from agegender.data.iterators import eval_batches, record_iter
    from agegender.model.mxnet_engine import MxnetEngine

    rec = os.path.join(packed_utkface, "train.rec")
    data = np.concatenate([d.asnumpy() for d, _ in eval_batches(record_iter(rec, 16, train=False), 36)])
    assert np.abs(OnnxEngine(BUNDLED_ONNX).outputs(data) - MxnetEngine(BUNDLED_MODEL, 0).outputs(data)).max() <= 1e-4


def test_export_tool_writes_a_checked_model_with_metadata_and_a_dynamic_batch(tmp_path, faces):
    out = tmp_path / "insightface.onnx"
    proc = run_script("tools/export_onnx.py", insightface_model(), str(out), "--license", "InsightFace's terms",
                      check=True)
    assert "outputs equal to MXNet's" in proc.stdout
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["data"]  # weights are constants, not inputs
    assert [o.name for o in model.graph.output] == ["fc1_output"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert {"input", "output", "age_decoding", "gender_coding", "source_checkpoint", "versions"} <= set(meta)
    assert "RGB 0-255" in meta["input"] and json.loads(meta["versions"])["mxnet"] == "1.9.1"
    from agegender import __version__

    assert meta["agegender_version"] == model.producer_version == __version__
    eng = OnnxEngine(str(out))
    assert eng.version == __version__ and eng.license == "InsightFace's terms"  # the engine reports them
    one, many = eng.outputs(faces[:1]), eng.outputs(faces)
    assert many.shape == (len(faces), 202)
    np.testing.assert_allclose(one[0], many[0], atol=1e-4)
    # InsightFace's own reading of its model: gender argmax, age = sum of the pairs' argmax
    from agegender.symbols import load_model

    prefix = insightface_model().split(",")[0]
    ref = load_model(prefix, 0)(__import__("mxnet").nd.array(faces)).asnumpy()
    assert np.abs(many - ref).max() <= 1e-4


def test_export_tool_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "x.onnx"
    for args in ([f"{tmp_path}/missing,0", str(out)], [f"{BUNDLED_MODEL},0", str(tmp_path / "x.txt")]):
        proc = run_script("tools/export_onnx.py", *args)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
    bad = tmp_path / "bad"
    with open(f"{BUNDLED_MODEL}-symbol.json") as f:
        (tmp_path / "bad-symbol.json").write_text(f.read())
    (tmp_path / "bad-0000.params").write_bytes(open(f"{BUNDLED_MODEL}-0000.params", "rb").read()[:5000])
    proc = run_script("tools/export_onnx.py", f"{bad},0", str(out))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not os.listdir(tmp_path / "") or not out.exists()


def test_infer_engines_agree_and_onnx_model_file_is_accepted():
    t1 = wheel_image("t1.jpg")
    default = run_script("infer.py", "--image", t1, "--json", check=True)
    mxnet = run_script("infer.py", "--image", t1, "--json", "--engine", "mxnet", check=True)
    as_file = run_script("infer.py", "--image", t1, "--json", "--model", BUNDLED_ONNX, check=True)
    exported = run_script("infer.py", "--image", t1, "--json", "--engine", "onnx", "--model", f"{BUNDLED_MODEL},0",
                          check=True)
    docs = [json.loads(p.stdout)[0] for p in (default, mxnet, as_file, exported)]
    assert len(docs[0]["faces"]) == 6
    for doc in docs[1:]:
        for a, b in zip(docs[0]["faces"], doc["faces"]):
            assert a["box"] == b["box"] and a["gender"] == b["gender"]
            assert abs(a["age"] - b["age"]) <= 0.11 and abs(a["p_male"] - b["p_male"]) <= 2e-4


def test_engine_errors_are_one_line(tmp_path):
    t1 = wheel_image("t1.jpg")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all")
    cases = [["--model", str(garbage)],
             ["--model", str(tmp_path / "missing.onnx")],
             ["--engine", "mxnet", "--model", BUNDLED_ONNX]]
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        cases.append(["--gpus", "0"])
    for extra in cases:
        proc = run_script("infer.py", "--image", t1, *extra)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, (extra, proc.stderr)
    if ["--gpus", "0"] in cases:
        assert "onnxruntime-gpu" in run_script("infer.py", "--image", t1, "--gpus", "0").stderr


def test_a_model_with_another_output_layout_is_refused_at_load(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("GlobalAveragePool", ["data"], ["pooled"])
    flat = helper.make_node("Flatten", ["pooled"], ["out"])
    graph = helper.make_graph([node, flat], "g", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])])
    path = tmp_path / "three.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(UserError, match=r"outputs \(3,\) per face"):
        OnnxEngine(str(path))


def test_eval_onnx_and_mxnet_engines_give_the_same_report(packed_utkface, tmp_path):
    reps = []
    for engine in ("onnx", "mxnet"):
        out = tmp_path / f"{engine}.json"
        run_script("eval.py", "--rec", os.path.join(packed_utkface, "train.rec"), "--engine", engine,
                   "--json", str(out), "--no-progress", check=True)
        reps.append(json.loads(out.read_text()))
    assert reps[0]["engine"] == "onnx" and reps[1]["engine"] == "mxnet"
    assert reps[0]["acc"] == reps[1]["acc"] and abs(reps[0]["mae"] - reps[1]["mae"]) < 1e-3


def test_face_analyzer_api_labels_a_photo():
    from agegender.serving.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer.from_options()
    assert analyzer.engine.kind == "onnx"
    faces = analyzer.analyze(read_image(wheel_image("t1.jpg")))
    assert [f.gender for f in faces] == ["female", "female", "male", "male", "male", "female"]
    assert all(18 <= f.age <= 60 and f.score > 0.8 and f.box.shape == (4,) and f.landmarks.shape == (5, 2)
               for f in faces)
    assert analyzer.analyze(np.zeros((200, 300, 3), np.uint8)) == []


def test_infer_runs_with_mxnet_unimportable(tmp_path):
    """The onnx path imports no MXNet: with `import mxnet` made to fail, infer.py gives the same faces."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "mxnet.py").write_text("raise ImportError('mxnet is blocked for this test')\n")
    t1 = wheel_image("t1.jpg")
    clean = run_script("infer.py", "--image", t1, check=True).stdout
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(blocker))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), "--image", t1], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == clean
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), "--image", t1, "--engine", "mxnet"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # the block is real, and reported in one line, not a traceback
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(
        "error: --engine mxnet needs mxnet, which is not installed here; pip install mxnet==1.9.1")
