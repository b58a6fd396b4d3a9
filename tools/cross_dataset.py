#!/usr/bin/env python
"""The model card's cross-dataset matrix: each model (trained on one source or several) evaluated on each
packed val split, with the default command's decoding, overall and per age band, as Markdown.

    python tools/cross_dataset.py --model "UTKFace=models/agegender.onnx" --model "both=models/r8/mix,0" \\
        --rec dataset/utkface/val.rec --rec dataset/aaf/val.rec
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.cli import ArgumentParser  # noqa: E402
from agegender.errors import UserError, run_cli  # noqa: E402


def parse_named(spec: str) -> tuple[str, str]:
    """`NAME=MODEL` (or a bare MODEL, named by itself)."""
    name, sep, model = spec.partition("=")
    return (name, model) if sep and name and model else (spec, spec)


def matrix_tables(results: dict[tuple[str, str], dict], models: list[str], recs: list[str]) -> str:
    """Markdown: overall gender / MAE / CS@5 per (model, val split), then gender and MAE per age band."""
    out = ["| trained on \\ evaluated on | " + " | ".join(recs) + " |", "|---" * (len(recs) + 1) + "|"]
    for m in models:
        cells = [f"{results[m, r]['acc']:.4f} / {results[m, r]['mae']:.2f} / {results[m, r]['cs5']:.3f}"
                 for r in recs]
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    out.append("\n(gender accuracy / MAE / CS@5)\n")
    for r in recs:
        bands = [b["band"] for b in results[models[0], r]["bands"]]
        out.append(f"**{r}**, per age band: gender accuracy / MAE\n")
        out.append("| trained on | " + " | ".join(bands) + " |")
        out.append("|---" * (len(bands) + 1) + "|")
        for m in models:
            by = {b["band"]: b for b in results[m, r]["bands"]}
            out.append(f"| {m} | " + " | ".join(f"{by[b]['acc']:.3f} / {by[b]['mae']:.2f}" for b in bands) + " |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--model", action="append", required=True, metavar="NAME=MODEL",
                   help="a bundled model's name, a .onnx file or PREFIX,EPOCH, with the name its row "
                        "gets; repeatable")
    p.add_argument("--rec", action="append", required=True, metavar="FILE", help="a packed val .rec; repeatable")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args()

    from agegender.model.evaluation import predict_rec, rec_name, report
    from agegender.model.loading import load_engine

    named = [parse_named(s) for s in args.model]
    if len({n for n, _ in named}) != len(named):
        raise UserError("--model names must be distinct")
    results = {}
    for name, spec in named:
        engine = load_engine(spec)
        for rec in args.rec:
            results[name, rec_name(rec)] = report(predict_rec(engine, rec, progress=not args.no_progress))
    print(matrix_tables(results, [n for n, _ in named], [rec_name(r) for r in args.rec]))
    return 0


if __name__ == "__main__":
    run_cli(main)
