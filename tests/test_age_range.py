"""The age range (agegender/model/age.py): quantiles of P(age > k), its coverage, the calibrated widening (fitted,
stored beside the gender temperature, read back), and the quality flag's thresholds on real photos."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_path

from agegender.errors import UserError
from agegender.model.age import (NO_WIDENING, NUM_AGE_BINS, Widening, age_probs, age_range, coverage, quantile_age)
from agegender.model.metrics import calibration_half, fit_widening, range_report


def uniform(lo: int, hi: int) -> np.ndarray:
    """P(age > k) of a distribution uniform over the whole ages lo..hi."""
    ages = np.arange(lo, hi + 1)
    return np.array([[(ages > k).mean() for k in range(NUM_AGE_BINS)]])


def logistic(centre: np.ndarray, sd: float) -> np.ndarray:
    """P(age > k) rows of logistic distributions of standard deviation `sd` around each centre."""
    scale = sd * np.sqrt(3) / np.pi
    k = np.arange(NUM_AGE_BINS)
    return 1 / (1 + np.exp(-(np.asarray(centre, np.float64)[:, None] - k - 0.5) / scale))


def test_quantiles_and_range_of_a_hand_made_distribution():
    p = uniform(20, 29)  # ten ages, a tenth each: the whole ages are the spans [a - 1/2, a + 1/2]
    assert quantile_age(p, 0.5)[0] == pytest.approx(24.5)
    assert quantile_age(p, 0.1)[0] == pytest.approx(20.5) and quantile_age(p, 0.9)[0] == pytest.approx(28.5)
    low, high = age_range(p, 0.8)
    assert (low[0], high[0]) == (21, 28)  # eight of the ten ages
    truth = np.arange(20, 30)
    assert coverage(np.repeat(low, 10), np.repeat(high, 10), truth) == pytest.approx(0.8)
    low, high = age_range(p, 0.5)
    # quantiles 22.0 and 27.0 fall mid-year: a bound inside a year's span takes the whole year
    assert (low[0], high[0]) == (22, 27) and coverage(np.repeat(low, 10), np.repeat(high, 10), truth) == 0.6
    # the point age shown beside it is always inside
    low, high = age_range(p, 0.5, age=np.array([33.0]))
    assert (low[0], high[0]) == (22, 33)


def test_age_probs_is_the_non_increasing_p_of_the_pairs():
    out = np.zeros((1, 202))
    out[0, 2::2], out[0, 3::2] = 0.0, np.where(np.arange(100) < 30, 5.0, -5.0)
    out[0, 3 + 2 * 40] = 5.0  # a stray "age > 40" after the drop: made non-increasing
    p = age_probs(out)
    assert p.shape == (1, 100) and np.all(np.diff(p[0]) <= 0) and p[0, 40] == pytest.approx(p[0, 39])


def test_widening_makes_an_overconfident_range_cover_on_held_out_faces():
    rng = np.random.default_rng(0)
    truth = rng.integers(5, 70, 4000).astype(np.float64)
    pred = truth + rng.normal(0, 6, truth.size)
    p = logistic(pred, 3.0)  # the model claims 3 years of spread; it is off by 6
    half = calibration_half(np.arange(truth.size))
    low, high = age_range(p[~half], 0.8, None, pred[~half])
    assert coverage(low, high, truth[~half]) < 0.6  # raw: far from 80 %
    w = fit_widening(p[half], pred[half], truth[half], edges=(0,))
    assert np.all(w.low > 1.4) and np.all(w.high > 1.4)
    for level in (0.5, 0.8, 0.9):
        low, high = age_range(p[~half], level, w, pred[~half])
        assert abs(coverage(low, high, truth[~half]) - level) < 0.03, level
    rep = range_report(low, high, pred[~half], truth[~half])
    assert {b["band"] for b in rep["bands"]} >= {"10-19", "60-69"} and rep["count"] == (~half).sum()


def test_a_narrow_range_means_a_better_guess_in_the_report():
    truth = np.full(300, 30.0)
    pred = truth + np.r_[np.zeros(150), np.full(150, 10.0)]
    low = pred - np.r_[np.ones(150), np.full(150, 12.0)]
    rep = range_report(low, pred + 1, pred, truth)
    assert rep["mae_narrowest_third"] == 0 and rep["mae_widest_third"] == 10


def test_widening_round_trips_and_refuses_nonsense():
    w = Widening([0.5, 0.8], [0, 20], [[1.2, 1.5], [1.4, 2.0]], [[1.0, 1.1], [0.9, 0.8]])
    assert Widening.from_dict(json.dumps(w.to_dict())) == w
    low, high = w.factors(0.8, np.array([5.0, 25.0]))
    assert low.tolist() == [1.4, 2.0] and high.tolist() == [0.9, 0.8]
    assert w.factors(0.65, np.array([5.0]))[0][0] == pytest.approx(1.3)  # between two levels: interpolated
    assert NO_WIDENING.is_identity and not w.is_identity
    one = {"levels": [0.8], "edges": [0], "low": [[1.0]], "high": [[1.0]]}
    assert Widening.from_dict(one).is_identity
    for bad in ({**one, "low": [[-1]]}, {**one, "levels": [1.5]}, {**one, "edges": [5]}, {**one, "high": [[1, 2]]},
                {"levels": [0.8]}, "not json"):
        with pytest.raises(ValueError):
            Widening.from_dict(bad)


def test_widening_is_stored_beside_the_temperature_and_read_back(tmp_path):
    from agegender.model.engine import (BUNDLED_ONNX, OnnxEngine, read_checkpoint_calibration,
                                        with_temperature)

    w = Widening([0.8], [0, 30], [[1.5, 2.5]], [[1.2, 3.0]])
    with open(BUNDLED_ONNX, "rb") as f:
        model = with_temperature(f.read(), 0.7, w)
    engine = OnnxEngine("calibrated.onnx", threads=1, model=model)
    assert engine.age_widening == w and engine.gender_temperature == pytest.approx(0.7)
    faces = np.random.default_rng(1).integers(0, 255, (3, 112, 112, 3), dtype=np.uint8)
    wide = engine.predict_labels(faces, age_level=0.8)
    engine.age_widening = NO_WIDENING
    raw = engine.predict_labels(faces, age_level=0.8)
    assert np.all(wide.age_high - wide.age_low >= raw.age_high - raw.age_low)
    assert np.any(wide.age_high - wide.age_low > raw.age_high - raw.age_low)
    # the sides widen apart: a longer low side moves only the low end
    engine.age_widening = Widening([0.8], [0], [[3.0]], [[1.0]])
    low_only = engine.predict_labels(faces, age_level=0.8)
    assert np.array_equal(low_only.age_high, raw.age_high) and np.all(low_only.age_low <= raw.age_low)
    # a checkpoint's: PREFIX-calibration.json
    prefix = str(tmp_path / "model")
    (tmp_path / "model-calibration.json").write_text(json.dumps({"gender_temperature": 0.6,
                                                                 "age_range_widening": w.to_dict()}))
    assert read_checkpoint_calibration(prefix, "m").widening == w and read_checkpoint_calibration(prefix, "m").temperature == 0.6
    (tmp_path / "model-calibration.json").write_text(json.dumps({"age_range_widening": {"levels": [2]}}))
    with pytest.raises(UserError, match="age_range_widening"):
        read_checkpoint_calibration(prefix, "m").widening
    (tmp_path / "model-calibration.json").write_text(json.dumps({"gender_temperature": 0.6}))
    assert read_checkpoint_calibration(prefix, "m").widening is NO_WIDENING  # an older file: no widening, still read


def test_the_bundled_model_ships_its_widening_in_both_places():
    from agegender.model.engine import BUNDLED_MODEL, OnnxEngine, read_checkpoint_calibration

    engine = OnnxEngine(BUNDLED_MODEL + ".onnx", threads=1)
    assert not engine.age_widening.is_identity
    assert read_checkpoint_calibration(BUNDLED_MODEL, "bundled").widening == engine.age_widening
    T = engine.gender_temperature
    assert read_checkpoint_calibration(BUNDLED_MODEL, "bundled").temperature == T and T != pytest.approx(1.0)  # calibrated


def _flags(photo: str):
    from agegender.data.image import read_image
    from agegender.serving.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer.from_options(net_threads=1)
    return analyzer.analyze(read_image(shared_path("data", "photos", photo)))


def test_quality_flag_marks_the_tiny_selfie_faces_and_spares_t1():
    faces = _flags("insightface_worlds-largest-selfie.jpg")
    tiny = [fr for fr in faces if fr.box[2] - fr.box[0] < 24]
    assert len(tiny) >= 40
    assert sum(fr.flagged for fr in tiny) >= 0.8 * len(tiny)
    t1 = _flags("insightface_t1.jpg")
    assert len(t1) == 6 and sum(fr.flagged for fr in t1) < 0.05 * len(t1)


def test_quality_measures():
    import cv2

    from agegender.data.quality import sharpness, yaw

    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    assert sharpness(sharp) > 10 * sharpness(cv2.GaussianBlur(sharp, (0, 0), 3))
    frontal = np.array([[40, 50], [70, 50], [55, 65], [42, 80], [68, 80]], np.float32)
    turned = frontal.copy()
    turned[2, 0] = 68
    assert abs(yaw(frontal)) < 0.01 and yaw(turned) > 0.4


def test_the_layout_is_chosen_by_cross_validation():
    """One factor per side when the spread is the same at every age; per band when it is not."""
    from agegender.model.metrics import select_widening

    rng = np.random.default_rng(2)
    truth = rng.integers(2, 80, 6000).astype(np.float64)
    pred = truth + rng.normal(0, 5, truth.size)
    index = np.arange(truth.size) * 2  # the calibration half's record numbers
    _, chosen, scores = select_widening(logistic(pred, 3.0), pred, truth, index, levels=(0.8,))
    assert chosen == "global" and len(scores) == 4
    # the young read within 1 year, the rest within 9: one factor cannot fit both
    pred = truth + rng.normal(0, 1, truth.size) * np.where(truth < 20, 1, 9)
    _, chosen, _ = select_widening(logistic(pred, 3.0), pred, truth, index, levels=(0.8,))
    assert chosen.startswith("per band")


def test_label_text_on_the_image_and_the_level_flag(tmp_path):
    from agegender.data.face import Face
    from agegender.serving.analyzer import FaceResult
    from agegender.serving.inference import label_text

    face = Face(np.array([0, 0, 40, 40], np.float32), 0.9, np.zeros((5, 2), np.float32))
    fr = FaceResult(face, 0.8, 24.0, 19.0, 31.0)
    assert label_text(fr) == "M 24 (19-31)"
    fr.flags = ("small",)
    assert label_text(fr) == "M 24 (19-31)?"
    assert label_text(FaceResult(face)) == "?"


def test_a_higher_level_gives_wider_ranges_and_drop_flagged_drops(tmp_path):
    from agegender.data.image import read_image
    from agegender.serving.analyzer import FaceAnalyzer

    rgb = read_image(shared_path("data", "photos", "insightface_worlds-largest-selfie.jpg"))
    narrow = FaceAnalyzer.from_options(net_threads=1, age_level=0.5).analyze(rgb)
    wide = FaceAnalyzer.from_options(net_threads=1, age_level=0.95).analyze(rgb)
    assert [f.age for f in narrow] == [f.age for f in wide]
    assert all(w.age_low <= n.age_low and n.age_high <= w.age_high for n, w in zip(narrow, wide))
    assert sum(w.age_high - w.age_low for w in wide) > 1.5 * sum(n.age_high - n.age_low for n in narrow)
    kept = FaceAnalyzer.from_options(net_threads=1, drop_flagged=True).analyze(rgb)
    assert len(kept) == sum(not f.flagged for f in narrow) and not any(f.flagged for f in kept)
    assert [f.index for f in kept] == list(range(1, len(kept) + 1))  # numbered among the faces reported
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaceAnalyzer.from_options(net_threads=1, age_level=1.0)


def test_a_split_of_age_groups_gets_its_range_reported_as_overlap_and_inside():
    """FairFace-like: every face labelled by group. The odd records' ranges are reported against the groups
    (overlapping it, holding all of it), not left out silently; the even (calibration) half is not counted."""
    from agegender.model.evaluation import Predictions, format_report, report

    n = 8
    lo, hi = np.full(n, 20.0), np.full(n, 29.0)
    # odd records 1, 3, 5, 7: holds 20-29, overlaps it only, holds it, misses it; the even ones all miss
    low = np.array([30, 18, 30, 22, 30, 18, 30, 30], np.float64)
    high = np.array([40, 31, 40, 25, 40, 31, 40, 40], np.float64)
    index = np.arange(n)
    pred = Predictions(p_male=np.full(n, 0.9), age_pred=np.full(n, 24.0), gender=np.ones(n), age=(lo + hi) / 2,
                       source=["x"] * n, age_lo=lo, age_hi=hi, age_low=low, age_high=high, index=index)
    odd = ~calibration_half(index)
    rep = report(pred)
    assert "age_range" not in rep
    groups = rep["age_range_groups"]
    assert groups["count"] == int(odd.sum()) == 4
    assert (groups["overlap"], groups["inside"]) == (0.75, 0.5)
    assert "age range 80% on 4 faces labelled by group" in format_report(rep, 0.8)


def test_a_higher_level_never_gives_a_narrower_range_even_where_the_fitted_factors_cross():
    """Each level's factors are fitted on their own: here the 50 % range is stretched 3x and the 95 % one
    shrunk to 0.3x, which alone would put the 95 % range inside the 50 % one."""
    from agegender.model.age import Widening, age_probs, age_range

    rng = np.random.RandomState(0)
    logits = rng.normal(0, 1, (40, 202)).astype(np.float32)
    logits[:, 3::2] += np.linspace(4, -4, 100)  # P(age > k) falls with k
    p = age_probs(logits)
    crossed = Widening(levels=(0.5, 0.95), edges=(0.0,), low=((3.0,), (0.3,)), high=((3.0,), (0.3,)))
    last = None
    for level in (0.5, 0.6, 0.8, 0.9, 0.95):
        low, high = age_range(p, level, crossed)
        if last is not None:
            assert np.all(low <= last[0]) and np.all(high >= last[1]), level
        last = low, high
    raw_low, raw_high = age_range(p, 0.5)
    assert np.any(last[0] < raw_low) or np.any(last[1] > raw_high)  # the stretched 50 % range shows through
