"""The output layout, the loss and the age/gender decoding: one home, shared by train, eval and infer.

Output (N,202): `[0:2]` gender logits (index 1 = male); pair k = `[2+2k : 4+2k]` logits of
"age > k" (index 1 = yes), k = 0..99.
"""
from __future__ import annotations

import numpy as np

NUM_AGE_BINS = 100
MAX_AGE = 100  # target ages are clamped to 0..MAX_AGE
OPEN_PRIOR_TOP = 89  # `interval_targets(prior=)`: an open group ("more than 70") spread up to this age (mean 80)
AGE_DECODINGS = ("prob", "vote", "median")
DEFAULT_DECODE = "vote"  # the decoding eval.py, infer.py and the service use unless told otherwise
DEFAULT_FLIP = True      # whether they average each face's outputs with its mirror image's
DEFAULT_AGE_LEVEL = 0.8  # the age range's level: the true age falls inside it for this share of faces
WIDENING_KEY = "age_range_widening"  # ONNX metadata / calibration JSON key of the range's calibration


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
    return quantile_age(p, 0.5)


def quantile_age(p: np.ndarray, q) -> np.ndarray:
    """The age a with P(age <= a) = q, per row of non-increasing P(age > k) (N,100): where the row crosses
    1 - q, interpolated as `_median` does (q = 1/2 is the median). An array of G quantiles gives (G, N)."""
    t = 1.0 - np.asarray(q, np.float64)[..., None]
    m = (p > t[..., None]).sum(axis=-1)
    rows = np.arange(len(p))
    above = np.where(m > 0, p[rows, np.maximum(m - 1, 0)], 1.0)
    below = np.where(m < p.shape[1], p[rows, np.minimum(m, p.shape[1] - 1)], 0.0)
    frac = np.clip((above - t) / np.maximum(above - below, 1e-12), 0.0, 1.0)
    return m - 0.5 + frac


def age_probs(output: np.ndarray) -> np.ndarray:
    """P(age > k), k = 0..99, per row of (N,202) outputs, made non-increasing: the age distribution the
    range is read from (a track's is the mean of its frames' rows)."""
    output = np.asarray(output, dtype=np.float64)
    pairs = output[:, 2:2 + 2 * NUM_AGE_BINS].reshape(-1, NUM_AGE_BINS, 2)
    return np.minimum.accumulate(_softmax(pairs)[:, :, 1], axis=1)


def check_level(level: float) -> float:
    """An age range level, refused (ValueError) outside (0, 1)."""
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"age range level must be between 0 and 1 (e.g. 0.8), got {level:g}")
    return level


class Widening:
    """How the raw range is widened (or narrowed) so that it covers (tools/calibrate.py): per range level
    (`levels`) and band of the *predicted* age (`edges`: each band's lowest age, the first 0), a factor on
    the raw range's distance from the median below it (`low`) and above it (`high`), each fitted so that the
    true age falls below the range (above it) for half of the 1 - level that may miss: a model that reads
    a band too old gets a longer low side. A level between two stored levels takes the interpolated
    factors, one outside them the nearest level's; no widening is factor 1 everywhere."""

    def __init__(self, levels=(DEFAULT_AGE_LEVEL,), edges=(0.0,), low=((1.0,),), high=None):
        self.levels = np.asarray(levels, np.float64).reshape(-1)
        self.edges = np.asarray(edges, np.float64).reshape(-1)
        shape = (len(self.levels), len(self.edges))
        self.low = np.asarray(low, np.float64)
        self.high = np.asarray(low if high is None else high, np.float64)
        if (len(self.levels) == 0 or len(self.edges) == 0 or self.low.shape != shape or self.high.shape != shape
                or np.any(np.diff(self.levels) <= 0) or np.any(np.diff(self.edges) <= 0) or self.edges[0] != 0
                or not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high)))
                or np.any(self.low <= 0) or np.any(self.high <= 0) or np.any((self.levels <= 0) | (self.levels >= 1))):
            raise ValueError("age range widening: levels in (0,1) and band edges from 0 must increase, and low "
                             "and high must hold a positive factor per level and band")

    @property
    def is_identity(self) -> bool:
        return bool(np.all(self.low == 1.0) and np.all(self.high == 1.0))

    def factors(self, level, age: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (low side, high side) factors per face of predicted `age` at `level`; for an array of G levels,
        (G, faces) each."""
        band = np.clip(np.searchsorted(self.edges, np.asarray(age, np.float64), side="right") - 1, 0,
                       len(self.edges) - 1)
        def at(table: np.ndarray) -> np.ndarray:  # (levels..., bands)
            return np.stack([np.interp(level, self.levels, table[:, b]) for b in range(len(self.edges))], axis=-1)

        return at(self.low)[..., band], at(self.high)[..., band]

    def to_dict(self) -> dict:
        rows = lambda table: [[round(float(v), 4) for v in row] for row in table]  # noqa: E731
        return {"levels": [round(float(v), 4) for v in self.levels], "edges": [float(v) for v in self.edges],
                "low": rows(self.low), "high": rows(self.high)}

    @classmethod
    def from_dict(cls, doc) -> "Widening":
        """From `to_dict`'s form (or its JSON text); ValueError when it is not one."""
        import json

        if isinstance(doc, str):
            doc = json.loads(doc)
        if not isinstance(doc, dict) or not {"levels", "edges", "low", "high"} <= set(doc):
            raise ValueError("age range widening must be an object with levels, edges, low and high")
        try:
            return cls(doc["levels"], doc["edges"], doc["low"], doc["high"])
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc) or "age range widening: malformed numbers") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, Widening) and self.to_dict() == other.to_dict()


NO_WIDENING = Widening()


def age_range(p: np.ndarray, level: float = DEFAULT_AGE_LEVEL, widening: Widening | None = None,
              age: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) whole years per row of non-increasing P(age > k) (`age_probs`): the central `level`
    interval of the model's distribution, its distance from the median times the calibrated `widening`
    factor of the predicted age's band, stretched to hold the point `age` (the decoded age shown beside
    it); its ends become the whole years whose spans (a - 1/2, a + 1/2) hold them, within 0..MAX_AGE.
    The true age is meant to lie in [low, high] for `level` of faces."""
    level = check_level(level)
    widening = widening or NO_WIDENING
    p = np.asarray(p, np.float64).reshape(-1, NUM_AGE_BINS)
    med = quantile_age(p, 0.5)
    point = med if age is None else np.asarray(age, np.float64)

    # each level's factors are fitted on their own, so a lower level's range may reach past a higher one's;
    # the range holds every lower level's on a 0.01 grid from the lowest fitted level, so that of two levels
    # on that grid (0.5, 0.8, 0.95, ...) the higher never gives a narrower range. With one fitted level (or
    # none) the factors do not change with the level, and the raw ranges nest already.
    levels = np.array([level])
    if len(widening.levels) > 1:
        levels = np.append(np.arange(np.ceil(widening.levels.min() * 100) / 100, level - 1e-9, 0.01), level)
    s_low, s_high = widening.factors(levels, point)  # (G, N)
    lo = (med - s_low * (med - quantile_age(p, (1 - levels) / 2))).min(axis=0)
    hi = (med + s_high * (quantile_age(p, (1 + levels) / 2) - med)).max(axis=0)
    low = np.floor(lo + 0.5)  # the whole years whose spans hold the ends
    high = np.ceil(hi - 0.5)
    if age is not None:  # the age as shown (rounded as Python rounds it for the text) is inside
        low, high = np.minimum(low, np.round(point)), np.maximum(high, np.round(point))
    return np.clip(low, 0, MAX_AGE), np.clip(high, 0, MAX_AGE)


def coverage(low: np.ndarray, high: np.ndarray, age: np.ndarray) -> float:
    """The share of faces whose true (whole-year) `age` lies in [low, high]; NaN for none."""
    age = np.asarray(age, np.float64)
    if age.size == 0:
        return float("nan")
    return float(((np.asarray(low) <= age) & (age <= np.asarray(high))).mean())


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


def interval_targets(F, lo, hi, num_bins: int = NUM_AGE_BINS, prior: float = 0.0):
    """(N,) age intervals lo..hi (whole years, inclusive) -> ((N, num_bins) targets, (N, num_bins) mask) of
    "age > k": 1 for k < lo, 0 for k >= hi, and masked out (mask 0) for lo <= k < hi, where the label does not
    say. An exact age is lo = hi: nothing masked, the same targets as `age_targets`.

    `prior` > 0 (`train.py --interval-prior`): the pairs inside the interval are taught, with weight `prior`,
    what an age spread evenly over it gives, P(age > k) = (hi - k) / (hi + 1 - lo), so that a source of
    groups only still learns ages inside them instead of leaving them to land on a group's edge; an open
    group ("more than 70", hi = MAX_AGE) is taken to end at OPEN_PRIOR_TOP for it."""
    k = F.arange(num_bins).reshape((1, num_bins))
    lo = F.clip(lo, 0, MAX_AGE).reshape((-1, 1))
    hi = F.clip(hi, 0, MAX_AGE).reshape((-1, 1))
    unknown = F.broadcast_lesser_equal(lo, k) * F.broadcast_greater(hi, k)
    hard = F.broadcast_greater(lo, k)
    if prior <= 0:
        return hard, 1 - unknown
    top = F.where(hi >= MAX_AGE, F.ones_like(hi) * OPEN_PRIOR_TOP, hi)
    ramp = F.clip(F.broadcast_div(F.broadcast_sub(top, k), top + 1 - lo), 0, 1)
    return hard + unknown * ramp, 1 - unknown + unknown * prior


def age_gender_loss(F, output, label, gender_weight: float = 1.0, age_sigma: float = 0.0,
                    gender_smooth: float = 0.0, sample_weight=None, gender_sample_weight=None,
                    intervals: bool = False, interval_prior: float = 0.0):
    """Softmax cross-entropy of gender over [0:2] (unknown gender, -1, ignored) plus the sum over the
    100 pairs of the cross-entropy of "age > k", as InsightFace's 1 + 100 SoftmaxOutputs (a mean over
    the pairs would leave age a hundredth of the gradient), the gender term times `gender_weight`.
    `label` is (N,2) = [gender, age] as packed (gender may be a soft P(male), see `agegender.model.teacher`),
    or with `intervals` (N,3) = [gender, age_lo, age_hi]: an age group teaches only the pairs it decides
    (`interval_targets`, with `interval_prior` inside the group), exact ages (lo = hi) all of them, softened
    by `age_sigma` as before.
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
        hard, mask = interval_targets(F, age, hi, prior=interval_prior)
        grouped = (hi > age).reshape((-1, 1))
        t = F.broadcast_mul(grouped, hard) + F.broadcast_mul(1 - grouped, t)
    a_nll = -(t * F.slice_axis(a_logp, axis=2, begin=1, end=2).reshape((0, NUM_AGE_BINS))
              + (1 - t) * F.slice_axis(a_logp, axis=2, begin=0, end=1).reshape((0, NUM_AGE_BINS)))
    a_loss = (a_nll if mask is None else a_nll * mask).sum(axis=1)
    if sample_weight is not None:
        a_loss = a_loss * sample_weight
    return gender_weight * g_loss + a_loss



def add_age_decode_argument(parser) -> None:
    """`--age-decode`, one of AGE_DECODINGS (default DEFAULT_DECODE): the one definition eval.py, infer.py
    and serve.py share."""
    parser.add_argument("--age-decode", choices=AGE_DECODINGS, default=DEFAULT_DECODE,
                        help="prob: sum of P(age > k); vote: sum of the pairs' argmax; median: where P(age > k) "
                             "crosses 1/2")

__all__ = ["add_age_decode_argument", "decode", "age_probs", "age_range", "quantile_age", "coverage", "check_level", "Widening",
           "NO_WIDENING", "DEFAULT_AGE_LEVEL", "WIDENING_KEY", "AGE_DECODINGS", "DEFAULT_DECODE", "DEFAULT_FLIP", "age_targets",
           "interval_targets", "age_gender_loss", "NUM_AGE_BINS", "MAX_AGE"]
