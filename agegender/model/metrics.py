"""Gender accuracy, age MAE and CS@n (MegaAge's CA(n), the ancestor's CUM_n): one home for training,
evaluation and the model card.

Gender accuracy counts only records whose gender is known (0 or 1); the age metrics count every record.
"""
from __future__ import annotations

import numpy as np

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
    """Per true-age band: band label, count, MAE, CS@5, the mean signed error `bias` (predicted minus true:
    positive = read older) and, given genders, gender accuracy (over known genders; NaN when none). Bands
    without records are left out. With `age_hi` (grouped labels: `age` is then each group's lo), a group
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
            row = {"band": label, "count": int(sel.sum()),
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


__all__ = ["summarize", "band_table", "in_interval", "expected_calibration_error", "fit_temperature",
           "AgeGenderMetric", "AGE_BANDS", "CS_LEVELS"]
