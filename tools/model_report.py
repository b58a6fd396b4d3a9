#!/usr/bin/env python
"""The model card's tables for a model on a packed UTKFace split: every age decoding with and without flip,
per age band, per UTKFace race (read from each record's source file name, `<age>_<gender>_<race>_...`),
and, with --robustness, on the same faces JPEG-recompressed or downscaled, as Markdown.

    python tools/model_report.py --model models/agegender.onnx --rec dataset/utkface/val.rec --robustness
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.cli import ArgumentParser  # noqa: E402
from agegender.errors import UserError, run_cli  # noqa: E402

RACES = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}


def races_of(rec: str) -> list[int | None]:
    """UTKFace's race field per record, from the `.lst` beside the `.rec` (None where the name has none)."""
    lst = os.path.splitext(rec)[0] + ".lst"
    if not os.path.isfile(lst):
        raise UserError(f"{lst} not found: the race comes from the source file names listed there")
    from agegender.errors import read_text

    out = []
    for line in read_text(lst, "list file").removesuffix("\n").split("\n"):  # one line per record
        parts = os.path.basename(line.rstrip("\r").split("\t")[-1]).split("_")
        out.append(int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else None)
    return out


def refuse_groups(rec: str) -> None:
    """Every figure here reads the packed age as the true one: a split with faces labelled by an age group
    (FairFace: the packed age is the group's midpoint) is refused in one line, for eval.py to measure."""
    import numpy as np

    from agegender.data.distribution import load_labels
    from agegender.data.recordio import read_attrs

    try:
        grouped = int(read_attrs(rec, np.asarray(load_labels(rec).age, np.float64)).grouped.sum())
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if grouped:
        raise UserError(f"{rec}: {grouped} faces are labelled by an age group (their packed age is the group's "
                        "midpoint, not a true age): measure them with eval.py")


def robustness(engine, faces, packed_out, gender, age, how: str) -> None:
    """The model's figures (alone: no gender ensemble) on `faces` (N,3,112,112 mx.nd, RGB 0-255) as packed
    (their outputs `packed_out`, already computed), recompressed and downscaled: the mean error shows which
    way each degradation pushes the age."""
    import numpy as np

    from agegender.data.iterators import downscale, recompress
    from agegender.model.age import DEFAULT_DECODE, DEFAULT_FLIP, decode
    from agegender.model.metrics import summarize

    def outputs(degraded) -> np.ndarray:
        x = degraded.asnumpy()
        return np.concatenate([engine.outputs(x[i:i + 256], flip=DEFAULT_FLIP) for i in range(0, len(x), 256)])

    settings = [("as packed", lambda: packed_out)]
    settings += [(f"JPEG quality {q}", lambda q=q: outputs(recompress(faces, 1.0, (q, q)))) for q in (75, 40, 20, 10)]
    settings += [(f"downscaled to {s} px", lambda s=s: outputs(downscale(faces, s))) for s in (64, 48)]
    print(f"\nrobustness ({how}; mean error = predicted - true age)\n")
    print("| faces | gender acc. | MAE | CS@5 | mean error | mean error 20-29 |\n|---|---|---|---|---|---|")
    young = (age >= 20) & (age < 30)
    for name, make in settings:
        p_male, pred = decode(make(), DEFAULT_DECODE)
        m = summarize(p_male, pred, gender, age)
        bias_young = f"{np.mean(pred[young] - age[young]):+.2f}" if young.any() else ""
        print(f"| {name} | {m['acc']:.4f} | {m['mae']:.2f} | {m['cs5']:.4f} | {np.mean(pred - age):+.2f} | "
              f"{bias_young} |")


def main() -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--model", default=None, help="a bundled model's name, a .onnx file or PREFIX,EPOCH "
                        "(default: the bundled model `default`)")
    p.add_argument("--rec", default="dataset/utkface/val.rec", help="a packed UTKFace .rec (its .lst beside it)")
    p.add_argument("--teacher", metavar="CSV", default="",
                   help="the teacher's P(male) for this split (tools/teacher_gender.py): gender per band of the "
                        "teacher alone and averaged with the model")
    p.add_argument("--robustness", action="store_true",
                   help="also the default command on the faces JPEG-recompressed (quality 75-10) and downscaled "
                        "(64 and 48 px, then back to 112)")
    args = p.parse_args()

    import mxnet as mx
    import numpy as np

    from agegender.data.iterators import check_rec, eval_batches, record_iter
    from agegender.model.age import AGE_DECODINGS, DEFAULT_DECODE, DEFAULT_FLIP, decode
    from agegender.model.loading import load_engine
    from agegender.model.metrics import band_table, summarize

    n = check_rec(args.rec)
    refuse_groups(args.rec)
    engine = load_engine(args.model)
    outs, flips, labels, faces = [], [], [], []
    for data, label in eval_batches(record_iter(args.rec, 256, train=False), n):
        x = data.asnumpy()
        if args.robustness:
            faces.append(data.copy())  # the iterator reuses its batch buffer
        outs.append(engine.outputs(x))
        flips.append(engine.outputs(x, flip=True))
        labels.append(label.asnumpy())
    out, flip, lab = np.concatenate(outs), np.concatenate(flips), np.concatenate(labels)
    gender, age = lab[:, 0], lab[:, 1]
    print(f"model {engine.name} on {args.rec} ({n} faces)\n")
    print("| decoding | flip | gender acc. | MAE | CS@3 | CS@5 |\n|---|---|---|---|---|---|")
    for how in AGE_DECODINGS:
        for name, o in (("no", out), ("yes", flip)):
            m = summarize(*decode(o, how), gender, age)
            print(f"| {how} | {name} | {m['acc']:.4f} | {m['mae']:.2f} | {m['cs3']:.4f} | {m['cs5']:.4f} |")
    p_male, pred = decode(flip if DEFAULT_FLIP else out, DEFAULT_DECODE)
    how = f"{DEFAULT_DECODE}{', flip' if DEFAULT_FLIP else ''}"
    print(f"\nper age band ({how}: the default command)\n")
    print("| band | faces | MAE | CS@5 | gender acc. |\n|---|---|---|---|---|")
    for row in band_table(pred, age, p_male, gender):
        print(f"| {row['band']} | {row['count']} | {row['mae']:.2f} | {row['cs5']:.4f} | {row['acc']:.4f} |")
    if args.teacher:
        from agegender.model.teacher import read_sidecar

        t = read_sidecar(args.teacher)
        if sorted(t) != list(range(n)):
            raise UserError(f"{args.teacher} does not label every record of {args.rec}")
        t = np.array([t[i] for i in range(n)])
        print(f"\ngender accuracy with the teacher ({args.teacher}; {how})\n")
        bands = [r["band"] for r in band_table(pred, age)]
        print("| gender from | all | " + " | ".join(bands) + " |\n|---|---|" + "---|" * len(bands))
        for name, p in (("the model", p_male), ("the teacher", t), ("mean of both", (p_male + t) / 2)):
            print(f"| {name} | {summarize(p, pred, gender, age)['acc']:.4f} | "
                  + " | ".join(f"{r['acc']:.4f}" for r in band_table(pred, age, p, gender)) + " |")
    if args.robustness:
        robustness(engine, mx.nd.concat(*faces, dim=0), flip if DEFAULT_FLIP else out, gender, age, how)
    race = races_of(args.rec)
    if len(race) == n:
        print(f"\nper UTKFace race ({how})\n")
        print("| race | faces | gender acc. | MAE | CS@5 |\n|---|---|---|---|---|")
        race = np.array([-1 if r is None else r for r in race])
        for r, name in RACES.items():
            sel = race == r
            if sel.any():
                m = summarize(p_male[sel], pred[sel], gender[sel], age[sel])
                print(f"| {name} | {int(sel.sum())} | {m['acc']:.4f} | {m['mae']:.2f} | {m['cs5']:.4f} |")
    return 0


if __name__ == "__main__":
    run_cli(main)
