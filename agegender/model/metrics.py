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


def band_table(age_pred: np.ndarray, age: np.ndarray, p_male: np.ndarray | None = None,
               gender: np.ndarray | None = None) -> list[dict]:
    """Per true-age band: band label, count, MAE, CS@5 and, given genders, gender accuracy (over known
    genders; NaN when none). Bands without records are left out."""
    age_pred, age = np.asarray(age_pred, np.float64), np.asarray(age, np.float64)
    rows = []
    for label, lo, hi in AGE_BANDS:
        sel = (age >= lo) & (age <= hi)
        if sel.any():
            err = np.abs(age_pred[sel] - age[sel])
            row = {"band": label, "count": int(sel.sum()), "mae": float(err.mean()), "cs5": float((err <= 5).mean())}
            if p_male is not None and gender is not None:
                row["acc"] = summarize(np.asarray(p_male)[sel], age_pred[sel], np.asarray(gender)[sel], age[sel])["acc"]
            rows.append(row)
    return rows


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


__all__ = ["summarize", "band_table", "AgeGenderMetric", "AGE_BANDS", "CS_LEVELS"]
