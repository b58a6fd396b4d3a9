"""Gender accuracy, age MAE and CS@n (MegaAge's CA(n), the ancestor's CUM_n): one home for training,
evaluation and the model card.

Gender accuracy counts only records whose gender is known (0 or 1); the age metrics count every record.
"""
from __future__ import annotations

import numpy as np

from agegender.model.age import Widening, age_range, coverage
from agegender.model.engine import DEFAULT_TEACHER_WEIGHT
from agegender.model.ensemble import ensemble_p_male

CS_LEVELS = (3, 5)
# (label, lowest age, highest age) of the per-band tables; the last band is open-ended
AGE_BANDS = [(f"{lo}-{lo + 9}", lo, lo + 9.999) for lo in range(0, 70, 10)] + [("70+", 70, float("inf"))]


def summarize(p_male: np.ndarray, age_pred: np.ndarray, gender: np.ndarray, age: np.ndarray) -> dict:
    """Metrics of one set of predictions: count, gender_count, acc, mae, cs3, cs5 (NaN when undefined)."""
    p_male, age_pred = np.asarray(p_male, np.float64), np.asarray(age_pred, np.float64)
    gender, age = np.asarray(gender, np.float64), np.asarray(age, np.float64)
    err = np.abs(age_pred - age)
    known = gender >= 0
    out = {"count": int(err.size), "gender_count": int(known.sum()),
           "acc": float(((p_male[known] >= 0.5) == (gender[known] == 1)).mean()) if known.any() else float("nan"),
           "mae": float(err.mean()) if err.size else float("nan")}
    for n in CS_LEVELS:
        out[f"cs{n}"] = float((err <= n).mean()) if err.size else float("nan")
    return out


def in_interval(age_pred: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Whether each predicted age lies in its labelled group lo..hi (whole years): lo <= a < hi + 1, so a
    predicted 19.6 is inside "10-19" (the age group accuracy of grouped labels, as FairFace is reported)."""
    a = np.asarray(age_pred, np.float64)
    return (a >= np.asarray(lo, np.float64)) & (a < np.asarray(hi, np.float64) + 1)


def band_table(age_pred: np.ndarray, age: np.ndarray, p_male: np.ndarray | None = None,
               gender: np.ndarray | None = None, age_hi: np.ndarray | None = None) -> list[dict]:
    """Per true-age band: band label, count, `exact` (those of them with an exact age), MAE, CS@5, the mean
    signed error `bias` (predicted minus true: positive = read older) and, given genders, gender accuracy
    (over known genders; NaN when none). Bands without records are left out. With `age_hi` (grouped labels: `age` is then each group's lo), a group
    falls in the band of its lo; MAE, CS@5 and bias count the exact ages only, and `group_acc` is the share
    of grouped faces read inside their group (NaN where the band has none of that kind)."""
    age_pred, age = np.asarray(age_pred, np.float64), np.asarray(age, np.float64)
    grouped = np.zeros(age.shape, bool) if age_hi is None else np.asarray(age_hi, np.float64) > age
    rows = []
    for label, lo, hi in AGE_BANDS:
        sel = (age >= lo) & (age <= hi)
        if sel.any():
            exact = sel & ~grouped
            err = age_pred[exact] - age[exact]
            nan = float("nan")
            row = {"band": label, "count": int(sel.sum()), "exact": int(exact.sum()),
                   "mae": float(np.abs(err).mean()) if err.size else nan,
                   "cs5": float((np.abs(err) <= 5).mean()) if err.size else nan,
                   "bias": float(err.mean()) if err.size else nan}
            if grouped.any():
                g = sel & grouped
                row["group_acc"] = float(in_interval(age_pred[g], age[g], age_hi[g]).mean()) if g.any() else nan
            if p_male is not None and gender is not None:
                row["acc"] = summarize(np.asarray(p_male)[sel], age_pred[sel], np.asarray(gender)[sel], age[sel])["acc"]
            rows.append(row)
    return rows


def expected_calibration_error(p_male: np.ndarray, gender: np.ndarray, bins: int = 10) -> float:
    """ECE of P(male): faces put in `bins` equal-width bins of P(male) ([0, 0.1), ..., [0.9, 1]), the
    gap between each bin's share of males and its mean P(male), weighted by the bin's share of faces.
    Unknown genders (< 0) are left out; NaN when none is known. 0 = a 0.6 means six in ten."""
    p, g = np.asarray(p_male, np.float64).ravel(), np.asarray(gender, np.float64).ravel()
    known = g >= 0
    p, g = p[known], g[known]
    if p.size == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            gap += sel.sum() * abs((g[sel] == 1).mean() - p[sel].mean())
    return float(gap / p.size)


def fit_temperature(logit: np.ndarray, gender: np.ndarray) -> float:
    """The temperature T that minimises the negative log-likelihood of sigmoid(logit / T) on known genders
    (temperature scaling of the gender logit: logit = male minus female logit). Searched over
    log T in [-3, 3] in steps of 0.001 (0.1 %); 1 when no gender is known."""
    z, g = np.asarray(logit, np.float64).ravel(), np.asarray(gender, np.float64).ravel()
    known = g >= 0
    z, y = z[known], (g[known] == 1).astype(np.float64)
    if z.size == 0:
        return 1.0
    best_t, best = 1.0, np.inf
    for lt in np.arange(-3.0, 3.0005, 0.001):
        s = z / np.exp(lt)
        nll = float(np.mean(np.logaddexp(0.0, s) - y * s))  # -log sigmoid(s) for males, -log(1-sigmoid) else
        if nll < best:
            best_t, best = float(np.exp(lt)), nll
    return best_t


TEACHER_WEIGHTS = np.round(np.arange(0.0, 1.0001, 0.05), 2)  # the grid the ensemble's weight is chosen on


def ensemble_accuracy(p_ours: np.ndarray, p_teacher: np.ndarray, gender: np.ndarray, weight: float) -> float:
    """Gender accuracy over known genders of (1 - weight) * ours + weight * teacher's P(male)."""
    g = np.asarray(gender).ravel()
    known = g >= 0
    if not known.any():
        return float("nan")
    p = ensemble_p_male(np.asarray(p_ours)[known], np.asarray(p_teacher)[known], weight)
    return float(((p >= 0.5) == (g[known] == 1)).mean())


def fit_teacher_weight(p_ours: np.ndarray, p_teacher: np.ndarray, gender: np.ndarray) -> float:
    """The teacher's weight in the gender ensemble: the one of TEACHER_WEIGHTS (0 to 1 by 0.05) with the best
    accuracy on known genders (the figure the ensemble is for; P(male) stays calibrated by T either way).
    Ties go to the weight nearest the plain mean, 0.5 (of two as near, the lower), which is also the answer
    when no gender is known."""
    scores = [(ensemble_accuracy(p_ours, p_teacher, gender, w), -round(abs(w - DEFAULT_TEACHER_WEIGHT), 6))
              for w in TEACHER_WEIGHTS]
    if np.isnan(scores[0][0]):
        return DEFAULT_TEACHER_WEIGHT
    return float(TEACHER_WEIGHTS[max(range(len(scores)), key=lambda i: scores[i])])


WIDENING_LEVELS = (0.5, 0.8, 0.9, 0.95)            # range levels the widening is fitted at
WIDENING_EDGES = (0, 10, 20, 30, 40, 50, 60)      # bands of the predicted age, each its own factor
MIN_BAND_FACES = 50  # a predicted-age band with fewer calibration faces takes the global factor
_FACTORS = np.round(np.arange(0.3, 6.0001, 0.01), 2)


def calibration_half(index: np.ndarray) -> np.ndarray:
    """True for the faces the age range is calibrated on (even record numbers of a split), False for the
    half it is reported on: the same records in tools/calibrate.py and eval.py."""
    return np.asarray(index, np.int64) % 2 == 0


def _least_factor(p: np.ndarray, age_pred: np.ndarray, age: np.ndarray, level: float, side: str) -> float:
    """The smallest factor (0.01 steps) on the `side` ("low" or "high") of these faces' ranges for which at
    most (1 - level) / 2 of their true ages fall beyond that side."""
    miss = (1 - level) / 2
    lo_i, hi_i = 0, len(_FACTORS) - 1
    while lo_i < hi_i:  # the misses shrink as the factor grows: bisect
        mid = (lo_i + hi_i) // 2
        f = [[_FACTORS[mid]]]
        low, high = age_range(p, level, Widening([level], [0], f if side == "low" else [[1.0]],
                                                 f if side == "high" else [[1.0]]), age_pred)
        beyond = (age < low) if side == "low" else (age > high)
        if beyond.mean() <= miss:
            hi_i = mid
        else:
            lo_i = mid + 1
    return float(_FACTORS[lo_i])


def fit_widening(p: np.ndarray, age_pred: np.ndarray, age: np.ndarray, levels=WIDENING_LEVELS,
                 edges=WIDENING_EDGES, min_faces: int = MIN_BAND_FACES):
    """The `Widening` (agegender.model.age) that makes the range cover: for each level, band of the
    predicted age and side of the range, the smallest factor on the raw range's distance from the median
    for which at most (1 - level) / 2 of the band's true ages fall beyond that side (a band of fewer than
    `min_faces` faces: the factor of all faces). `p`: P(age > k) per face (`age_probs`); `age_pred`: the
    decoded age shown with the range."""
    p, age_pred, age = np.asarray(p, np.float64), np.asarray(age_pred, np.float64), np.asarray(age, np.float64)
    edges = np.asarray(edges, np.float64)
    band = np.clip(np.searchsorted(edges, age_pred, side="right") - 1, 0, len(edges) - 1)
    tables = {}
    for side in ("low", "high"):
        tables[side] = []
        for level in levels:
            overall = _least_factor(p, age_pred, age, level, side)
            tables[side].append([_least_factor(p[band == b], age_pred[band == b], age[band == b], level, side)
                                 if (band == b).sum() >= min_faces else overall for b in range(len(edges))])
    return Widening(levels, edges, tables["low"], tables["high"])


WIDENING_CHOICES = (("global", (0,), 0), ("per band, >= 200 faces", WIDENING_EDGES, 200),
                    ("per band, >= 100 faces", WIDENING_EDGES, 100), ("per band, >= 50 faces", WIDENING_EDGES, 50))


def select_widening(p: np.ndarray, age_pred: np.ndarray, age: np.ndarray, index: np.ndarray,
                    levels=WIDENING_LEVELS) -> tuple[object, str, list[tuple[str, float]]]:
    """Fit the widening on these (calibration) faces with the layout -- one factor per side for all ages, or
    one per band of the predicted age -- that holds up best on faces it was not fitted on: two-fold
    cross-validation inside these faces (record number // 2 odd or even: the calibration half has even
    numbers), scored by |coverage - level| overall and its mean over the 10-year bands of the true age
    (those of >= 30 faces), averaged over the levels. Returns (the widening fitted on all of them, the
    layout's name, [(layout, score)])."""
    p, age_pred, age = np.asarray(p, np.float64), np.asarray(age_pred, np.float64), np.asarray(age, np.float64)
    fold = (np.asarray(index, np.int64) // 2) % 2 == 0
    scores = []
    for name, edges, min_faces in WIDENING_CHOICES:
        dev = []
        for train in (fold, ~fold):
            w = fit_widening(p[train], age_pred[train], age[train], levels, edges, min_faces)
            test = ~train
            for level in levels:
                low, high = age_range(p[test], level, w, age_pred[test])
                dev.append(abs(coverage(low, high, age[test]) - level))
                bands = [(age[test] >= lo) & (age[test] <= hi) for _, lo, hi in AGE_BANDS]
                dev.append(float(np.mean([abs(coverage(low[b], high[b], age[test][b]) - level)
                                          for b in bands if b.sum() >= 30] or [0.0])))
        scores.append((name, float(np.mean(dev))))
    best = min(range(len(scores)), key=lambda i: scores[i][1])
    _, edges, min_faces = WIDENING_CHOICES[best]
    return fit_widening(p, age_pred, age, levels, edges, min_faces), scores[best][0], scores


def range_report(low: np.ndarray, high: np.ndarray, age_pred: np.ndarray, age: np.ndarray) -> dict:
    """How an age range holds up against the true ages: coverage and mean width overall and per 10-year
    band of the true age (AGE_BANDS), and the MAE of the point age on the narrowest third of ranges against
    the widest third (a narrow range should mean a better guess)."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    age_pred, age = np.asarray(age_pred, np.float64), np.asarray(age, np.float64)
    width = high - low
    out: dict = {"count": int(age.size), "coverage": coverage(low, high, age),
                 "width": float(width.mean()) if age.size else float("nan"), "bands": []}
    for label, lo, hi in AGE_BANDS:
        sel = (age >= lo) & (age <= hi)
        if sel.any():
            out["bands"].append({"band": label, "count": int(sel.sum()),
                                 "coverage": coverage(low[sel], high[sel], age[sel]), "width": float(width[sel].mean())})
    if age.size >= 3:
        order = np.argsort(width, kind="stable")
        third = age.size // 3
        err = np.abs(age_pred - age)
        out["mae_narrowest_third"] = float(err[order[:third]].mean())
        out["mae_widest_third"] = float(err[order[-third:]].mean())
        out["mae_ratio"] = out["mae_widest_third"] / max(out["mae_narrowest_third"], 1e-9)
    return out


def group_range_report(low: np.ndarray, high: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict:
    """How an age range holds up against age groups (FairFace), where the true age is unknown inside its
    group lo..hi (whole years, inclusive): the share of faces whose range [low, high] overlaps the group
    (the true age may be inside the range) and the share whose range holds the whole group (it is inside,
    whatever the age; never for an open group such as "more than 70")."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    nan = float("nan")
    return {"count": int(lo.size),
            "overlap": float(((low <= hi) & (high >= lo)).mean()) if lo.size else nan,
            "inside": float(((low <= lo) & (hi <= high)).mean()) if lo.size else nan}


def format_group_range_report(rep: dict, level: float) -> str:
    """The range line for faces labelled by age group (eval.py)."""
    return (f"age range {level:.0%} on {rep['count']} faces labelled by group (coverage not measurable): overlaps "
            f"the group {rep['overlap']:.3f}, holds the whole group {rep['inside']:.3f}")


def format_range_report(rep: dict, level: float) -> str:
    """The range lines eval.py and tools/calibrate.py print."""
    lines = [f"age range {level:.0%}: coverage {rep['coverage']:.3f} on {rep['count']} faces, mean width "
             f"{rep['width']:.1f} years"]
    if "mae_ratio" in rep:
        lines.append(f"  MAE narrowest third of ranges {rep['mae_narrowest_third']:.2f}, widest third "
                     f"{rep['mae_widest_third']:.2f} ({rep['mae_ratio']:.2f}x)")
    lines += [f"  {b['band']:<8}{b['count']:>6} faces  coverage {b['coverage']:.3f}  width {b['width']:.1f}"
              for b in rep["bands"]]
    return "\n".join(lines)


class AgeGenderMetric:
    """Accumulates predictions batch by batch; `get()` gives `summarize` over everything so far."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._parts: list[tuple[np.ndarray, ...]] = []

    def update(self, p_male: np.ndarray, age_pred: np.ndarray, gender: np.ndarray, age: np.ndarray) -> None:
        self._parts.append(tuple(np.asarray(a, np.float64).ravel() for a in (p_male, age_pred, gender, age)))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Everything accumulated: (p_male, age_pred, gender, age)."""
        if not self._parts:
            return tuple(np.zeros(0) for _ in range(4))  # type: ignore[return-value]
        return tuple(np.concatenate(cols) for cols in zip(*self._parts))  # type: ignore[return-value]

    def get(self) -> dict:
        return summarize(*self.arrays())


__all__ = ["select_widening", "WIDENING_CHOICES", "fit_widening", "range_report", "format_range_report",
           "group_range_report", "format_group_range_report", "calibration_half", "WIDENING_LEVELS",
           "WIDENING_EDGES", "MIN_BAND_FACES", "summarize", "band_table", "in_interval", "expected_calibration_error", "fit_temperature",
           "TEACHER_WEIGHTS", "ensemble_accuracy", "fit_teacher_weight",
           "AgeGenderMetric", "AGE_BANDS", "CS_LEVELS"]
