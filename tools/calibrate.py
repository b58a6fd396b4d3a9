#!/usr/bin/env python
"""Is P(male) calibrated (does a 0.6 mean six in ten)? On the source photos of packed val splits (detected,
main face, aligned as infer.py does): the expected calibration error (10 bins) of P(male) per age band,
as the model decodes it and after temperature scaling (one temperature T for the gender logit, fitted on
all the lists together by log-likelihood); the ensemble's too. --write stores T in a copy of the ONNX model
(metadata `gender_temperature`, which the onnx engine applies), or beside a checkpoint in
PREFIX-calibration.json (which the mxnet engine applies and tools/export_onnx.py carries into the export).

    python tools/calibrate.py --model models/agegender.onnx
    python tools/calibrate.py --model models/agegender.onnx --write models/agegender-calibrated.onnx
    python tools/calibrate.py --model models/run/model,0 --write models/run/model-calibration.json
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


def main() -> int:
    p = ArgumentParser(description=__doc__)
    add_split_arguments(p)
    p.add_argument("--write", metavar="OUT",
                   help="store the fitted temperature: OUT.onnx, a copy of the (.onnx) model with it in its "
                        "metadata; or PREFIX-calibration.json beside a checkpoint (read by the mxnet engine "
                        "and carried into tools/export_onnx.py's export)")
    args = p.parse_args()
    from agegender.model import registry
    from agegender.model.engine import CALIBRATION_SUFFIX

    bundled = registry.resolve(args.model)  # a name: its .onnx (or its checkpoint when it has no .onnx)
    source = bundled.spec if bundled else args.model
    is_onnx = source.lower().endswith(".onnx")
    prefix = None if is_onnx else source.partition(",")[0]
    sidecar = bool(args.write) and args.write.endswith(CALIBRATION_SUFFIX)
    if sidecar and (prefix is None or os.path.realpath(args.write) != os.path.realpath(prefix + CALIBRATION_SUFFIX)):
        # a calibration file is read only beside its own checkpoint: any other name would never be applied
        raise UserError(f"--write {args.write}: a checkpoint's temperature goes beside it, as PREFIX{CALIBRATION_SUFFIX} "
                        f"of --model PREFIX,EPOCH" + (f" ({prefix}{CALIBRATION_SUFFIX})" if prefix else ""))
    if args.write and not sidecar and not (args.write.lower().endswith(".onnx") and is_onnx):
        raise UserError(f"--write takes OUT.onnx (with --model a .onnx file) or PREFIX{CALIBRATION_SUFFIX} "
                        f"(beside a checkpoint PREFIX): {args.write}")
    if args.write:
        from agegender.atomic import check_writable, refuse_inputs
        from agegender.model.engine import model_files

        # the sidecar is the one model file rewritten by design: its temperature is read, then replaced
        refuse_inputs([("--write", args.write)], model_files(args.model, calibration=not sidecar) + list(args.lst))
        check_writable(args.write, "calibrated model")
    import numpy as np

    from agegender.data.face import load_detector
    from agegender.model.ensemble import TeacherGender, ensemble_p_male
    from agegender.model.loading import load_engine
    from agegender.model.metrics import AGE_BANDS, expected_calibration_error, fit_temperature
    from agegender.model.photo_eval import split_faces

    engine = load_engine(args.model, args.engine, threads=1)
    detector, teacher = load_detector(threads=1), TeacherGender(threads=1)
    splits = [split_faces(lst, detector, engine, teacher, limit=args.limit, name=lst) for lst in args.lst]
    logit = np.concatenate([s.logit for s in splits])
    gender = np.concatenate([s.gender for s in splits])
    t = fit_temperature(logit, gender)
    print(f"model {engine.name}: stored gender temperature {engine.gender_temperature:g}; fitted on "
          f"{len(logit)} faces of {', '.join(args.lst)}: T = {t:.4f}"
          + "".join(f"; {s.name} alone: T = {fit_temperature(s.logit, s.gender):.4f}" for s in splits))
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
                    (s.p_ours, after, cross, ensemble_p_male(s.p_ours, s.p_teacher),
                     ensemble_p_male(after, s.p_teacher))]
            print(f"| {label} | {int(sel.sum())} | {acc:.4f} | " + " | ".join(f"{e:.4f}" for e in eces) + " |")
    if args.write:
        from agegender.atomic import write_atomic
        from agegender.model.engine import with_temperature

        if sidecar:
            write_atomic(args.write, json.dumps({"gender_temperature": round(t, 4)}) + "\n")
        else:
            with open(source, "rb") as f:
                write_atomic(args.write, with_temperature(f.read(), t))
        print(f"\nwrote {args.write} (gender_temperature {t:.4f})")
    return 0


if __name__ == "__main__":
    run_cli(main)
