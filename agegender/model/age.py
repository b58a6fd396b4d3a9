"""The output layout, the loss and the age/gender decoding: one home, shared by train, eval and infer.

Output (N,202): `[0:2]` gender logits (index 1 = male); pair k = `[2+2k : 4+2k]` logits of
"age > k" (index 1 = yes), k = 0..99.
"""
from __future__ import annotations

import numpy as np

NUM_AGE_BINS = 100
MAX_AGE = 100  # target ages are clamped to 0..MAX_AGE
AGE_DECODINGS = ("prob", "vote", "median")
DEFAULT_DECODE = "vote"  # the decoding eval.py, infer.py and the service use unless told otherwise
DEFAULT_FLIP = True      # whether they average each face's outputs with its mirror image's


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def decode(output: np.ndarray, age_decode: str = DEFAULT_DECODE,
           gender_temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(P(male), age) per row of a (N,202) output; the gender logits are divided by `gender_temperature`
    first (temperature scaling, tools/calibrate.py: above 1 softens an over-confident P(male); the
    decision at 1/2 is unchanged).

    `prob`: age = sum_k P(age > k); `vote`: age = sum_k argmax of pair k (InsightFace's own decoding of
    its released model); `median`: where P(age > k), made non-increasing, crosses 1/2, interpolated
    between the two pairs around it (as robust to the tail as `vote`, and continuous).
    """
    output = np.asarray(output, dtype=np.float64)
    if output.ndim != 2 or output.shape[1] != 2 + 2 * NUM_AGE_BINS:
        raise ValueError(f"expected (N, {2 + 2 * NUM_AGE_BINS}) outputs, got {output.shape}")
    if not (gender_temperature > 0 and np.isfinite(gender_temperature)):
        raise ValueError(f"gender temperature must be a positive number, got {gender_temperature!r}")
    p_male = _softmax(output[:, :2] / gender_temperature)[:, 1]
    pairs = output[:, 2:].reshape(-1, NUM_AGE_BINS, 2)
    if age_decode == "prob":
        age = _softmax(pairs)[:, :, 1].sum(axis=1)
    elif age_decode == "vote":
        age = pairs.argmax(axis=2).sum(axis=1).astype(np.float64)
    elif age_decode == "median":
        age = _median(np.minimum.accumulate(_softmax(pairs)[:, :, 1], axis=1))
    else:
        raise ValueError(f"age decoding must be one of {', '.join(AGE_DECODINGS)}, got {age_decode!r}")
    return p_male, age


def _median(p: np.ndarray) -> np.ndarray:
    """Ages where the non-increasing rows of P(age > k) cross 1/2: m pairs above 1/2 put the age in
    [m - 1/2, m + 1/2], placed by linear interpolation between P(age > m-1) and P(age > m)."""
    m = (p > 0.5).sum(axis=1)
    rows = np.arange(len(p))
    above = np.where(m > 0, p[rows, np.maximum(m - 1, 0)], 1.0)
    below = np.where(m < p.shape[1], p[rows, np.minimum(m, p.shape[1] - 1)], 0.0)
    frac = np.clip((above - 0.5) / np.maximum(above - below, 1e-12), 0.0, 1.0)
    return m - 0.5 + frac


def age_targets(F, age, num_bins: int = NUM_AGE_BINS, sigma: float = 0.0):
    """(N,) ages -> (N, num_bins) targets of "age > k", built with array ops (nd or sym).

    `sigma` 0: hard 0/1 steps. `sigma` > 0: P(true age > k) when the labelled age is noisy by a logistic
    distribution of that standard deviation (years) -- a soft step, since UTKFace's ages are noisy."""
    k = F.arange(num_bins).reshape((1, num_bins))
    a = F.clip(age, 0, MAX_AGE).reshape((-1, 1))
    if sigma <= 0:
        return F.broadcast_greater(a, k)
    scale = sigma * np.sqrt(3.0) / np.pi  # logistic scale with that standard deviation
    return F.sigmoid(F.broadcast_sub(a, k + 0.5) / scale)


def interval_targets(F, lo, hi, num_bins: int = NUM_AGE_BINS):
    """(N,) age intervals lo..hi (whole years, inclusive) -> ((N, num_bins) targets, (N, num_bins) mask) of
    "age > k": 1 for k < lo, 0 for k >= hi, and masked out (mask 0) for lo <= k < hi, where the label does not
    say. An exact age is lo = hi: nothing masked, the same targets as `age_targets`."""
    k = F.arange(num_bins).reshape((1, num_bins))
    lo = F.clip(lo, 0, MAX_AGE).reshape((-1, 1))
    hi = F.clip(hi, 0, MAX_AGE).reshape((-1, 1))
    unknown = F.broadcast_lesser_equal(lo, k) * F.broadcast_greater(hi, k)
    return F.broadcast_greater(lo, k), 1 - unknown


def age_gender_loss(F, output, label, gender_weight: float = 1.0, age_sigma: float = 0.0,
                    gender_smooth: float = 0.0, sample_weight=None, gender_sample_weight=None,
                    intervals: bool = False):
    """Softmax cross-entropy of gender over [0:2] (unknown gender, -1, ignored) plus the sum over the
    100 pairs of the cross-entropy of "age > k", as InsightFace's 1 + 100 SoftmaxOutputs (a mean over
    the pairs would leave age a hundredth of the gradient), the gender term times `gender_weight`.
    `label` is (N,2) = [gender, age] as packed (gender may be a soft P(male), see `agegender.model.teacher`),
    or with `intervals` (N,3) = [gender, age_lo, age_hi]: an age group teaches only the pairs it decides
    (`interval_targets`), exact ages (lo = hi) all of them, softened by `age_sigma` as before.
    `age_sigma`: soft age targets (see `age_targets`); `gender_smooth`: label smoothing of gender;
    `sample_weight` (N,): a weight per face on the age term; `gender_sample_weight` (N,): on the gender term.
    Returns (N,) losses."""
    gender = F.slice_axis(label, axis=1, begin=0, end=1).reshape((-1,))
    age = F.slice_axis(label, axis=1, begin=1, end=2).reshape((-1,))
    g_logp = F.log_softmax(F.slice_axis(output, axis=1, begin=0, end=2), axis=-1)
    known = gender >= 0
    # a gender label is P(male): 1 or 0 as packed, or in between for a teacher's soft label
    g = F.maximum(gender, 0)
    g_nll = -(g * F.slice_axis(g_logp, axis=1, begin=1, end=2).reshape((-1,))
              + (1 - g) * F.slice_axis(g_logp, axis=1, begin=0, end=1).reshape((-1,)))
    if gender_smooth > 0:
        g_nll = (1 - gender_smooth) * g_nll - gender_smooth * g_logp.mean(axis=-1)
    g_loss = g_nll * known
    if gender_sample_weight is not None:
        g_loss = g_loss * gender_sample_weight
    pairs = F.slice_axis(output, axis=1, begin=2, end=2 + 2 * NUM_AGE_BINS).reshape((0, NUM_AGE_BINS, 2))
    a_logp = F.log_softmax(pairs, axis=-1)
    t = age_targets(F, age, sigma=age_sigma)
    mask = None
    if intervals:
        hi = F.slice_axis(label, axis=1, begin=2, end=3).reshape((-1,))
        hard, mask = interval_targets(F, age, hi)
        grouped = (hi > age).reshape((-1, 1))
        t = F.broadcast_mul(grouped, hard) + F.broadcast_mul(1 - grouped, t)
    a_nll = -(t * F.slice_axis(a_logp, axis=2, begin=1, end=2).reshape((0, NUM_AGE_BINS))
              + (1 - t) * F.slice_axis(a_logp, axis=2, begin=0, end=1).reshape((0, NUM_AGE_BINS)))
    a_loss = (a_nll if mask is None else a_nll * mask).sum(axis=1)
    if sample_weight is not None:
        a_loss = a_loss * sample_weight
    return gender_weight * g_loss + a_loss


__all__ = ["decode", "AGE_DECODINGS", "DEFAULT_DECODE", "DEFAULT_FLIP", "age_targets", "interval_targets", "age_gender_loss", "NUM_AGE_BINS", "MAX_AGE"]
