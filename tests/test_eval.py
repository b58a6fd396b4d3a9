"""eval.py: numbers checked by hand, the tables, JSON and plot, InsightFace's checkpoint, errors."""
from __future__ import annotations

import json
import os
import re

import mxnet as mx
import numpy as np
import pytest

from agegender.symbols import load_model
from tests.conftest import insightface_model, run_script
from agegender.data.recordio import iter_records


def _by_hand(model: str, rec: str, vote: bool = False):
    """Gender/age per record computed here from first principles: decode the JPEGs, forward, softmax."""
    prefix, epoch = model.split(",")
    net = load_model(prefix, int(epoch))
    recs = list(iter_records(rec))
    x = mx.nd.array(np.stack([mx.image.imdecode(r.jpeg).asnumpy() for r in recs]).transpose(0, 3, 1, 2))
    out = net(x).asnumpy().astype(np.float64)
    g = np.exp(out[:, :2]) / np.exp(out[:, :2]).sum(1, keepdims=True)
    pairs = out[:, 2:].reshape(-1, 100, 2)
    if vote:
        age = (pairs[:, :, 1] > pairs[:, :, 0]).sum(1)
    else:
        age = (1 / (1 + np.exp(pairs[:, :, 0] - pairs[:, :, 1]))).sum(1)
    gender = np.array([r.gender for r in recs])
    true_age = np.array([r.age for r in recs])
    known = gender >= 0
    acc = ((g[known, 1] >= 0.5).astype(int) == gender[known]).mean()
    err = np.abs(age - true_age)
    return acc, err.mean(), (err <= 3).mean(), (err <= 5).mean(), len(recs), int(known.sum())


def _printed(stdout: str) -> dict:
    vals = dict(re.findall(r"^(gender accuracy|age MAE|age CS@3|age CS@5): ([\d.]+)$", stdout, re.M))
    return {k: float(v) for k, v in vals.items()}


def test_eval_numbers_equal_a_hand_computation(packed_demo, random_model, tmp_path):
    data_dir, _ = packed_demo
    rec = os.path.join(data_dir, "train.rec")
    out_json, out_png = tmp_path / "e.json", tmp_path / "e.png"
    proc = run_script("eval.py", "--model", random_model, "--rec", rec, "--batch-size", "4", "--no-progress",
                      "--age-decode", "prob", "--no-flip", "--json", str(out_json), "--plot", str(out_png), check=True)
    acc, mae, cs3, cs5, n, n_known = _by_hand(random_model, rec)
    got = _printed(proc.stdout)
    assert got["gender accuracy"] == pytest.approx(acc, abs=1e-4)
    assert got["age MAE"] == pytest.approx(mae, abs=0.01)
    assert got["age CS@3"] == pytest.approx(cs3, abs=1e-4) and got["age CS@5"] == pytest.approx(cs5, abs=1e-4)
    assert f"records: {n} ({n_known} with known gender)" in proc.stdout
    # per age band and, the demo set mixing five sources, per source
    assert re.search(r"^age band\s+count\s+MAE\s+CS@5\s+bias\s+acc$", proc.stdout, re.M)
    assert re.search(r"^source\s+count\s+acc\s+MAE\s+CS@5\s+bias\s+group$", proc.stdout, re.M)
    for name in ("afad", "agedb", "utkface", "megaage"):
        assert re.search(rf"^{name}\s+\d+", proc.stdout, re.M), name
    doc = json.loads(out_json.read_text())
    assert doc["count"] == n and doc["mae"] == pytest.approx(mae, abs=1e-4) and doc["acc"] == pytest.approx(acc)
    assert doc["model"] == random_model and doc["age_decode"] == "prob"
    assert doc["gender_ensemble"] is True and doc["gender_teacher_weight"] == 0.5  # the weight it was read with
    assert proc.stdout.splitlines()[0].endswith("(mxnet), prob, flip off, gender: the ensemble, teacher weight 0.5")
    assert sum(b["count"] for b in doc["bands"]) == n and sum(s["count"] for s in doc["sources"]) == n
    assert set(doc["gender_confusion"]) == {"true_female", "true_male"}
    megaage = [s for s in doc["sources"] if s["source"] == "megaage"][0]
    assert megaage["acc"] is None  # MegaAge has no gender: undefined, not a number
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the age range's coverage, on the odd records only (the even ones are tools/calibrate.py's)
    rng = doc["age_range"]
    assert rng["count"] == n // 2 and 0 <= rng["coverage"] <= 1 and doc["age_level"] == 0.8
    assert sum(b["count"] for b in rng["bands"]) == rng["count"] and "mae_widest_third" in rng
    assert re.search(r"^age range 80%: coverage [01]\.\d{3} on \d+ faces", proc.stdout, re.M)


def test_batch_size_and_flip(packed_demo, random_model):
    data_dir, _ = packed_demo
    base = ["--model", random_model, "--data-dir", data_dir, "--no-progress"]
    one = _printed(run_script("eval.py", *base, "--batch-size", "1", "--no-flip", check=True).stdout)
    big = _printed(run_script("eval.py", *base, "--batch-size", "256", "--no-flip", check=True).stdout)
    assert one == pytest.approx(big, abs=2e-4)
    flip = _printed(run_script("eval.py", *base, "--flip", check=True).stdout)
    assert flip != big  # mirrored faces give a different average


def test_insightface_checkpoint_on_real_faces(packed_utkface):
    model = insightface_model()
    rec = os.path.join(packed_utkface, "train.rec")
    proc = run_script("eval.py", "--model", model, "--rec", rec, "--age-decode", "vote", "--no-flip", "--no-progress",
                      "--no-gender-ensemble", check=True)
    acc, mae, cs3, cs5, n, _ = _by_hand(model, rec, vote=True)
    got = _printed(proc.stdout)
    assert got["gender accuracy"] == pytest.approx(acc, abs=1e-4) and got["age MAE"] == pytest.approx(mae, abs=0.01)
    assert acc > 0.7 and mae < 12  # a real model on real faces, not noise


def test_model_report_tables_on_real_faces_and_their_degraded_copies(packed_utkface):
    """tools/model_report.py on 36 real faces: the decoding table, bands, races, and the robustness rows;
    the "as packed" row is eval.py's figures of the model alone (--no-gender-ensemble), and the faces at JPEG quality 10 really are degraded
    (they read worse)."""
    rec = os.path.join(packed_utkface, "train.rec")
    proc = run_script("tools/model_report.py", "--rec", rec, "--robustness", check=True)
    rows = {m[1]: [float(v) for v in m.groups()[1:]] for m in re.finditer(
        r"^\| (as packed|JPEG quality \d+|downscaled to \d+ px) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([-+\d.]+) \|",
        proc.stdout, re.M)}
    assert list(rows) == ["as packed", "JPEG quality 75", "JPEG quality 40", "JPEG quality 20", "JPEG quality 10",
                          "downscaled to 64 px", "downscaled to 48 px"]
    got = _printed(run_script("eval.py", "--rec", rec, "--no-progress", "--no-gender-ensemble", check=True).stdout)
    assert rows["as packed"][0] == pytest.approx(got["gender accuracy"], abs=1e-4)
    assert rows["as packed"][1] == pytest.approx(got["age MAE"], abs=0.01)
    assert rows["JPEG quality 10"][1] > rows["as packed"][1] + 0.5
    assert "| vote | yes |" in proc.stdout and "| White |" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--rec", "nowhere/val.rec", "--model", "{model}"], "record file not found"),
    (["--rec", "{rec}", "--model", "nowhere/model,3"], "model file not found"),
    (["--rec", "{rec}", "--model", "{model}", "--gpus", "7"], "GPU 7 is not available"),
    (["--rec", "{rec}", "--model", "{model}", "--batch-size", "0"], "--batch-size"),
])
def test_errors_are_one_line(args, message, packed_demo, random_model):
    rec = os.path.join(packed_demo[0], "val.rec")
    proc = run_script("eval.py", *[a.format(model=random_model, rec=rec) for a in args])
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_without_a_bundled_model_model_is_required(monkeypatch, tmp_path):
    import agegender.model.mxnet_engine as predict
    from agegender.errors import UserError
    from agegender.model import registry

    monkeypatch.setattr(registry, "BUILTIN_DIR", str(tmp_path / "absent"))
    monkeypatch.delenv(registry.MODELS_DIR_ENV, raising=False)
    with pytest.raises(UserError, match="--model is required"):
        predict.resolve_model(None)


def test_eval_reads_p_male_as_infer_does_with_the_models_temperature_and_the_ensemble(packed_utkface):
    """eval.py's P(male) is infer.py's: the model's stored gender temperature applied (which the ensemble's
    mean depends on), then averaged with the teacher's on chips cut from the packed crops."""
    from agegender.data.face import teacher_chips_of_aligned
    from agegender.model.ensemble import TeacherGender, ensemble_p_male
    from agegender.model.evaluation import predict_rec
    from agegender.model.loading import load_engine

    rec = os.path.join(packed_utkface, "train.rec")
    engine, teacher = load_engine(None, threads=1), TeacherGender(threads=1)
    assert engine.gender_temperature != 1.0  # the bundled model is calibrated
    from agegender.data.image import decode_image

    faces = np.stack([decode_image(r.jpeg) for r in iter_records(rec)])  # RGB
    ours = engine.predict_labels(faces, flip=True).p_male  # eval.py flips, as infer.py
    alone = predict_rec(engine, rec, progress=False).p_male
    np.testing.assert_allclose(alone, ours, atol=1e-4)
    both = predict_rec(engine, rec, progress=False, teacher=teacher).p_male
    want = ensemble_p_male(ours, teacher.p_male(teacher_chips_of_aligned(faces)))
    np.testing.assert_allclose(both, want, atol=1e-3)  # the crops decoded by two decoders: a grey level apart
    engine.teacher_weight = 0.2  # a model's calibrated weight for the teacher (tools/calibrate.py)
    light = predict_rec(engine, rec, progress=False, teacher=teacher).p_male
    np.testing.assert_allclose(light, ensemble_p_male(ours, teacher.p_male(teacher_chips_of_aligned(faces)), 0.2),
                               atol=1e-3)
    assert np.abs(light - both).max() > 0.01
