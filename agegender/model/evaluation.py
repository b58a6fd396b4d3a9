"""eval.py's logic: predictions over a packed `.rec`, the report (overall, per age band, per source),
its JSON form and the plot."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np

from agegender.model.age import DEFAULT_AGE_LEVEL, DEFAULT_DECODE, DEFAULT_FLIP
from agegender.atomic import save_figure, write_atomic
from agegender.data.iterators import check_rec, eval_batches, record_iter
from agegender.data.distribution import load_labels
from agegender.errors import UserError
from agegender.model.metrics import (CS_LEVELS, band_table, calibration_half, format_range_report, range_report,
                                     summarize)
from agegender.model.engine import Engine


@dataclass
class Predictions:
    """Per record of a `.rec`, in file order."""

    p_male: np.ndarray
    age_pred: np.ndarray
    gender: np.ndarray
    age: np.ndarray
    source: list[str]
    age_low: np.ndarray | None = None   # the age range (whole years), at the level asked for
    age_high: np.ndarray | None = None
    index: np.ndarray | None = None     # record number in its file: picks the range's reporting half


def predict_rec(predictor: Engine, rec: str, batch_size: int = 256, age_decode: str = DEFAULT_DECODE,
                flip: bool = DEFAULT_FLIP, progress: bool = True, threads: int = 2,
                age_level: float = DEFAULT_AGE_LEVEL) -> Predictions:
    """Run the model over every record of `rec` in batches (ImageRecordIter decoding, file order); the age
    range at `age_level` with the model's stored widening."""
    from tqdm import tqdm

    from agegender.model.age import age_probs, age_range, decode

    total = check_rec(rec)
    labels = load_labels(rec)  # file order, with source names from meta.json
    it = record_iter(rec, batch_size, train=False, threads=threads)
    p_male, age_pred, seen_age, low, high = [], [], [], [], []
    with tqdm(total=total, unit="face", disable=None if progress else True, desc="eval",  # TTY only
              file=sys.stderr) as bar:
        for data, label in eval_batches(it, total):
            out = predictor.outputs(data if predictor.kind == "mxnet" else data.asnumpy(), flip=flip)
            out = out.asnumpy() if hasattr(out, "asnumpy") else out
            p, a = decode(out, age_decode)
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
    return Predictions(np.concatenate(p_male), np.concatenate(age_pred), labels.gender, labels.age, labels.source,
                       np.concatenate(low), np.concatenate(high), np.arange(total))


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
                       cat("age_low"), cat("age_high"), cat("index"))


def report(pred: Predictions) -> dict:
    """Everything eval.py prints: overall metrics, per age band, per source (when several)."""
    out = summarize(pred.p_male, pred.age_pred, pred.gender, pred.age)
    out["bands"] = band_table(pred.age_pred, pred.age, pred.p_male, pred.gender)
    names = sorted(set(pred.source))
    if len(names) > 1:
        src = np.asarray(pred.source)
        out["sources"] = []
        for name in names:
            sel = src == name
            m = summarize(pred.p_male[sel], pred.age_pred[sel], pred.gender[sel], pred.age[sel])
            out["sources"].append({"source": name, **m})
    known = pred.gender >= 0
    male = pred.p_male >= 0.5
    out["gender_confusion"] = {"true_female": {"female": int((~male & (pred.gender == 0)).sum()),
                                               "male": int((male & (pred.gender == 0)).sum())},
                               "true_male": {"female": int((~male & (pred.gender == 1)).sum()),
                                             "male": int((male & (pred.gender == 1)).sum())}}
    out["gender_unknown"] = int((~known).sum())
    if pred.age_low is not None:  # on the half of the records the range was not calibrated on
        half = ~calibration_half(pred.index)
        out["age_range"] = range_report(pred.age_low[half], pred.age_high[half], pred.age_pred[half], pred.age[half])
    return out


def _f(x: float, digits: int = 4) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def format_report(rep: dict, age_level: float = DEFAULT_AGE_LEVEL) -> str:
    """The text eval.py prints."""
    lines = [f"gender accuracy: {_f(rep['acc'])}", f"age MAE: {_f(rep['mae'], 2)}"]
    lines += [f"age CS@{n}: {_f(rep[f'cs{n}'])}" for n in CS_LEVELS]
    lines.append(f"records: {rep['count']} ({rep['gender_count']} with known gender)")
    lines += ["", f"{'age band':<10}{'count':>8}{'MAE':>8}{'CS@5':>8}{'acc':>8}"]
    lines += [f"{b['band']:<10}{b['count']:>8}{b['mae']:>8.2f}{b['cs5']:>8.4f}{_f(b['acc']):>8}" for b in rep["bands"]]
    if rep.get("sources"):
        lines += ["", f"{'source':<16}{'count':>8}{'acc':>8}{'MAE':>8}{'CS@5':>8}"]
        lines += [f"{s['source']:<16}{s['count']:>8}{_f(s['acc']):>8}{s['mae']:>8.2f}{s['cs5']:>8.4f}"
                  for s in rep["sources"]]
    if rep.get("age_range"):
        lines += ["", "on the odd records (the half tools/calibrate.py does not calibrate the range on):",
                  format_range_report(rep["age_range"], age_level)]
    return "\n".join(lines)


def format_sources(per: list[dict], overall: dict) -> str:
    """The cross-dataset summary: one line per evaluated file, then the overall line (all faces pooled)."""
    head = f"{'evaluated on':<24}{'faces':>8}{'gender':>8}{'MAE':>8}{'CS@3':>8}{'CS@5':>8}{'gender 0-9':>12}"

    def line(name: str, r: dict) -> str:
        kids = next((b for b in r["bands"] if b["band"] == "0-9"), None)
        return (f"{name:<24}{r['count']:>8}{_f(r['acc']):>8}{_f(r['mae'], 2):>8}{_f(r['cs3']):>8}{_f(r['cs5']):>8}"
                f"{_f(kids['acc']) if kids else 'n/a':>12}")

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
    """One PNG: MAE by true age, predicted vs true age, gender confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.4))
    ages = np.clip(np.round(pred.age).astype(int), 0, 100)
    err = np.abs(pred.age_pred - pred.age)
    present = np.unique(ages)
    a1.bar(present, [err[ages == a].mean() for a in present], width=0.9, color="#4c72b0")
    a1.set(title=f"MAE by true age (overall {err.mean():.2f})", xlabel="true age", ylabel="MAE (years)")
    a1b = a1.twinx()
    a1b.plot(present, [(ages == a).sum() for a in present], color="#999999", lw=1)
    a1b.set_ylabel("faces", color="#999999")
    a2.scatter(pred.age, pred.age_pred, s=4, alpha=0.35, color="#4c72b0")
    hi = max(100.0, float(pred.age.max(initial=0)))
    a2.plot([0, hi], [0, hi], "k--", lw=1)
    a2.set(title="predicted vs true age", xlabel="true age", ylabel="predicted age", xlim=(0, hi), ylim=(0, hi))
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
