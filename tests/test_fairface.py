"""FairFace: the official layout read natively (age groups as intervals, race kept, spreadsheet dates
refused), the attributes sidecar, interval targets in the loss, and eval's age-group and race tables."""
from __future__ import annotations

import csv
import json
import os

import mxnet as mx
import numpy as np
import pytest

from agegender.data.recordio import read_attrs
from agegender.data.sources import BAD_AGE, BAD_GENDER, parse_age_group, parse_fairface
from agegender.model.age import age_gender_loss, age_targets, interval_targets
from agegender.model.metrics import band_table, in_interval
from conftest import ROOT, run_script


def test_age_groups_parse_as_intervals():
    assert parse_age_group("10-19") == (10, 19)
    assert parse_age_group("0-2") == (0, 2)
    assert parse_age_group("more than 70") == (70, 100)
    for bad in ("03-Sep", "Sep-03", "19-10", "", "ten"):
        assert parse_age_group(bad) is None


def test_parse_fairface_keeps_race_and_intervals_and_reports_bad_rows(demo_sources):
    p = parse_fairface(demo_sources["fairface"], "train")
    by_name = {os.path.basename(s.path): s for s in p.samples}
    assert by_name["1.jpg"].gender == 1 and by_name["1.jpg"].race == "Black"
    assert by_name["2.jpg"].gender == 0 and by_name["2.jpg"].interval() == (3, 9)
    assert by_name["3.jpg"].interval() == (70, 100)
    assert by_name["2.jpg"].age == pytest.approx(6.0)  # the midpoint, for tools that read one age
    reasons = {os.path.basename(s.path): s.reason for s in p.skips}
    assert reasons == {"7.jpg": BAD_AGE, "8.jpg": BAD_GENDER}
    assert "03-Sep" in next(s.detail for s in p.skips if s.reason == BAD_AGE)
    val = parse_fairface(demo_sources["fairface"], "val")
    assert {s.split for s in val.samples} == {"val"}  # the benchmark split never reaches train


def test_create_dataset_packs_fairface_with_its_sidecar(demo_sources, tmp_path):
    out = tmp_path / "ff"
    proc = run_script("create_dataset.py", "--fairface", demo_sources["fairface"], "--output", str(out),
                      "--val-ratio", "0", "--workers", "1", "--no-progress", "--no-face", "center")
    assert proc.returncode == 0, proc.stderr
    with open(out / "skipped.csv") as f:
        skipped = {os.path.basename(r["path"]): r["reason"] for r in csv.DictReader(f)}
    assert skipped["7.jpg"] == BAD_AGE and skipped["8.jpg"] == BAD_GENDER and "9.jpg" in skipped
    lst = [line.split("\t") for line in (out / "train.lst").read_text().splitlines()]
    attrs = read_attrs(str(out / "train.rec"), np.array([float(r[2]) for r in lst]))
    by_name = {os.path.basename(r[3]): i for i, r in enumerate(lst)}
    i = by_name["5.jpg"]
    assert (attrs.age_lo[i], attrs.age_hi[i], attrs.race[i]) == (10, 19, "Latino_Hispanic")
    assert attrs.grouped.all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sources"][0]["name"] == "fairface"
    # the published val split goes whole into val.rec
    bench = tmp_path / "ffval"
    proc = run_script("create_dataset.py", "--fairface", demo_sources["fairface"], "--fairface-set", "val",
                      "--output", str(bench), "--workers", "1", "--no-progress", "--no-face", "center")
    assert proc.returncode == 0, proc.stderr
    assert (bench / "val.rec").exists() and not (bench / "train.rec").exists()


def test_a_sidecar_of_another_split_is_refused(tmp_path):
    rec = tmp_path / "val.rec"
    (tmp_path / "val-attrs.csv").write_text("index,race,age_lo,age_hi\n0,White,10,19\n")
    with pytest.raises(ValueError, match="does not match"):
        read_attrs(str(rec), np.array([14.5, 30.0]))
    # a split packed before the sidecar existed: exact ages, no race
    a = read_attrs(str(tmp_path / "train.rec"), np.array([14.0, 30.0]))
    assert not a.grouped.any() and a.race == ["", ""]


def test_interval_targets_mask_what_the_group_does_not_say():
    lo = mx.nd.array([10, 25, 70])
    hi = mx.nd.array([19, 25, 100])
    t, mask = (x.asnumpy() for x in interval_targets(mx.nd, lo, hi))
    # "10-19": age > k is 1 for k < 10, unknown for 10 <= k < 19, 0 for k >= 19
    assert (t[0, :10] == 1).all() and (mask[0, :10] == 1).all()
    assert (mask[0, 10:19] == 0).all() and (mask[0, 19:] == 1).all() and (t[0, 19:] == 0).all()
    # an exact age is fully known, and the same as age_targets
    assert (mask[1] == 1).all()
    np.testing.assert_array_equal(t[1], age_targets(mx.nd, mx.nd.array([25])).asnumpy()[0])
    # "more than 70": nothing above 70 is taught
    assert (mask[2, 70:] == 0).all() and (t[2, :70] == 1).all()


def test_the_interval_prior_teaches_an_age_spread_evenly_over_the_group():
    """`--interval-prior W`: the pairs inside a group learn, with weight W, P(age > k) of an age spread evenly
    over its whole years, so the targets sum to the group's mean age; outside the group, and for exact ages,
    nothing changes. "more than 70" is spread over 70..89."""
    lo = mx.nd.array([10, 25, 70])
    hi = mx.nd.array([19, 25, 100])
    hard, hard_mask = (x.asnumpy() for x in interval_targets(mx.nd, lo, hi))
    t, mask = (x.asnumpy() for x in interval_targets(mx.nd, lo, hi, prior=0.25))
    np.testing.assert_allclose(t.sum(axis=1), [np.mean(range(10, 20)), 25, np.mean(range(70, 90))], atol=1e-5)
    np.testing.assert_allclose(t[0, 10:19], np.arange(9, 0, -1) / 10, atol=1e-6)
    inside = hard_mask == 0
    assert (mask[inside] == 0.25).all() and (mask[~inside] == 1).all()
    np.testing.assert_array_equal(t[~inside], hard[~inside])
    # the loss then moves with the pairs inside a group, less than with those it decides
    out = np.zeros((1, 202), np.float32)
    label = mx.nd.array([[1, 10, 19]])
    base = age_gender_loss(mx.nd, mx.nd.array(out), label, intervals=True, interval_prior=0.25).asnumpy()[0]
    out[0, 3 + 2 * 12] = 2.0  # "yes" of pair 12 (target 0.7)
    assert age_gender_loss(mx.nd, mx.nd.array(out), label, intervals=True, interval_prior=0.25).asnumpy()[0] != \
        pytest.approx(base, rel=1e-4)


def test_the_loss_ignores_the_pairs_inside_a_group():
    """Changing the outputs of pairs inside the labelled group leaves an interval label's loss unchanged;
    outside it, it changes. An exact label (lo = hi) sees every pair."""
    rng = np.random.default_rng(0)
    out = rng.normal(size=(2, 202)).astype(np.float32)
    label = mx.nd.array([[1, 10, 19], [0, 30, 30]])
    base = age_gender_loss(mx.nd, mx.nd.array(out), label, intervals=True).asnumpy()
    inside = out.copy()
    inside[:, 3 + 2 * 12: 3 + 2 * 15: 2] += 3.0  # "yes" of pairs k = 12..14
    moved = age_gender_loss(mx.nd, mx.nd.array(inside), label, intervals=True).asnumpy()
    assert moved[0] == pytest.approx(base[0], rel=1e-6)  # inside 10..19: not taught
    assert moved[1] != pytest.approx(base[1], rel=1e-3)  # an exact 30: taught
    outside = out.copy()
    outside[:, 3 + 2 * 25] += 3.0
    assert age_gender_loss(mx.nd, mx.nd.array(outside), label, intervals=True).asnumpy()[0] != pytest.approx(base[0])
    # exact labels in a width-3 batch give the loss of the width-2 batch
    two = age_gender_loss(mx.nd, mx.nd.array(out[1:]), mx.nd.array([[0, 30]])).asnumpy()
    assert base[1] == pytest.approx(two[0], rel=1e-6)


def test_group_accuracy_and_signed_error():
    assert in_interval([19.6, 20.0, 9.9], [10, 10, 10], [19, 19, 19]).tolist() == [True, False, False]
    rows = {r["band"]: r for r in band_table([14, 33, 12], [10, 30, 12], age_hi=np.array([19, 30, 12]))}
    assert rows["10-19"]["group_acc"] == 1.0 and rows["10-19"]["bias"] == pytest.approx(0.0)  # exact 12 read 12
    assert rows["30-39"]["bias"] == pytest.approx(3.0) and rows["30-39"]["mae"] == pytest.approx(3.0)


def test_the_bias_10_29_column_weights_each_band_by_its_exact_ages():
    """10-19: one exact face read +2 and nine grouped faces; 20-29: two exact faces read -1. The column is
    the mean over the three exact faces, (2 - 1 - 1) / 3 = 0, not weighted by the grouped faces too."""
    from agegender.model.evaluation import Predictions, format_sources, report

    lo = np.array([15] + [10] * 9 + [25, 25], np.float64)
    hi = np.array([15] + [19] * 9 + [25, 25], np.float64)
    pred = Predictions(p_male=np.full(12, 0.9), age_pred=np.array([17] + [14] * 9 + [24, 24], np.float64),
                       gender=np.ones(12), age=(lo + hi) / 2, source=["x"] * 12, age_lo=lo, age_hi=hi)
    rep = report(pred)
    rows = {b["band"]: b for b in rep["bands"]}
    assert (rows["10-19"]["count"], rows["10-19"]["exact"], rows["20-29"]["exact"]) == (10, 1, 2)
    line = format_sources([{"name": "x", **rep}], rep).splitlines()[1].split()
    assert line[7] == "0.00", line


def _tool(name: str, monkeypatch):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # a dataclass looks its module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fairface_val(tmp_path_factory) -> str:
    """The demo FairFace's published val split packed alone: every face labelled by group. Its folder."""
    from agegender.data.demo import build_demo_fairface

    root = tmp_path_factory.mktemp("ffsrc")
    out = tmp_path_factory.mktemp("ffval")
    run_script("create_dataset.py", "--fairface", build_demo_fairface(str(root / "ff")), "--fairface-set", "val",
               "--output", str(out), "--workers", "1", "--no-progress", "--no-face", "center", check=True)
    return str(out)


def test_the_photo_tools_read_a_split_s_groups_not_their_midpoints(fairface_val):
    """split_faces (tools/calibrate.py, tools/quality_report.py) reads the labelled groups from the sidecar:
    30-39 and 60-69, not the midpoints 34.5 / 64.5 the .lst carries."""
    from agegender.model.photo_eval import label_intervals
    from agegender.model.teacher import read_lst

    lst = os.path.join(fairface_val, "val.lst")
    entries = read_lst(lst)
    got = label_intervals(lst, entries)
    assert sorted(got.values()) == [(30.0, 39.0), (60.0, 69.0)]
    assert {e.age for e in entries} == {34.5, 64.5}  # what they read before


def test_calibrate_leaves_groups_out_of_the_range_fit_and_refuses_a_split_of_groups(monkeypatch, capsys):
    from agegender.errors import UserError
    from agegender.model.photo_eval import SplitFaces
    from tests.test_age_range import logistic

    calibrate = _tool("calibrate", monkeypatch)
    rng = np.random.default_rng(0)
    n = 400
    age = rng.integers(5, 80, n).astype(np.float64)
    pred = age + rng.normal(0, 4, n)

    def split(grouped: np.ndarray, keep: np.ndarray | None = None) -> SplitFaces:
        keep = np.ones(n, bool) if keep is None else keep
        lo = np.where(grouped, age // 10 * 10, age)[keep]
        hi = np.where(grouped, age // 10 * 10 + 9, age)[keep]
        k = int(keep.sum())
        s = SplitFaces("s", np.arange(n)[keep], np.ones(k), (lo + hi) / 2, *(np.zeros(k) for _ in range(3)),
                       np.zeros(k), age_probs=logistic(pred[keep], 6.0), age_lo=lo, age_hi=hi)
        s.age_pred = pred[keep]
        return s

    with pytest.raises(UserError, match="labelled by age group"):
        calibrate.age_range_section([split(np.ones(n, bool))])
    mixed = rng.random(n) < 0.4
    w = calibrate.age_range_section([split(mixed)])
    out = capsys.readouterr().out
    even = np.arange(n) % 2 == 0
    assert f"{int(mixed.sum())} faces labelled by age group left out" in out
    assert f"fitted on the even records ({int((even & ~mixed).sum())} faces)" in out
    assert f"odd records ({int((~even & ~mixed).sum())} faces)" in out
    # the same widening as from the exact faces alone: the groups' midpoints played no part
    assert w.to_dict() == calibrate.age_range_section([split(mixed, ~mixed)]).to_dict()


def test_learning_curve_evaluates_a_split_of_groups_as_eval_does(fairface_val, monkeypatch):
    from agegender.model.engine import BUNDLED_ONNX
    from agegender.model.evaluation import predict_rec, report
    from agegender.model.loading import load_engine

    lc = _tool("learning_curve", monkeypatch)
    rec = os.path.join(fairface_val, "val.rec")
    m = lc.evaluate(BUNDLED_ONNX, rec)
    want = report(predict_rec(load_engine(BUNDLED_ONNX), rec, progress=False))
    assert m["mae"] != m["mae"] and want["mae"] != want["mae"]  # no exact age: no MAE, not one over midpoints
    assert m["group_acc"] == want["group_acc"] and m["acc"] == want["acc"]


@pytest.mark.parametrize("body, message", [
    ("-1,White,10,19\n1,Black,20,29\n", "bad row"),         # would land on the last record
    ("0,White,10,19\n0,Black,20,29\n", "bad row"),          # record 1 would keep its .lst age silently
    (None, "not UTF-8"),
])
def test_a_sidecar_with_a_negative_or_repeated_index_or_not_utf8_is_refused_naming_it(tmp_path, body, message):
    path = tmp_path / "val-attrs.csv"
    if body is None:
        path.write_bytes(b"index,race,age_lo,age_hi\n0,Caf\xe9,10,19\n1,White,20,29\n")
    else:
        path.write_text("index,race,age_lo,age_hi\n" + body)
    with pytest.raises(ValueError, match=message) as err:
        read_attrs(str(tmp_path / "val.rec"), np.array([14.5, 24.5]))
    assert str(path) in str(err.value)


def test_model_report_refuses_a_split_of_groups_in_one_line(fairface_val):
    """tools/model_report.py reads the packed age as the true one: a FairFace split is sent to eval.py."""
    proc = run_script("tools/model_report.py", "--rec", os.path.join(fairface_val, "val.rec"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "labelled by an age group" in proc.stderr and "eval.py" in proc.stderr


def test_calibrate_fits_the_temperature_alone_on_a_split_of_groups(fairface_val, tmp_path):
    """The open model is calibrated on FairFace only: --gender-only fits T there and keeps the stored range
    widening; without it, such a split is one line that names the flag."""
    import onnx

    from agegender.model.engine import BUNDLED_ONNX, TEMPERATURE_KEY
    from agegender.model.age import WIDENING_KEY

    lst = os.path.join(fairface_val, "val.lst")
    proc = run_script("tools/calibrate.py", "--model", BUNDLED_ONNX, "--lst", lst)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--gender-only" in proc.stderr, proc.stderr
    out = str(tmp_path / "m.onnx")
    proc = run_script("tools/calibrate.py", "--model", BUNDLED_ONNX, "--lst", lst, "--gender-only", "--write", out)
    assert proc.returncode == 0, proc.stderr
    assert "age range widening kept" in proc.stdout
    before = {p.key: p.value for p in onnx.load(BUNDLED_ONNX).metadata_props}
    after = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert after[WIDENING_KEY] == before[WIDENING_KEY]
    assert after[TEMPERATURE_KEY] != before[TEMPERATURE_KEY]  # fitted on these faces


def test_calibrating_a_checkpoint_keeps_its_own_flip_default(fairface_val, tmp_path):
    """The open model reads each face once (`"flip": false` in its PREFIX-calibration.json): rewriting that
    sidecar with a new temperature keeps the setting."""
    import json

    import mxnet as mx

    from agegender.symbols import get_network, save_checkpoint

    prefix = str(tmp_path / "m")
    net = get_network("d10")
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 112, 112)))
    save_checkpoint(net, prefix, 0)
    sidecar = prefix + "-calibration.json"
    with open(sidecar, "w") as f:
        json.dump({"gender_temperature": 1.5, "flip": False}, f)
    proc = run_script("tools/calibrate.py", "--model", f"{prefix},0", "--lst", os.path.join(fairface_val, "val.lst"),
                      "--gender-only", "--write", sidecar)
    assert proc.returncode == 0, proc.stderr
    doc = json.load(open(sidecar))
    assert doc["flip"] is False and doc["gender_temperature"] != 1.5
