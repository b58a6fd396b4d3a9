#!/usr/bin/env python
"""Does the gender ensemble pay? On the source photos of packed val splits (detected, main face, aligned as
infer.py does), gender accuracy of our model, of the CC0 teacher on chips aligned from our landmarks, and of
the ensemble (the two mixed at the model's stored teacher weight, tools/calibrate.py), overall and per age band; the teacher's agreement with its own dlib pipeline (where a
tools/teacher_gender.py sidecar is given or lies beside the list as <split>-teacher.csv); and the cost in faces/s.

    python tools/ensemble_report.py --model models/agegender.onnx
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.cli import ArgumentParser  # noqa: E402
from agegender.model.photo_eval import add_split_arguments  # noqa: E402
from agegender.errors import UserError, run_cli  # noqa: E402


def acc(p, g) -> float:
    """Gender accuracy over known genders."""
    import numpy as np

    known = g >= 0
    return float(((p[known] >= 0.5) == (g[known] == 1)).mean()) if known.any() else float("nan")


def print_tables(sf, own: dict[int, float] | None, weight: float) -> None:
    """One split's accuracy table (overall + bands), and the teacher's agreement with its own pipeline."""
    import numpy as np

    from agegender.model.ensemble import ensemble_p_male
    from agegender.model.metrics import AGE_BANDS

    mean = ensemble_p_male(sf.p_ours, sf.p_teacher, weight)
    print(f"\n{sf.name}: {len(sf.gender)} faces ({sf.no_face} photos without a face, {sf.unreadable} unreadable)\n")
    print("| band | faces | ours | teacher (our alignment) | ensemble | ensemble - ours |\n|---|---|---|---|---|---|")
    rows = [("all", np.ones(len(sf.gender), bool))]
    rows += [(label, (sf.age >= lo) & (sf.age <= hi)) for label, lo, hi in AGE_BANDS]
    for label, sel in rows:
        if sel.any():
            a, t, m = (acc(p[sel], sf.gender[sel]) for p in (sf.p_ours, sf.p_teacher, mean))
            print(f"| {label} | {int(sel.sum())} | {a:.4f} | {t:.4f} | {m:.4f} | {m - a:+.4f} |")
    if own is not None:
        pairs = [(own[int(i)], p) for i, p in zip(sf.index, sf.p_teacher) if int(i) in own]
        if pairs:
            o, p = np.array(pairs).T
            print(f"\nteacher via our alignment vs its own dlib pipeline, {len(pairs)} faces: same gender "
                  f"{np.mean((o >= 0.5) == (p >= 0.5)):.4f}, mean |P(male) difference| {np.mean(np.abs(o - p)):.4f}")


def main() -> int:
    p = ArgumentParser(description=__doc__)
    add_split_arguments(p)
    p.add_argument("--teacher-own", nargs="*", default=None, metavar="CSV",
                   help="the teacher's own labels of each split (tools/teacher_gender.py), in --lst order "
                        "(default: <split>-teacher.csv beside each list, where it exists)")
    args = p.parse_args()
    if args.teacher_own is not None and len(args.teacher_own) != len(args.lst):
        raise UserError(f"--teacher-own needs one CSV per --lst ({len(args.lst)}), got {len(args.teacher_own)}")
    from agegender.data.face import load_detector
    from agegender.model.ensemble import TeacherGender
    from agegender.model.loading import load_engine
    from agegender.model.photo_eval import split_faces
    from agegender.model.teacher import read_sidecar

    detector = load_detector(threads=1)
    engine = load_engine(args.model, args.engine, threads=1)
    teacher = TeacherGender(threads=1)
    print(f"model {engine.name} (gender temperature {engine.gender_temperature:g}), teacher {teacher.name} "
          f"(weight {engine.teacher_weight:g} in the ensemble); "
          f"ours {'with' if engine.default_flip else 'without'} flip (the model's default), the teacher without")
    totals: dict[str, float] = {}
    count = 0
    for n, lst in enumerate(args.lst):
        if args.teacher_own:
            own = read_sidecar(args.teacher_own[n])  # named: a missing file is an error
        else:
            sidecar = os.path.splitext(lst)[0] + "-teacher.csv"
            own = read_sidecar(sidecar) if os.path.isfile(sidecar) else None
        sf = split_faces(lst, detector, engine, teacher, limit=args.limit, name=lst)
        print_tables(sf, own, engine.teacher_weight)
        for k, v in sf.seconds.items():
            totals[k] = totals.get(k, 0.0) + v
        count += len(sf.gender)
    if count:
        ours = totals["align"] + totals["net"]
        extra = totals["teacher_align"] + totals["teacher_net"]
        print(f"\ncost on {count} faces (1 thread each, this machine): "
              f"detection {count / totals['detect']:.0f} faces/s; "
              f"our align + net {count / ours:.0f} faces/s; the teacher's chip + net {count / extra:.0f} faces/s "
              f"({totals['teacher_align'] * 1e3 / count:.2f} + {totals['teacher_net'] * 1e3 / count:.2f} ms/face); "
              f"whole path per face: {1e3 * (totals['detect'] + ours) / count:.2f} ms alone, "
              f"{1e3 * (totals['detect'] + ours + extra) / count:.2f} ms with the ensemble "
              f"({100 * extra / (totals['detect'] + ours):+.1f} %)")
    return 0


if __name__ == "__main__":
    run_cli(main)
