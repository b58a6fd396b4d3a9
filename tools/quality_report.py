#!/usr/bin/env python
"""Where the quality flag's thresholds come from (agegender/data/quality.py): on the source photos of packed val
splits (detected, main face, aligned as infer.py aligns), gender accuracy and age MAE
  - as the face gets smaller: each photo scaled down so that the face's box is W px wide, re-aligned from
    the scaled landmarks (the detector is not asked again: this measures the net, not the detector);
  - as it gets blurred: a Gaussian blur of the photo, by the sharpness measure of the aligned crop;
  - by how far it is turned (the landmarks' yaw), on the faces as they are;
and, with the thresholds as shipped, how much worse the flagged faces are than the rest. The MAE is over
exact ages only: faces labelled by an age group (FairFace) count for gender alone.

    python tools/quality_report.py --lst dataset/utkface/val.lst dataset/aaf/val.lst
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.cli import ArgumentParser  # noqa: E402
from agegender.errors import run_cli  # noqa: E402
from agegender.model.photo_eval import add_split_arguments  # noqa: E402

WIDTHS = (12, 16, 20, 24, 28, 32, 48)
BLURS = (0.0, 1.0, 2.0, 3.0, 4.0)  # Gaussian sigma, in pixels of a 100 px wide face


def _row(name: str, sel, p_male, age_pred, gender, age) -> str:
    import numpy as np

    known = sel & (gender >= 0)
    acc = float(((p_male[known] >= 0.5) == (gender[known] == 1)).mean()) if known.any() else float("nan")
    exact = sel & ~np.isnan(age)  # NaN: labelled by an age group, no true age for the MAE
    mae = float(np.abs(age_pred[exact] - age[exact]).mean()) if exact.any() else float("nan")
    return f"| {name} | {int(sel.sum())} | {acc:.4f} | {mae:.2f} |"


def main() -> int:
    p = ArgumentParser(description=__doc__)
    add_split_arguments(p)
    args = p.parse_args()
    import cv2
    import numpy as np

    from agegender.data.face import Face, align_face, load_detector, pick_main_face
    from agegender.data.image import ImageError, read_image
    from agegender.data.quality import MAX_YAW, MIN_SHARPNESS, MIN_WIDTH, face_quality, sharpness
    from agegender.model.loading import load_engine
    from agegender.model.photo_eval import _source, label_intervals
    from agegender.model.teacher import read_lst

    engine = load_engine(args.model, args.engine, threads=1)
    detector = load_detector(threads=1)
    native, flags, small, blurred, gender, age = [], [], {w: [] for w in WIDTHS}, {b: [] for b in BLURS}, [], []
    small_faces = {w: [] for w in WIDTHS}  # the detection scaled with the photo: what the flag sees
    sharp_blur = {b: [] for b in BLURS}
    for lst in args.lst:
        entries = read_lst(lst)
        intervals = label_intervals(lst, entries)
        entries = entries[:args.limit or None]
        for e in entries:
            try:
                rgb = read_image(_source(e.path, lst))
            except (ImageError, OSError):
                continue
            face = pick_main_face(detector.detect(rgb), rgb.shape)
            if face is None:
                continue
            crop = align_face(rgb, face.landmarks)
            q = face_quality(face, crop)
            native.append(crop)
            flags.append(q)
            width = float(face.box[2] - face.box[0])
            for w in WIDTHS:
                s = min(1.0, w / width)
                img = cv2.resize(rgb, (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s))),
                                 interpolation=cv2.INTER_AREA)
                small[w].append(align_face(img, face.landmarks * s))
                small_faces[w].append(Face(face.box * s, face.score, face.landmarks * s))
            for b in BLURS:
                sigma = b * width / 100
                img = cv2.GaussianBlur(rgb, (0, 0), sigma) if sigma > 0 else rgb
                c = align_face(img, face.landmarks)
                blurred[b].append(c)
                sharp_blur[b].append(sharpness(c))
            gender.append(e.gender)
            lo, hi = intervals[e.index]
            age.append(e.age if hi == lo else np.nan)  # a group's midpoint is no true age
    gender, age = np.array(gender, np.float64), np.array(age, np.float64)
    everyone = np.ones(len(age), bool)

    def labels(crops):
        return engine.predict_faces(np.stack(crops), 256, flip=True)

    groups = int(np.isnan(age).sum())
    print(f"model {engine.name}; {len(age)} faces of {', '.join(args.lst)}"
          + (f" ({groups} labelled by age group: in gender accuracy, not in the MAE)" if groups else "") + "\n")
    print("Smaller faces (box width W px, the photo scaled down):\n\n| width | faces | gender | MAE |\n|---|---|---|---|")
    print(_row("as packed", everyone, *labels(native), gender, age))
    for w in WIDTHS:
        crops = small[w]
        print(_row(f"{w} px (sharpness median {np.median([sharpness(c) for c in crops]):.0f})", everyone,
                   *labels(crops), gender, age))
    print("\nBlurred (Gaussian sigma per 100 px of face width):\n\n| blur | faces | gender | MAE |\n|---|---|---|---|")
    for b in BLURS:
        print(_row(f"sigma {b:g} (sharpness median {np.median(sharp_blur[b]):.0f})", everyone, *labels(blurred[b]),
                   gender, age))
    p_male, age_pred = labels(native)
    sharp = np.array([q.sharpness for q in flags])
    turn = np.abs(np.array([q.yaw for q in flags]))
    print("\nAs they are, by sharpness and by yaw:\n\n| faces | count | gender | MAE |\n|---|---|---|---|")
    for lo, hi in ((0, 10), (10, 20), (20, 40), (40, 80), (80, 160), (160, np.inf)):
        print(_row(f"sharpness {lo}-{hi}", (sharp >= lo) & (sharp < hi), p_male, age_pred, gender, age))
    for lo, hi in ((0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, np.inf)):
        print(_row(f"|yaw| {lo}-{hi}", (turn >= lo) & (turn < hi), p_male, age_pred, gender, age))
    flagged = np.array([bool(q.flags) for q in flags])
    print(f"\nFlagged as shipped (width < {MIN_WIDTH:g} px, sharpness < {MIN_SHARPNESS:g}, |yaw| > {MAX_YAW:g}):\n\n"
          "| faces | count | gender | MAE |\n|---|---|---|---|")
    print(_row("flagged", flagged, p_male, age_pred, gender, age))
    print(_row("not flagged", ~flagged, p_male, age_pred, gender, age))
    # the small and the blurred versions all carry their flags too: the flag's worth where it fires
    for w in (16, 20):
        sp, sa = labels(small[w])
        f = np.array([bool(face_quality(sf, c).flags) for sf, c in zip(small_faces[w], small[w])])
        print(_row(f"{w} px versions, flagged", f, sp, sa, gender, age))
    for b in (3.0, 4.0):
        bp, ba = labels(blurred[b])
        f = np.array([sharpness(c) < MIN_SHARPNESS for c in blurred[b]])
        print(_row(f"blur sigma {b:g}, flagged blurred", f, bp, ba, gender, age))
        print(_row(f"blur sigma {b:g}, not flagged", ~f, bp, ba, gender, age))
    return 0


if __name__ == "__main__":
    run_cli(main)
