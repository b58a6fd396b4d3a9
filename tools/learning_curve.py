#!/usr/bin/env python
"""Read a learning curve: runs of one recipe trained on different numbers of faces (`tools/subset_rec.py`),
each evaluated with the default command on the same val split; per metric a least-squares line in
log2(train faces), i.e. what each doubling of the faces gives, and the plot.

    python tools/learning_curve.py 4914=models/lc/s25/model,14 9828=models/lc/s50/model,14 \\
        19657=models/lc/s100/model,14 --rec dataset/utkface/val.rec --plot models/learning-curve.png

Several runs may share a size (other seeds); each counts as a point of the fit.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.cli import ArgumentParser  # noqa: E402
from agegender.errors import UserError, run_cli  # noqa: E402

# (key of agegender.model.metrics.summarize, column title, plot title)
METRICS = [("acc", "gender", "gender accuracy"), ("acc_0_9", "gender 0-9", "gender accuracy, ages 0-9"),
           ("mae", "MAE", "age MAE (years)"), ("cs5", "CS@5", "age CS@5")]


def parse_run(text: str) -> tuple[int, str]:
    """`FACES=PREFIX,EPOCH` (or `FACES=MODEL.onnx`) -> (faces, model)."""
    faces, sep, model = text.partition("=")
    if not sep or not faces.strip().isdigit() or int(faces) < 1 or not model:
        raise UserError(f"bad run {text!r}: expected FACES=PREFIX,EPOCH, e.g. 4914=models/lc/s25/model,14")
    return int(faces), model


def evaluate(model: str, rec: str) -> dict:
    """The default command's figures of `model` on `rec`, and gender accuracy at ages 0-9."""
    from agegender.model.loading import load_engine
    from agegender.model.evaluation import predict_rec
    from agegender.model.metrics import band_table, summarize

    pred = predict_rec(load_engine(model), rec, progress=False)
    m = summarize(pred.p_male, pred.age_pred, pred.gender, pred.age)
    bands = {b["band"]: b for b in band_table(pred.age_pred, pred.age, pred.p_male, pred.gender)}
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


def plot(faces: list[int], rows: list[dict], fits: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from agegender.atomic import save_figure

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4))
    xs = np.geomspace(min(faces), 8 * max(faces), 50)
    for ax, (key, _, title) in zip(axes, METRICS):
        a, b, _ = fits[key]
        ax.plot(faces, [r[key] for r in rows], "o", color="C0", label="runs")
        if not math.isnan(b):
            ax.plot(xs, a + b * np.log2(xs), "--", color="C1", label=f"fit: {b:+.3f} per doubling")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("train faces")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="FACES=PREFIX,EPOCH per run (FACES: its train faces)")
    p.add_argument("--rec", default="dataset/utkface/val.rec", help="the val split every run is read on")
    p.add_argument("--plot", default="", help="save the curves with their fits (PNG)")
    args = p.parse_args()

    runs = sorted((parse_run(r) for r in args.runs), key=lambda r: r[0])
    if not os.path.isfile(args.rec):
        raise UserError(f"{args.rec} not found")
    if len({n for n, _ in runs}) < 2:
        raise UserError("a learning curve needs runs of at least two sizes")
    from agegender.atomic import check_writable, checkpoint_files, dataset_files, refuse_inputs

    if args.plot:
        models = [f for _, m in runs for f in checkpoint_files(m)]
        refuse_inputs([("--plot", args.plot)], dataset_files(args.rec) + models)
        check_writable(args.plot, "--plot")  # before the evaluations, not after them
    rows = [evaluate(model, args.rec) for _, model in runs]
    faces = [n for n, _ in runs]
    print(f"default command on {args.rec}\n")
    print("| train faces | model | " + " | ".join(t for _, t, _ in METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for (n, model), r in zip(runs, rows):
        cells = [f"{r[key]:.2f}" if key == "mae" else f"{r[key]:.4f}" for key, _, _ in METRICS]
        print(f"| {n:,} | {model} | " + " | ".join(c.replace("nan", "n/a") for c in cells) + " |")
    fits = {key: fit_per_doubling(faces, [r[key] for r in rows]) for key, _, _ in METRICS}
    print("\nper doubling of the train faces (least squares in log2 faces, +- its standard error)\n")
    for key, title, _ in METRICS:
        a, b, se = fits[key]
        if math.isnan(b):
            print(f"  {title:<11} n/a")
            continue
        b = round(b, 6) + 0.0  # no "-0.0000"
        print(f"  {title:<11} {b:+.4f} +- {se:.4f}   at {max(faces):,} faces: {a + b * math.log2(max(faces)):.4f}")
    if args.plot:
        plot(faces, rows, fits, args.plot)
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    run_cli(main)
