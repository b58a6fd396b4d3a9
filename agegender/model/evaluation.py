"""eval.py's logic: predictions over a packed `.rec`, the report (overall, per age band, per source),
its JSON form and the plot."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np

from agegender.model.age import DEFAULT_AGE_LEVEL, DEFAULT_DECODE
from agegender.atomic import save_figure, write_atomic
from agegender.data.iterators import batch_faces, check_rec, eval_batches, record_iter
from agegender.data.distribution import load_labels
from agegender.data.recordio import read_attrs
from agegender.errors import UserError
from agegender.model.metrics import (CS_LEVELS, band_table, calibration_half, format_group_range_report,
                                     format_range_report, group_range_report, in_interval, range_report, summarize)
from agegender.model.engine import Engine
from agegender.model.ensemble import ensemble_of_aligned


@dataclass
class Predictions:
    """Per record of a `.rec`, in file order."""

    p_male: np.ndarray
    age_pred: np.ndarray
    gender: np.ndarray
    age: np.ndarray
    source: list[str]
    race: list[str] | None = None      # the source's race field per record ("" where it has none)
    age_lo: np.ndarray | None = None   # age groups (FairFace): the age lies in age_lo..age_hi; equal to
    age_hi: np.ndarray | None = None   # `age` for exact ages
    age_low: np.ndarray | None = None   # the age range (whole years), at the level asked for
    age_high: np.ndarray | None = None
    index: np.ndarray | None = None     # record number in its file: picks the range's reporting half

    def __post_init__(self):
        n = len(self.age)
        if self.race is None:
            self.race = [""] * n
        if self.age_lo is None:
            self.age_lo = np.asarray(self.age, np.float64)
        if self.age_hi is None:
            self.age_hi = np.asarray(self.age, np.float64)

    @property
    def grouped(self) -> np.ndarray:
        return np.asarray(self.age_hi) > np.asarray(self.age_lo)

    def select(self, sel: np.ndarray) -> "Predictions":
        """The records where `sel` (a boolean mask) holds."""
        idx = np.flatnonzero(sel)
        pick = lambda a: None if a is None else np.asarray(a)[idx]  # noqa: E731
        return Predictions(self.p_male[idx], self.age_pred[idx], self.gender[idx], self.age[idx],
                           [self.source[i] for i in idx], race=[self.race[i] for i in idx], age_lo=self.age_lo[idx],
                           age_hi=self.age_hi[idx], age_low=pick(self.age_low), age_high=pick(self.age_high),
                           index=pick(self.index))


def predict_rec(predictor: Engine, rec: str, batch_size: int = 256, age_decode: str = DEFAULT_DECODE,
                flip: bool | None = None, progress: bool = True, threads: int = 2,
                age_level: float = DEFAULT_AGE_LEVEL, teacher=None) -> Predictions:
    """Run the model over every record of `rec` in batches (ImageRecordIter decoding, file order); the age
    range at `age_level` with the model's stored widening; `flip` None: the model's own default. `teacher`
    (a `TeacherGender`): P(male) is the gender ensemble's, as infer.py gives it by default."""
    from tqdm import tqdm

    from agegender.model.age import age_probs, age_range, decode

    flip = predictor.resolve_flip(flip)
    total = check_rec(rec)
    labels = load_labels(rec)  # file order, with source names from meta.json
    it = record_iter(rec, batch_size, train=False, threads=threads)
    p_male, age_pred, seen_age, low, high = [], [], [], [], []
    with tqdm(total=total, unit="face", disable=None if progress else True, desc="eval",  # TTY only
              file=sys.stderr) as bar:
        for data, label in eval_batches(it, total):
            out = predictor.outputs(data if predictor.kind == "mxnet" else data.asnumpy(), flip=flip)
            out = out.asnumpy() if hasattr(out, "asnumpy") else out
            p, a = decode(out, age_decode, predictor.gender_temperature)  # as infer.py: the ensemble needs it
            if teacher is not None:
                p = ensemble_of_aligned(p, teacher, batch_faces(data), predictor.teacher_weight)
            lo, hi = age_range(age_probs(out), age_level, predictor.age_widening, a)
            p_male.append(p)
            age_pred.append(a)
            low.append(lo)
            high.append(hi)
            seen_age.append(label.asnumpy()[:, 1])
            bar.update(len(p))
    seen = np.concatenate(seen_age)
    if len(seen) != total or not np.allclose(seen, labels.age):  # the iterator must read file order
        raise UserError(f"{rec}: the records read back do not match its index ({len(seen)} of {total})")
    try:
        attrs = read_attrs(rec, np.asarray(labels.age, np.float64))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return Predictions(np.concatenate(p_male), np.concatenate(age_pred), np.asarray(labels.gender),
                       np.asarray(labels.age, np.float64), labels.source, race=attrs.race, age_lo=attrs.age_lo,
                       age_hi=attrs.age_hi, age_low=np.concatenate(low), age_high=np.concatenate(high),
                       index=np.arange(total))


def rec_name(rec: str) -> str:
    """A short name for a packed file in tables: its folder and stem (`utkface/val`)."""
    import os

    folder = os.path.basename(os.path.dirname(os.path.abspath(rec)))
    stem = os.path.splitext(os.path.basename(rec))[0]
    return f"{folder}/{stem}" if folder else stem


def concat_predictions(preds: list[Predictions]) -> Predictions:
    """Several files' predictions as one set (the overall line of a cross-dataset evaluation)."""
    cat = lambda k: None if any(getattr(p, k) is None for p in preds) else \
        np.concatenate([getattr(p, k) for p in preds])  # noqa: E731
    return Predictions(*(cat(k) for k in ("p_male", "age_pred", "gender", "age")), [s for p in preds for s in p.source],
                       race=[r for p in preds for r in p.race], age_lo=cat("age_lo"), age_hi=cat("age_hi"),
                       age_low=cat("age_low"), age_high=cat("age_high"), index=cat("index"))


def _metrics(pred: Predictions) -> dict:
    """`summarize` with grouped labels kept apart: gender over every face; MAE, CS@n and the mean signed
    error (`bias`, predicted minus true) over exact ages only; `group_acc` (the predicted age inside the
    labelled group) and `groups` over grouped ones."""
    grouped = pred.grouped
    exact = ~grouped
    out = summarize(pred.p_male, pred.age_pred, pred.gender, pred.age)
    if grouped.any():
        m = summarize(pred.p_male[exact], pred.age_pred[exact], pred.gender[exact], pred.age[exact])
        out.update({k: m[k] for k in ("mae", *(f"cs{n}" for n in CS_LEVELS))})
        out["group_acc"] = float(in_interval(pred.age_pred[grouped], pred.age_lo[grouped], pred.age_hi[grouped]).mean())
        out["groups"] = int(grouped.sum())
    out["bias"] = float((pred.age_pred[exact] - pred.age[exact]).mean()) if exact.any() else float("nan")
    return out


def _group_table(pred: Predictions) -> list[dict]:
    """Per labelled age group (grouped faces only): count, share read inside the group, median predicted age,
    gender accuracy."""
    rows = []
    g = pred.grouped
    for lo, hi in sorted({(float(a), float(b)) for a, b in zip(pred.age_lo[g], pred.age_hi[g])}):
        sel = g & (pred.age_lo == lo) & (pred.age_hi == hi)
        name = f"{lo:g}-{hi:g}" if hi < 100 else f"{lo:g}+"
        rows.append({"group": name, "count": int(sel.sum()),
                     "group_acc": float(in_interval(pred.age_pred[sel], lo, hi).mean()),
                     "median_age": float(np.median(pred.age_pred[sel])),
                     "acc": summarize(pred.p_male[sel], pred.age_pred[sel], pred.gender[sel], pred.age[sel])["acc"]})
    return rows


def report(pred: Predictions) -> dict:
    """Everything eval.py prints: overall metrics, per age band (with the mean signed error), per age group
    and per race where the data has them, per source (when several)."""
    out = _metrics(pred)
    # a group falls in the band of its lower end
    out["bands"] = band_table(pred.age_pred, np.where(pred.grouped, pred.age_lo, pred.age), pred.p_male,
                              pred.gender, age_hi=pred.age_hi)
    if pred.grouped.any():
        out["groups_table"] = _group_table(pred)
    races = sorted({r for r in pred.race if r})
    if races:
        race = np.asarray(pred.race)
        out["races"] = [{"race": r, **_metrics(pred.select(race == r))} for r in races]
    names = sorted(set(pred.source))
    if len(names) > 1:
        src = np.asarray(pred.source)
        out["sources"] = [{"source": name, **_metrics(pred.select(src == name))} for name in names]
    known = pred.gender >= 0
    male = pred.p_male >= 0.5
    out["gender_confusion"] = {"true_female": {"female": int((~male & (pred.gender == 0)).sum()),
                                               "male": int((male & (pred.gender == 0)).sum())},
                               "true_male": {"female": int((~male & (pred.gender == 1)).sum()),
                                             "male": int((male & (pred.gender == 1)).sum())}}
    out["gender_unknown"] = int((~known).sum())
    if pred.age_low is not None:  # on the half of the records the range was not calibrated on
        half = ~calibration_half(pred.index)
        exact, grouped = half & ~pred.grouped, half & pred.grouped
        if exact.any():  # coverage needs the true age
            out["age_range"] = range_report(pred.age_low[exact], pred.age_high[exact], pred.age_pred[exact],
                                            pred.age[exact])
        if grouped.any():  # a group only says whether the range meets it or holds all of it
            out["age_range_groups"] = group_range_report(pred.age_low[grouped], pred.age_high[grouped],
                                                         pred.age_lo[grouped], pred.age_hi[grouped])
    return out


def _f(x: float, digits: int = 4) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def format_report(rep: dict, age_level: float = DEFAULT_AGE_LEVEL) -> str:
    """The text eval.py prints."""
    lines = [f"gender accuracy: {_f(rep['acc'])}", f"age MAE: {_f(rep['mae'], 2)}"]
    lines += [f"age CS@{n}: {_f(rep[f'cs{n}'])}" for n in CS_LEVELS]
    lines.append(f"age bias: {_f(rep['bias'], 2)} (mean predicted minus true age)")
    if "group_acc" in rep:
        lines.append(f"age group accuracy: {_f(rep['group_acc'])} ({rep['groups']} faces labelled by group)")
    lines.append(f"records: {rep['count']} ({rep['gender_count']} with known gender)")
    grouped = "group_acc" in rep["bands"][0] if rep["bands"] else False
    lines += ["", f"{'age band':<10}{'count':>8}{'MAE':>8}{'CS@5':>8}{'bias':>8}{'acc':>8}" + ("   group" if grouped else "")]
    lines += [f"{b['band']:<10}{b['count']:>8}{_f(b['mae'], 2):>8}{_f(b['cs5']):>8}{_f(b['bias'], 2):>8}{_f(b['acc']):>8}"
              + (f"{_f(b['group_acc']):>8}" if grouped else "") for b in rep["bands"]]
    if rep.get("groups_table"):
        lines += ["", f"{'age group':<10}{'count':>8}{'inside':>8}{'median':>8}{'acc':>8}"]
        lines += [f"{g['group']:<10}{g['count']:>8}{_f(g['group_acc']):>8}{g['median_age']:>8.1f}{_f(g['acc']):>8}"
                  for g in rep["groups_table"]]
    for key, title in (("races", "race"), ("sources", "source")):
        if rep.get(key):
            lines += ["", f"{title:<16}{'count':>8}{'acc':>8}{'MAE':>8}{'CS@5':>8}{'bias':>8}{'group':>8}"]
            lines += [f"{s[title]:<16}{s['count']:>8}{_f(s['acc']):>8}{_f(s['mae'], 2):>8}{_f(s['cs5']):>8}"
                      f"{_f(s['bias'], 2):>8}{_f(s.get('group_acc', float('nan'))):>8}" for s in rep[key]]
    if rep.get("age_range") or rep.get("age_range_groups"):
        lines += ["", "on the odd records (the half tools/calibrate.py does not calibrate the range on):"]
        if rep.get("age_range"):
            lines.append(format_range_report(rep["age_range"], age_level))
        if rep.get("age_range_groups"):
            lines.append(format_group_range_report(rep["age_range_groups"], age_level))
    return "\n".join(lines)


def format_sources(per: list[dict], overall: dict) -> str:
    """The cross-dataset summary: one line per evaluated file, then the overall line (all faces pooled)."""
    head = (f"{'evaluated on':<24}{'faces':>8}{'gender':>8}{'MAE':>8}{'CS@3':>8}{'CS@5':>8}{'gender 0-9':>12}"
            f"{'bias 10-29':>12}{'age group':>11}")

    def line(name: str, r: dict) -> str:
        kids = next((b for b in r["bands"] if b["band"] == "0-9"), None)
        # each band's bias is over its exact ages only: weighted by those, not by its grouped faces too
        young = [b for b in r["bands"] if b["band"] in ("10-19", "20-29") and b["exact"]]
        bias = sum(b["bias"] * b["exact"] for b in young) / sum(b["exact"] for b in young) if young else float("nan")
        return (f"{name:<24}{r['count']:>8}{_f(r['acc']):>8}{_f(r['mae'], 2):>8}{_f(r['cs3']):>8}{_f(r['cs5']):>8}"
                f"{_f(kids['acc']) if kids else 'n/a':>12}{_f(bias, 2):>12}{_f(r.get('group_acc', float('nan'))):>11}")

    return "\n".join([head] + [line(r["name"], r) for r in per] + [line("overall", overall)])


def _no_nan(x):
    if isinstance(x, float) and x != x:
        return None  # undefined (e.g. accuracy with no known gender): JSON null
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_no_nan(v) for v in x]
    return x


def write_json(path: str, rep: dict, extra: dict) -> None:
    """The report plus `extra` (model, file, settings) as strict JSON (undefined values are null)."""
    write_atomic(path, json.dumps(_no_nan({**extra, **rep}), indent=2) + "\n")


def plot_predictions(pred: Predictions, path: str, title: str = "") -> None:
    """One PNG: MAE and mean signed error by true age (exact ages; for a set of age groups only, the share
    read inside each group and its median predicted age), predicted vs true age, gender confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.4))
    exact = ~pred.grouped
    if exact.any():
        ages = np.clip(np.round(pred.age[exact]).astype(int), 0, 100)
        signed = pred.age_pred[exact] - pred.age[exact]
        err = np.abs(signed)
        present = np.unique(ages)
        a1.bar(present, [err[ages == a].mean() for a in present], width=0.9, color="#4c72b0", label="MAE")
        a1.plot(present, [signed[ages == a].mean() for a in present], color="#c44e52", lw=1.2,
                label="mean signed error (+ = read older)")
        a1.axhline(0, color="black", lw=0.6)
        a1.legend(loc="upper left", fontsize=8)
        a1.set(title=f"error by true age (MAE {err.mean():.2f}, bias {signed.mean():+.2f})", xlabel="true age",
               ylabel="years")
        a1b = a1.twinx()
        a1b.plot(present, [(ages == a).sum() for a in present], color="#999999", lw=1)
        a1b.set_ylabel("faces", color="#999999")
    else:
        rows = _group_table(pred)
        x = np.arange(len(rows))
        a1.bar(x, [r["group_acc"] for r in rows], color="#4c72b0")
        for i, r in enumerate(rows):
            a1.text(i, r["group_acc"] + 0.02, f"{r['median_age']:.0f}", ha="center", fontsize=8)
        a1.set(xticks=x, xticklabels=[r["group"] for r in rows], ylim=(0, 1.1), xlabel="labelled age group",
               ylabel="read inside the group", title="age group accuracy (numbers: median predicted age)")
    a2.scatter(pred.age, pred.age_pred, s=4, alpha=0.35, color="#4c72b0")
    hi = max(100.0, float(pred.age.max(initial=0)))
    a2.plot([0, hi], [0, hi], "k--", lw=1)
    a2.set(title="predicted vs true age", xlabel="true age" + (" (a group at its midpoint)" if pred.grouped.any() else ""), ylabel="predicted age", xlim=(0, hi), ylim=(0, hi))
    known = pred.gender >= 0
    cm = np.zeros((2, 2), int)
    for t in (0, 1):
        for p in (0, 1):
            cm[t, p] = int(((pred.gender == t) & ((pred.p_male >= 0.5) == bool(p)) & known).sum())
    a3.imshow(cm, cmap="Blues")
    for t in (0, 1):
        for p in (0, 1):
            share = cm[t, p] / max(1, cm[t].sum())
            a3.text(p, t, f"{cm[t, p]}\n{share:.1%}", ha="center", va="center",
                    color="white" if cm[t, p] > cm.max() / 2 else "black")
    a3.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["female", "male"], yticklabels=["female", "male"],
           xlabel="predicted", ylabel="true", title="gender confusion")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


__all__ = ["Predictions", "predict_rec", "rec_name", "concat_predictions", "report", "format_report", "format_sources", "write_json", "plot_predictions"]
