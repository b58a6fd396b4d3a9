#!/usr/bin/env python
"""Evaluate a checkpoint on packed .rec files: gender accuracy, age MAE, CS@3 / CS@5, per age band and per
source; with several files, one table each and an overall line. See README.md, "Evaluation"."""
from __future__ import annotations

import argparse
import os
import sys

from agegender.model.age import DEFAULT_AGE_LEVEL, add_age_decode_argument
from agegender.model.engine import ENGINES
from agegender.model.ensemble import DEFAULT_GENDER_ENSEMBLE
from agegender.cli import AGE_LEVEL, BATCH, COUNT, ArgumentParser, add_flip_argument
from agegender.errors import UserError, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--model", default=None,
                   help="a bundled model's name (default, small, ...: docs/model.md), a .onnx file, or "
                        "PREFIX,EPOCH (PREFIX: its newest epoch); default: the bundled model `default`")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="what runs the net (default: onnx for a .onnx file and the bundled model, mxnet for "
                        "PREFIX,EPOCH; onnx with PREFIX,EPOCH exports it in memory)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data-dir", "--data_dir", action="append", default=None, metavar="DIR",
                     help="folder whose val.rec is evaluated (default: dataset); repeatable")
    src.add_argument("--rec", action="append", default=None, metavar="FILE",
                     help="a packed .rec file to evaluate; repeatable (one table each, then the overall line)")
    p.add_argument("--batch-size", "--batch_size", type=BATCH, default=256, help="faces per batch")
    p.add_argument("--gpus", default="", help="GPU ids such as 0,1 (empty = CPU)")
    add_age_decode_argument(p)
    p.add_argument("--age-level", type=AGE_LEVEL, default=DEFAULT_AGE_LEVEL,
                   help="the age range's level; its coverage is reported on the odd records (the half "
                        "tools/calibrate.py does not calibrate on), overall and per 10-year band")
    add_flip_argument(p)
    p.add_argument("--gender-ensemble", action=argparse.BooleanOptionalAction, default=DEFAULT_GENDER_ENSEMBLE,
                   help="P(male) as infer.py gives it by default: ours mixed with the bundled CC0 teacher "
                        "net's at the model's calibrated weight (its chips cut from the packed crops); --no-gender-ensemble: the model alone")
    p.add_argument("--json", metavar="FILE", help="write every number to this JSON file")
    p.add_argument("--plot", metavar="FILE", help="save MAE by age, predicted vs true age, gender confusion (PNG)")
    p.add_argument("--num-workers", type=COUNT, default=2, help="image decoding threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown on a terminal only)")
    p.add_argument("--verbose", action="store_true", help="also show MXNet's native INFO log lines")
    return p


def main() -> int:
    args = build_parser().parse_args()
    recs = args.rec or [os.path.join(d, "val.rec") for d in (args.data_dir or ["dataset"])]
    from agegender.native_logs import set_verbose

    set_verbose(args.verbose)

    from agegender.atomic import check_writable, dataset_files, refuse_inputs, unique_files
    from agegender.model.engine import model_files
    from agegender.model.loading import load_engine
    from agegender.model.evaluation import (concat_predictions, format_report, format_sources, plot_predictions,
                                            predict_rec, rec_name, report, write_json)

    recs, repeated = unique_files(recs)
    for again, first in repeated:  # counted twice, the split would weigh double in the overall line
        same = "given twice" if again == first else f"the same file as {first}"
        print(f"note: {again} is {same}: evaluated once", file=sys.stderr)
    refuse_inputs([("--json", args.json), ("--plot", args.plot)],
                  [f for rec in recs for f in dataset_files(rec)] + model_files(args.model))
    if args.json and args.plot and args.json != "-" and os.path.realpath(args.json) == os.path.realpath(args.plot):
        raise UserError(f"--json and --plot are the same file: {args.json}")
    for path, flag in ((args.json, "--json"), (args.plot, "--plot")):
        if path:
            check_writable(path, flag)  # before the evaluation, not after it

    predictor = load_engine(args.model, args.engine, args.gpus)
    teacher = None
    if args.gender_ensemble:
        from agegender.model.ensemble import TeacherGender

        teacher = TeacherGender()
    preds = [predict_rec(predictor, rec, args.batch_size, args.age_decode, args.flip, not args.no_progress,
                         args.num_workers, args.age_level, teacher) for rec in recs]
    settings = {"model": predictor.name, "engine": predictor.kind, "age_decode": args.age_decode,
                "flip": predictor.resolve_flip(args.flip),
                "age_level": args.age_level, "gender_ensemble": args.gender_ensemble,
                "gender_teacher_weight": predictor.teacher_weight if args.gender_ensemble else None}
    print(f"model {predictor.name} ({predictor.kind}), {args.age_decode}, flip {'on' if settings['flip'] else 'off'}, "
          + (f"gender: the ensemble, teacher weight {predictor.teacher_weight:g}" if args.gender_ensemble
             else "gender: the model alone"))
    if len(recs) == 1:
        rep = report(preds[0])
        print(format_report(rep, args.age_level))
        settings["rec"] = recs[0]
    else:
        per = [{"name": rec_name(r), "rec": r, **report(p)} for r, p in zip(recs, preds)]
        rep = {"recs": per, "overall": report(concat_predictions(preds))}
        for r in per:
            print(f"== {r['name']} ({r['rec']}) ==\n{format_report(r, args.age_level)}\n")
        print(format_sources(per, rep["overall"]))
    if args.json:
        write_json(args.json, rep, settings)
    if args.plot:
        pred = preds[0] if len(preds) == 1 else concat_predictions(preds)
        plot_predictions(pred, args.plot, f"{predictor.name} on {', '.join(recs)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
