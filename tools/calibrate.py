#!/usr/bin/env python
"""Is P(male) calibrated (does a 0.6 mean six in ten)? Does the age range hold the true age as often as it
says? On the source photos of packed val splits (detected, main face, aligned as infer.py does):

- gender: the expected calibration error (10 bins) of P(male) per age band, as the model decodes it and
  after temperature scaling (one temperature T for the gender logit, fitted on all the lists together by
  log-likelihood); the ensemble's too;
- age range: the widening (agegender/model/age.py, `Widening`) fitted on the even records of all the lists
  together (per range level and band of the predicted age), and the coverage on the odd records, raw and
  widened, overall and per 10-year band of the true age, with the MAE of the narrowest and widest thirds;
  over exact ages only (faces labelled by an age group, FairFace, are left out and counted; a list of
  groups only is refused: --gender-only then fits the temperature alone);
- the gender ensemble: the teacher net's weight w in (1 - w) * ours + w * teacher's P(male), chosen on all the
  lists together (after T) as the best accuracy on a grid of 0 to 1 by 0.05, ties to the plain mean (0.5);
  reported with its cross-fitted accuracy (w chosen on the other half of the faces).

--write stores them in a copy of the ONNX model (metadata `gender_temperature`, `age_range_widening`,
`gender_teacher_weight`, which the onnx engine applies), or in PREFIX-calibration.json beside a checkpoint (which the mxnet engine applies and
tools/export_onnx.py carries into the export); repeat it to write both. --age-range-only keeps the model's
stored temperature and teacher weight and fits the widening alone; --gender-only the reverse.

    python tools/calibrate.py --model models/agegender.onnx
    python tools/calibrate.py --model models/agegender.onnx --write models/agegender-calibrated.onnx
    python tools/calibrate.py --model models/run/model,0 --write models/run/model-calibration.json
    python tools/calibrate.py --model models/agegender.onnx --age-range-only \
        --write models/agegender-new.onnx --write models/agegender-calibration.json   # the bundled model's
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.cli import ArgumentParser  # noqa: E402
from agegender.model.photo_eval import add_split_arguments  # noqa: E402
from agegender.errors import UserError, run_cli  # noqa: E402


def sigmoid(z):
    import numpy as np

    return 1.0 / (1.0 + np.exp(-z))


def cross_fitted(logit, gender):
    """P(male) with T fitted on the other half of the faces (alternate records): an honest 'after'."""
    import numpy as np

    from agegender.model.metrics import fit_temperature

    out = np.empty(len(logit))
    half = np.arange(len(logit)) % 2 == 0
    for part in (half, ~half):
        out[part] = sigmoid(logit[part] / fit_temperature(logit[~part], gender[~part]))
    return out


def weight_section(p_ours, p_teacher, gender, index) -> float:
    """Fit the ensemble's teacher weight on all the faces, print what it does (and, honestly, what it does when
    chosen on the other half of the faces), and return it."""
    import numpy as np

    from agegender.model.engine import DEFAULT_TEACHER_WEIGHT
    from agegender.model.metrics import ensemble_accuracy, fit_teacher_weight

    w = fit_teacher_weight(p_ours, p_teacher, gender)
    acc = lambda sel, weight: ensemble_accuracy(p_ours[sel], p_teacher[sel], gender[sel], weight)  # noqa: E731
    every = np.ones(len(gender), bool)
    half = np.asarray(index) % 2 == 0
    hits, scored = {"fitted": 0.0, "mean": 0.0}, 0
    for part in (half, ~half):  # choose on one half, score on the other
        other = fit_teacher_weight(p_ours[~part], p_teacher[~part], gender[~part])
        known = int((gender[part] >= 0).sum())
        if known:
            hits["fitted"] += acc(part, other) * known
            hits["mean"] += acc(part, DEFAULT_TEACHER_WEIGHT) * known
            scored += known
    cross = {k: v / scored if scored else float("nan") for k, v in hits.items()}
    print(f"\ngender ensemble: teacher weight w = {w:.2f} (accuracy on {len(gender)} faces: ours alone "
          f"{acc(every, 0.0):.4f}, teacher alone {acc(every, 1.0):.4f}, plain mean {acc(every, 0.5):.4f}, "
          f"w = {w:.2f} {acc(every, w):.4f}; w chosen on the other half of the faces (alternate records): "
          f"{cross['fitted']:.4f}, plain mean {cross['mean']:.4f})")
    return w


def main() -> int:
    p = ArgumentParser(description=__doc__)
    add_split_arguments(p)
    p.add_argument("--write", metavar="OUT", action="append", default=[],
                   help="store the fitted temperature, teacher weight and age range widening: OUT.onnx, a copy of "
                        "the (.onnx) model with them in its metadata; or PREFIX-calibration.json beside a checkpoint "
                        "(read by the mxnet engine and carried into tools/export_onnx.py's export; an ONNX model "
                        "PREFIX.onnx may write it for its checkpoint PREFIX, as the bundled model's); repeatable")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--age-range-only", action="store_true",
                      help="keep the model's stored gender temperature and teacher weight; fit and write only the "
                           "age range's widening")
    what.add_argument("--gender-only", action="store_true",
                      help="fit and write only the gender temperature and teacher weight, keeping the model's stored "
                           "age range widening: for lists of age groups only (FairFace), which cannot calibrate the "
                           "range")
    args = p.parse_args()
    source = check_writes(args)
    import numpy as np

    from agegender.data.face import load_detector
    from agegender.model.ensemble import TeacherGender
    from agegender.model.loading import load_engine
    from agegender.model.metrics import fit_temperature
    from agegender.model.photo_eval import split_faces

    engine = load_engine(args.model, args.engine, threads=1)
    detector, teacher = load_detector(threads=1), TeacherGender(threads=1)
    splits = [split_faces(lst, detector, engine, teacher, limit=args.limit, name=lst) for lst in args.lst]
    logit = np.concatenate([s.logit for s in splits])
    gender = np.concatenate([s.gender for s in splits])
    if not args.age_range_only and not (gender >= 0).any():  # else T = 1 and w = 0.5 would replace the stored ones
        raise UserError(f"no face with a known gender in {', '.join(args.lst)}: the gender temperature and the "
                        "ensemble's teacher weight cannot be fitted on them (--age-range-only fits the age range "
                        "alone)")
    t = engine.gender_temperature if args.age_range_only else fit_temperature(logit, gender)
    print(f"model {engine.name}: stored gender temperature {engine.gender_temperature:g}; "
          + (f"kept (--age-range-only), with the teacher weight {engine.teacher_weight:g}" if args.age_range_only
             else f"fitted on {len(logit)} faces of {', '.join(args.lst)}: T = {t:.4f}"
             + "".join(f"; {s.name} alone: T = {fit_temperature(s.logit, s.gender):.4f}" for s in splits)))
    if args.age_range_only:
        w = engine.teacher_weight
    else:
        w = weight_section(sigmoid(logit / t), np.concatenate([s.p_teacher for s in splits]), gender,
                           np.concatenate([s.index for s in splits]))
    ece_section(splits, t, w)
    if args.gender_only:  # the stored widening is written back as it is (none stays none)
        widening = None if engine.age_widening.is_identity else engine.age_widening
    else:
        widening = age_range_section(splits)
    for out in args.write:
        write_calibration(out, source, engine, t, w, widening)
        kept = " kept" if args.gender_only else ""
        gender_kept = " kept" if args.age_range_only else ""
        print(f"\nwrote {out} (gender_temperature {t:.4f}{gender_kept}, gender_teacher_weight {w:g}{gender_kept}, "
              + (f"age range widening{kept})" if widening is not None else "no age range widening)"))
    return 0


def check_writes(args) -> str:
    """Refuse, before any work, a --write that no engine would read or that would replace an input; returns
    the model file the calibrated copy is made from (a bundled name resolved)."""
    from agegender.model import registry
    from agegender.model.engine import CALIBRATION_SUFFIX

    bundled = registry.resolve(args.model)  # a name: its .onnx (or its checkpoint when it has no .onnx)
    source = bundled.spec if bundled else args.model
    is_onnx = source.lower().endswith(".onnx")
    prefix = source[:-len(".onnx")] if is_onnx else source.partition(",")[0]
    for out in args.write:
        sidecar = out.endswith(CALIBRATION_SUFFIX)
        if sidecar and os.path.realpath(out) != os.path.realpath(prefix + CALIBRATION_SUFFIX):
            # a calibration file is read only beside its own checkpoint: any other name would never be applied
            raise UserError(f"--write {out}: a checkpoint's calibration goes beside it, as "
                            f"{prefix}{CALIBRATION_SUFFIX}")
        if not sidecar and not (out.lower().endswith(".onnx") and is_onnx):
            raise UserError(f"--write takes OUT.onnx (with --model a .onnx file) or PREFIX{CALIBRATION_SUFFIX} "
                            f"(beside a checkpoint PREFIX): {out}")
    if args.write:
        from agegender.atomic import check_writable, refuse_inputs, refuse_same_outputs
        from agegender.model.engine import model_files

        for out in args.write:
            # the sidecar is the one model file rewritten by design: its temperature is read, then replaced
            refuse_inputs([("--write", out)], model_files(args.model, calibration=not out.endswith(CALIBRATION_SUFFIX))
                          + list(args.lst))
        refuse_same_outputs([("--write", out) for out in args.write])
        for out in args.write:
            check_writable(out, "calibrated model")
    return source


def ece_section(splits, t: float, w: float) -> None:
    """Per split and age band: accuracy, and the ECE of P(male) as decoded, with T, with T cross-fitted, and of
    the ensemble (at teacher weight `w`) without and with T."""
    import numpy as np

    from agegender.model.ensemble import ensemble_p_male
    from agegender.model.metrics import AGE_BANDS, expected_calibration_error

    print("ECE: 10 equal bins of P(male), |share of males - mean P(male)| weighted by faces per bin; "
          "'cross-fitted': T fitted on the other half of the faces (alternate records)")
    for s in splits:
        after = sigmoid(s.logit / t)
        cross = cross_fitted(s.logit, s.gender)
        print(f"\n{s.name}: {len(s.gender)} faces ({s.no_face} photos without a face, {s.unreadable} unreadable)\n")
        print("| band | faces | gender acc. | ECE as decoded | ECE with T | ECE cross-fitted | "
              "ensemble ECE | ensemble ECE with T |\n|---|---|---|---|---|---|---|---|")
        rows = [("all", np.ones(len(s.gender), bool))]
        rows += [(label, (s.age >= lo) & (s.age <= hi)) for label, lo, hi in AGE_BANDS]
        for label, sel in rows:
            if not sel.any():
                continue
            g = s.gender[sel]
            known = g >= 0
            acc = float(((s.p_ours[sel][known] >= 0.5) == (g[known] == 1)).mean()) if known.any() else float("nan")
            eces = [expected_calibration_error(q[sel], g) for q in
                    (s.p_ours, after, cross, ensemble_p_male(s.p_ours, s.p_teacher, w),
                     ensemble_p_male(after, s.p_teacher, w))]
            print(f"| {label} | {int(sel.sum())} | {acc:.4f} | " + " | ".join(f"{e:.4f}" for e in eces) + " |")


def write_calibration(out: str, source: str, engine, t: float, w: float, widening) -> None:
    """T, the teacher weight `w` and the `widening` (None: none) into `out`: PREFIX-calibration.json beside a
    checkpoint (with the model's own flip default), or a copy of the ONNX model `source` with them in its
    metadata; through the project's writer."""
    from agegender.atomic import write_atomic
    from agegender.model.age import WIDENING_KEY
    from agegender.model.engine import (CALIBRATION_SUFFIX, FLIP_KEY, TEACHER_WEIGHT_KEY, TEMPERATURE_KEY,
                                        with_temperature)

    if out.endswith(CALIBRATION_SUFFIX):
        doc = {TEMPERATURE_KEY: round(t, 4), TEACHER_WEIGHT_KEY: w}  # w exact: a grid value, or the stored one
        if widening is not None:
            doc[WIDENING_KEY] = widening.to_dict()
        if not engine.default_flip:  # the model's own flip default stays with it (ONNX metadata is kept whole)
            doc[FLIP_KEY] = False
        write_atomic(out, json.dumps(doc) + "\n")
    else:
        with open(source, "rb") as f:
            write_atomic(out, with_temperature(f.read(), t, widening, w))


def age_range_section(splits):
    """Fit the widening on the even records of all the splits, print the coverage on the odd ones (raw and
    widened, at every fitted level; the bands at the default level), and return the widening."""
    import numpy as np

    from agegender.model.age import DEFAULT_AGE_LEVEL, age_range
    from agegender.model.metrics import calibration_half, format_range_report, range_report, select_widening

    # coverage needs true ages: faces labelled by an age group (FairFace: `age` is the group's midpoint) are
    # left out of both the fit and the report
    groups = sum(int(s.grouped.sum()) for s in splits)
    even = [calibration_half(s.index) & ~s.grouped for s in splits]
    odd = [~calibration_half(s.index) & ~s.grouped for s in splits]
    if not any(m.any() for m in even):
        raise UserError(f"no face with an exact age on the even records of {', '.join(s.name for s in splits)} "
                        f"({groups} labelled by age group): the age range cannot be calibrated on them "
                        "(--gender-only fits the gender temperature alone)")
    cat = lambda k: np.concatenate([getattr(s, k)[m] for s, m in zip(splits, even)])  # noqa: E731
    index = cat("index")  # record numbers: the folds
    widening, chosen, scores = select_widening(cat("age_probs"), cat("age_pred"), cat("age"), index)
    if groups:
        print(f"\nage range: {groups} faces labelled by age group left out (no true age to cover)")
    print(f"\nage range: widening fitted on the even records ({sum(int(m.sum()) for m in even)} faces), its layout "
          "chosen by two-fold cross-validation inside them (|coverage - level| overall and per true-age band, "
          "averaged over the levels): "
          + ", ".join(f"{name} {score:.4f}" for name, score in scores) + f"; chosen: {chosen}\n"
          f"{json.dumps(widening.to_dict())}")
    for s, r in zip(splits, odd):
        print(f"\n{s.name}, odd records ({int(r.sum())} faces), coverage by level: "
              + "; ".join(f"{level:.0%} raw {cov(s, r, level, None):.3f}, widened {cov(s, r, level, widening):.3f}"
                          for level in widening.levels))
        low, high = age_range(s.age_probs[r], DEFAULT_AGE_LEVEL, widening, s.age_pred[r])
        print(format_range_report(range_report(low, high, s.age_pred[r], s.age[r]), DEFAULT_AGE_LEVEL))
    return widening


def cov(s, sel, level, widening) -> float:
    """Coverage of the range at `level` on the selected faces of split `s`."""
    from agegender.model.age import age_range, coverage

    low, high = age_range(s.age_probs[sel], level, widening, s.age_pred[sel])
    return coverage(low, high, s.age[sel])


if __name__ == "__main__":
    run_cli(main)
