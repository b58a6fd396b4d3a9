"""The main face of every source photo of a packed split, through the inference path (detected, the main
face picked as create_dataset.py packs it, aligned as infer.py aligns): what tools/ensemble_report.py and
tools/calibrate.py measure on, with our raw gender logits and the teacher's P(male) per face.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from agegender.data.face import align_face, pick_main_face, teacher_chip
from agegender.data.image import ImageError, read_image
from agegender.data.quality import face_quality
from agegender.model.age import age_probs, decode
from agegender.model.engine import Engine
from agegender.model.ensemble import TeacherGender
from agegender.model.teacher import read_lst


DEFAULT_LISTS = ["dataset/utkface/val.lst", "dataset/aaf/val.lst"]


def add_split_arguments(parser) -> None:
    """The flags the report tools share: --model, --engine, --lst (val splits), --limit."""
    from agegender.cli import NON_NEGATIVE_INT

    parser.add_argument("--model", default=None, help="a bundled model's name, a .onnx file or PREFIX,EPOCH "
                        "(default: the bundled model `default`)")
    parser.add_argument("--engine", choices=("onnx", "mxnet"), default=None,
                        help="what runs the net (default: as infer.py picks)")
    parser.add_argument("--lst", nargs="+", default=DEFAULT_LISTS, help="packed val splits' .lst files")
    parser.add_argument("--limit", type=NON_NEGATIVE_INT, default=0, help="only the first N photos of each list")


@dataclass
class SplitFaces:
    """Per face: labels, our flip-averaged gender logit (male minus female, before any temperature), our
    P(male) and age as the engine decodes them, the teacher's P(male); and seconds per stage."""

    name: str
    index: np.ndarray      # record index in the .lst
    gender: np.ndarray
    age: np.ndarray
    logit: np.ndarray
    p_ours: np.ndarray
    age_pred: np.ndarray
    p_teacher: np.ndarray
    age_probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 100)))  # P(age > k) per face
    age_lo: np.ndarray = field(default_factory=lambda: np.zeros(0))     # the labelled age lies in age_lo..age_hi:
    age_hi: np.ndarray = field(default_factory=lambda: np.zeros(0))     # a group (FairFace), else both are `age`
    width: np.ndarray = field(default_factory=lambda: np.zeros(0))      # box width, px (agegender.data.quality)
    sharpness: np.ndarray = field(default_factory=lambda: np.zeros(0))  # of the aligned crop
    yaw: np.ndarray = field(default_factory=lambda: np.zeros(0))        # of the landmarks
    photos: int = 0
    no_face: int = 0       # photos where the detector found no face (left out)
    unreadable: int = 0    # photos that could not be read (left out)
    seconds: dict = field(default_factory=dict)

    @property
    def grouped(self) -> np.ndarray:
        """Faces labelled by an age group: `age` is then the group's midpoint, not a true age."""
        return self.age_hi > self.age_lo


def label_intervals(lst_path: str, entries: list) -> dict[int, tuple[float, float]]:
    """Record index -> the labelled age lo..hi of a split's `.lst` entries (all of them): from the split's
    `-attrs.csv` sidecar (agegender.data.recordio.read_attrs), where FairFace's age groups are; lo == hi ==
    the .lst age for an exact age, and for every entry without a sidecar. A sidecar that does not match the
    list is a one-line error."""
    from agegender.data.recordio import attrs_path, read_attrs
    from agegender.errors import UserError

    if not os.path.isfile(attrs_path(lst_path)):
        return {e.index: (e.age, e.age) for e in entries}
    ages = {e.index: e.age for e in entries}
    if sorted(ages) != list(range(len(entries))):  # the sidecar is read by record index
        raise UserError(f"{lst_path}: record indices are not 0..{len(entries) - 1} once each, as its sidecar "
                        f"{attrs_path(lst_path)} needs; repack the split")
    try:
        attrs = read_attrs(lst_path, np.array([ages[i] for i in range(len(entries))], np.float64))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return {i: (float(attrs.age_lo[i]), float(attrs.age_hi[i])) for i in range(len(entries))}


def _source(path: str, lst_path: str) -> str:
    """A .lst path as create_dataset.py wrote it: relative to where it ran, else to the list's folder."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(os.path.dirname(lst_path), path)


def split_faces(lst_path: str, detector, engine: Engine, teacher: TeacherGender, flip: bool | None = None,
                age_decode: str = "vote", limit: int = 0, name: str = "") -> SplitFaces:
    """Run the inference path over the source photos of a split's `.lst` (the first `limit`, 0 = all);
    `flip` None: the model's own default, as infer.py."""
    flip = engine.resolve_flip(flip)
    entries = read_lst(lst_path)
    intervals = label_intervals(lst_path, entries)  # over the whole split, as its sidecar is
    if limit > 0:
        entries = entries[:limit]
    crops, chips, gender, age, index, measures, interval = [], [], [], [], [], [], []
    out = SplitFaces(name or lst_path, *(np.zeros(0) for _ in range(7)), photos=len(entries))
    t = {"detect": 0.0, "align": 0.0, "teacher_align": 0.0}
    for e in entries:
        try:
            rgb = read_image(_source(e.path, lst_path))
        except (ImageError, OSError):
            out.unreadable += 1
            continue
        t0 = time.perf_counter()
        face = pick_main_face(detector.detect(rgb), rgb.shape)
        t1 = time.perf_counter()
        if face is None:
            out.no_face += 1
            continue
        crops.append(align_face(rgb, face.landmarks))
        t2 = time.perf_counter()
        measures.append(face_quality(face, crops[-1])[:3])
        chips.append(teacher_chip(rgb, face.landmarks))
        t3 = time.perf_counter()
        t["detect"] += t1 - t0
        t["align"] += t2 - t1
        t["teacher_align"] += t3 - t2
        index.append(e.index)
        gender.append(e.gender)
        age.append(e.age)
        interval.append(intervals[e.index])
    if crops:
        batch = np.stack(crops)
        t0 = time.perf_counter()
        outs = np.concatenate([engine.outputs(batch[i:i + 256].transpose(0, 3, 1, 2), flip)
                               for i in range(0, len(batch), 256)])
        p_ours, age_pred = decode(outs, age_decode, engine.gender_temperature)
        t1 = time.perf_counter()
        p_teacher = teacher.p_male(np.stack(chips))
        t["net"], t["teacher_net"] = t1 - t0, time.perf_counter() - t1
        out.logit = (outs[:, 1] - outs[:, 0]).astype(np.float64)
        out.p_ours, out.age_pred, out.p_teacher = p_ours, age_pred, p_teacher
        out.age_probs = age_probs(outs)
        out.width, out.sharpness, out.yaw = (np.array(m, np.float64) for m in zip(*measures))
    out.index = np.array(index, np.int64)
    out.gender, out.age, out.seconds = np.array(gender, np.float64), np.array(age, np.float64), t
    out.age_lo, out.age_hi = (np.array(v, np.float64).reshape(-1) for v in (zip(*interval) if interval else ([], [])))
    return out


__all__ = ["SplitFaces", "split_faces", "label_intervals", "add_split_arguments", "DEFAULT_LISTS"]
