#!/usr/bin/env python
"""Read learning curves: runs of one recipe trained on different numbers of faces (`tools/subset_rec.py`),
each evaluated with the default command on the same val splits; per series of runs and per metric a
least-squares line in log2(train faces), i.e. what each doubling of the faces gives, and the plot.

    python tools/learning_curve.py 4914=models/lc/s25/model,14 9828=models/lc/s50/model,14 \\
        19657=models/lc/s100/model,14 --rec dataset/utkface/val.rec --plot models/learning-curve.png

A run may name its series (`SERIES:FACES=MODEL`), e.g. runs on one source and runs with a second source
added, and `--rec` may be given once per val split. `--reference CSV` adds runs measured earlier (columns
series, rec, faces, model, acc, acc_0_9, mae, cs5; `rec` as the tables name it, e.g. `utkface/val`).
The first series with a line on a split is its baseline: every other run is printed beside what that
line predicts at its number of faces (does the curve still predict?). Several runs may share a size
(other seeds); each counts as a point of its series' fit, which needs three runs or more.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.cli import ArgumentParser  # noqa: E402
from agegender.errors import UserError, run_cli  # noqa: E402

# (key of agegender.model.metrics.summarize, column title, plot title)
METRICS = [("acc", "gender", "gender accuracy"), ("acc_0_9", "gender 0-9", "gender accuracy, ages 0-9"),
           ("mae", "MAE", "age MAE (years)"), ("cs5", "CS@5", "age CS@5")]
DEFAULT_SERIES = "runs"
# the most train faces a run may claim: the fits take log2 of a float, which a 300-digit number overflows
MAX_FACES = 10 ** 12


@dataclass
class Point:
    """One run read on one val split."""

    series: str
    faces: int
    model: str
    rec: str  # the split's table name (`utkface/val`)
    metrics: dict


def parse_run(text: str) -> tuple[str, int, str]:
    """`[SERIES:]FACES=PREFIX,EPOCH` (or `FACES=MODEL.onnx`) -> (series, faces, model)."""
    left, sep, model = text.partition("=")
    series, colon, faces = left.rpartition(":")
    series = series.strip() if colon else DEFAULT_SERIES
    if not sep or not faces.strip().isdigit() or not 1 <= int(faces) <= MAX_FACES or not model or not series:
        raise UserError(f"bad run {text!r}: expected [SERIES:]FACES=PREFIX,EPOCH, e.g. 4914=models/lc/s25/model,14 "
                        f"(FACES from 1 to {MAX_FACES:.0e})")
    return series, int(faces), model


def read_reference(path: str) -> list[Point]:
    """Runs measured earlier, from a CSV (see the module docstring)."""
    need = ["series", "rec", "faces", "model"] + [key for key, _, _ in METRICS]
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # a spreadsheet's byte-order mark too
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read --reference {path}: {exc}") from None
    points = []
    for line, row in enumerate(rows, start=2):
        missing = [k for k in need if not (row.get(k) or "").strip()]
        if missing:
            raise UserError(f"{path}, line {line}: no {', '.join(missing)}")
        try:
            faces = int(row["faces"])
            metrics = {key: float(row[key]) for key, _, _ in METRICS}
        except ValueError:
            raise UserError(f"{path}, line {line}: faces must be a whole number and the metrics numbers") from None
        if not 1 <= faces <= MAX_FACES:
            raise UserError(f"{path}, line {line}: faces must be from 1 to {MAX_FACES:.0e}")
        if not all(math.isnan(v) or math.isfinite(v) and 0 <= v <= (1e3 if key == "mae" else 1)
                   for key, v in metrics.items()):
            raise UserError(f"{path}, line {line}: the shares (acc, acc_0_9, cs5) must be from 0 to 1 and mae a "
                            "number of years (nan: not measured)")
        points.append(Point(row["series"].strip(), faces, row["model"].strip(), row["rec"].strip(), metrics))
    return points


def evaluate(model: str, rec: str) -> dict:
    """The default command's figures of `model` on `rec`, and gender accuracy at ages 0-9."""
    from agegender.model.loading import load_engine
    from agegender.model.evaluation import predict_rec, report

    # eval.py's report: faces labelled by an age group (FairFace) count in gender, not in MAE and CS@n
    m = report(predict_rec(load_engine(model), rec, progress=False))
    bands = {b["band"]: b for b in m["bands"]}
    m["acc_0_9"] = bands["0-9"]["acc"] if "0-9" in bands else math.nan
    return m


def fit_per_doubling(faces: list[int], values: list[float]) -> tuple[float, float, float]:
    """Least squares value = a + b log2(faces): (a, b, standard error of b; nan with fewer than 3 points)."""
    import numpy as np

    x, y = np.log2(np.asarray(faces, float)), np.asarray(values, float)
    if len(set(x)) < 2:
        raise ValueError("a learning curve needs runs of at least two sizes")
    if not np.isfinite(y).all():  # e.g. no child in the split: no gender accuracy at 0-9
        return math.nan, math.nan, math.nan
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    se = float(np.sqrt(resid @ resid / (len(x) - 2) / ((x - x.mean()) ** 2).sum())) if len(x) > 2 else float("nan")
    return float(a), float(b), se


def has_line(sizes: list[int]) -> bool:
    """Whether a series of runs of these sizes gets a line: three runs or more (so that the line has a
    standard error), of two sizes or more."""
    return len(sizes) >= 3 and len(set(sizes)) >= 2


def by_series(points: list[Point]) -> dict[str, list[Point]]:
    """The points of each series, the series in the order they first appear."""
    groups: dict[str, list[Point]] = {}
    for p in points:
        groups.setdefault(p.series, []).append(p)
    return groups


def series_fits(points: list[Point]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per series of one split's points that `has_line`: metric -> (a, b, se). Smaller series stay
    points, set against the baseline."""
    fits = {}
    for name, own in by_series(points).items():
        if has_line([p.faces for p in own]):
            fits[name] = {key: fit_per_doubling([p.faces for p in own], [p.metrics[key] for p in own])
                          for key, _, _ in METRICS}
    return fits


def _signed(x: float, digits: int) -> str:
    """`x` with its sign, never `-0.00`: a difference that rounds to zero reads as no difference."""
    return f"{round(x, digits) + 0.0:+.{digits}f}"


def _cell(key: str, value: float) -> str:
    text = f"{value:.2f}" if key == "mae" else f"{value:.4f}"
    return "n/a" if math.isnan(value) else text


def report(rec: str, points: list[Point], fits: dict) -> str:
    """One split's tables: the runs, each series' gain per doubling, and the baseline's predictions."""
    out = [f"default command on {rec}\n", "| series | train faces | model | " + " | ".join(t for _, t, _ in METRICS)
           + " |", "|---|---|---|" + "---|" * len(METRICS)]
    for p in points:
        out.append(f"| {p.series} | {p.faces:,} | {p.model} | "
                   + " | ".join(_cell(k, p.metrics[k]) for k, _, _ in METRICS) + " |")
    for name, fit in fits.items():
        top = max(p.faces for p in points if p.series == name)
        out.append(f"\n{name}: per doubling of the train faces (least squares in log2 faces, +- its standard error)\n")
        for key, title, _ in METRICS:
            a, b, se = fit[key]
            if math.isnan(b):
                out.append(f"  {title:<11} n/a")
                continue
            b = round(b, 6) + 0.0  # no "-0.0000"
            out.append(f"  {title:<11} {b:+.4f} +- {se:.4f}   at {top:,} faces: {a + b * math.log2(top):.4f}")
    if fits:
        base = next(iter(fits))
        others = [p for p in points if p.series != base]
        if others:
            out.append(f"\nmeasured against {base}'s line (measured / predicted / difference)\n")
            out.append("| series | train faces | " + " | ".join(t for _, t, _ in METRICS) + " |")
            out.append("|---|---|" + "---|" * len(METRICS))
            for p in others:
                cells = []
                for key, _, _ in METRICS:
                    a, b, _ = fits[base][key]
                    pred, got = a + b * math.log2(p.faces), p.metrics[key]
                    cells.append("n/a" if math.isnan(pred) or math.isnan(got) else
                                 f"{_cell(key, got)} / {_cell(key, pred)} / {_signed(got - pred, 2 if key == 'mae' else 4)}")
                out.append(f"| {p.series} | {p.faces:,} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(recs: list[str], points: list[Point], fits: dict, path: str) -> None:
    """One row of panels per split, one panel per metric; each series its points and its dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from agegender.atomic import save_figure

    style = {n: (f"C{i % 10}", "osD^v<>ph*"[i % 10]) for i, n in enumerate(by_series(points))}
    fig, axes = plt.subplots(len(recs), len(METRICS), figsize=(4 * len(METRICS), 3.4 * len(recs)), squeeze=False)
    top = 2 * max(p.faces for p in points)
    for row, rec in zip(axes, recs):
        own = [p for p in points if p.rec == rec]
        for ax, (key, _, title) in zip(row, METRICS):
            for name, pts in by_series(own).items():
                color, marker = style[name]
                ax.plot([p.faces for p in pts], [p.metrics[key] for p in pts], marker, color=color, label=name)
                a, b, _ = fits[rec].get(name, {}).get(key, (math.nan,) * 3)
                if not math.isnan(b):  # from the series' own first run on: no line where it has no run
                    xs = np.geomspace(min(p.faces for p in pts), top, 50)
                    ax.plot(xs, a + b * np.log2(xs), "--", color=color, lw=1, label=f"{b:+.3f} per doubling")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("train faces")
            ax.set_title(f"{title} on {rec}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="[SERIES:]FACES=PREFIX,EPOCH per run (FACES: its train faces)")
    p.add_argument("--rec", action="append", default=[],
                   help="a val split every run is read on; once per split (default: dataset/utkface/val.rec)")
    p.add_argument("--reference", default="", help="CSV of runs measured earlier (see above)")
    p.add_argument("--plot", default="", help="save the curves with their fits (PNG)")
    args = p.parse_args()

    from agegender.atomic import check_writable, dataset_files, refuse_inputs
    from agegender.model.engine import model_files
    from agegender.model.evaluation import rec_name

    runs = sorted((parse_run(r) for r in args.runs), key=lambda r: r[1])
    recs = args.rec or ["dataset/utkface/val.rec"]
    for rec in recs:
        if not os.path.isfile(rec):
            raise UserError(f"{rec} not found")
    names = [rec_name(r) for r in recs]
    if len(set(names)) < len(names):
        raise UserError(f"--rec: two splits share a table name ({', '.join(names)}); the tables name a split by "
                        f"its folder and file, so give each split once, from folders of different names")
    reference = [q for q in read_reference(args.reference) if q.rec in names] if args.reference else []
    if not runs and not reference:
        raise UserError("no runs: name them (FACES=PREFIX,EPOCH) or give --reference runs of these splits")
    for name in names:  # before the evaluations, not after them
        planned = [q for q in reference if q.rec == name] + [Point(r[0], r[1], r[2], name, {}) for r in runs]
        if not any(has_line([p.faces for p in own]) for own in by_series(planned).values()):
            raise UserError(f"a learning curve needs one series of three runs or more, of at least two sizes, "
                            f"on {name}")
    if args.plot:
        inputs = model_files(*[m for _, _, m in runs])
        inputs += [f for r in recs for f in dataset_files(r)]
        refuse_inputs([("--plot", args.plot)], inputs + ([args.reference] if args.reference else []))
        check_writable(args.plot, "--plot")  # before the evaluations, not after them
    points = sorted(reference, key=lambda q: q.faces)
    points += [Point(series, faces, model, name, evaluate(model, rec))
               for series, faces, model in runs for rec, name in zip(recs, names)]
    fits = {}
    for name in names:
        own = [q for q in points if q.rec == name]
        fits[name] = series_fits(own)
        print(report(name, own, fits[name]) + "\n")
    if args.plot:
        plot(names, points, fits, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    run_cli(main)
