"""The record contract of the packed `.rec/.idx/.lst` files, and atomic writing of them.

Each record: `IRHeader(flag=2, label=[gender, age] float32, id=<running index>, id2=<source id>)`
followed by a JPEG of the 112x112 aligned face in the source's RGB colours. Gender 1 = male,
0 = female, -1 = unknown; age in years as the source gave it. `.lst` lines are im2rec-style:
`index\tgender\tage\tsource-path`. Training, evaluation and the histogram all read this module.

Beside each split, `<split>-attrs.csv` (`index,race,age_lo,age_hi`, keyed by record index) keeps what the
two-float label cannot: the source's race field and, for grouped ages (FairFace), the interval the age lies
in (the record's age is then the group's midpoint). A split packed before it existed has no sidecar: its
ages are exact and its races unknown (`read_attrs`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from agegender.atomic import replace_with, temp_beside

LABEL_WIDTH = 2  # [gender, age]
GENDER, AGE = 0, 1  # positions in the label


def pack_record(jpeg: bytes, gender: float, age: float, index: int, source_id: int) -> bytes:
    """One record's bytes, per the contract above."""
    import mxnet as mx

    header = mx.recordio.IRHeader(LABEL_WIDTH, np.array([gender, age], dtype=np.float32),
                                  int(index), int(source_id))
    return mx.recordio.pack(header, jpeg)


@dataclass
class Record:
    """A record read back."""

    index: int
    source_id: int
    gender: int
    age: float
    jpeg: bytes


def unpack_record(raw: bytes) -> Record:
    """Parse a record's bytes; raises ValueError when its label is not [gender, age]."""
    import mxnet as mx

    header, jpeg = mx.recordio.unpack(raw)
    label = np.atleast_1d(np.asarray(header.label, dtype=np.float32))
    if header.flag != LABEL_WIDTH or label.size != LABEL_WIDTH:
        raise ValueError(f"record {header.id} has label width {label.size}, expected {LABEL_WIDTH} "
                         "([gender, age]); was it packed by create_dataset.py?")
    if label[GENDER] not in (-1, 0, 1):  # NaN included
        raise ValueError(f"record {header.id} has gender {label[GENDER]:g}, not -1, 0 or 1 (unknown, female, male)")
    return Record(int(header.id), int(header.id2), int(label[GENDER]), float(label[AGE]), jpeg)


def iter_records(rec_path: str, with_images: bool = True):
    """Yield every Record of a `.rec` file in file order (sequential read: no .idx needed)."""
    import mxnet as mx

    if not os.path.isfile(rec_path):
        raise FileNotFoundError(f"record file not found: {rec_path}")
    reader = mx.recordio.MXRecordIO(rec_path, "r")
    try:
        while True:
            raw = reader.read()
            if raw is None:
                break
            rec = unpack_record(raw)
            if not with_images:
                rec.jpeg = b""
            yield rec
    finally:
        reader.close()


def split_paths(out_dir: str, split: str) -> dict[str, str]:
    """The .rec/.idx/.lst paths of one split, and its attributes sidecar."""
    paths = {ext: os.path.join(out_dir, f"{split}.{ext}") for ext in ("rec", "idx", "lst")}
    paths["attrs"] = os.path.join(out_dir, f"{split}-attrs.csv")
    return paths


ATTRS_HEADER = "index,race,age_lo,age_hi"


@dataclass
class Attrs:
    """A split's sidecar read back, one entry per record index (see the module's docstring)."""

    race: list[str]
    age_lo: np.ndarray  # float64; equal to the record's age for an exact age
    age_hi: np.ndarray

    @property
    def grouped(self) -> np.ndarray:
        """Whether each record's age is an interval (a group) rather than an exact age."""
        return self.age_hi > self.age_lo


def attrs_path(rec_path: str) -> str:
    """The sidecar of a split's `.rec` (`val.rec` -> `val-attrs.csv`)."""
    base, _ = os.path.splitext(rec_path)
    return base + "-attrs.csv"


def read_attrs(rec_path: str, ages: np.ndarray) -> Attrs:
    """The sidecar of `rec_path` for its records' `ages` (in index order); without one, exact ages and no
    races. Raises ValueError when the sidecar does not match the split."""
    import csv

    n = len(ages)
    race = [""] * n
    lo = np.asarray(ages, np.float64).copy()
    hi = lo.copy()
    path = attrs_path(rec_path)
    if not os.path.isfile(path):
        return Attrs(race, lo, hi)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); repack it") from None
    if not rows or ",".join(rows[0]) != ATTRS_HEADER or len(rows) - 1 != n:
        raise ValueError(f"{path} does not match {rec_path} ({len(rows) - 1} rows for {n} records); repack it")
    seen = set()
    for row in rows[1:]:
        try:
            i = int(row[0])
            if not 0 <= i < n or i in seen:  # a negative index would count from the end, a repeat hide a record
                raise ValueError
            race[i], lo[i], hi[i] = row[1], float(row[2]), float(row[3])
        except (ValueError, IndexError):
            raise ValueError(f"{path}: bad row {row!r} (each record index 0..{n - 1} once); repack it") from None
        seen.add(i)
    return Attrs(race, lo, hi)


class SplitWriter:
    """Writes one split's .rec/.idx/.lst under temporary names; `commit()` renames them into place.

    An interrupted run (exception, Ctrl-C, kill) never replaces a good `train.rec` with a partial one:
    `abort()` removes the temporary files (created exclusively, `.NAME.XXXX.tmp`).
    """

    def __init__(self, out_dir: str, split: str):
        import mxnet as mx

        self.paths = split_paths(out_dir, split)
        self.count = 0
        self._tmp = {k: temp_beside(p) for k, p in self.paths.items()}
        self._rec = mx.recordio.MXIndexedRecordIO(self._tmp["idx"], self._tmp["rec"], "w")
        self._lst = open(self._tmp["lst"], "w", encoding="utf-8")
        self._attrs = open(self._tmp["attrs"], "w", encoding="utf-8", newline="")
        self._attrs.write(ATTRS_HEADER + "\n")

    def write(self, jpeg: bytes, gender: int, age: float, source_id: int, source_path: str,
              race: str = "", interval: tuple[float, float] | None = None) -> int:
        """Append one face (`interval`: its age group's (lo, hi), None for an exact age); returns its index."""
        import csv

        index = self.count
        self._rec.write_idx(index, pack_record(jpeg, gender, age, index, source_id))
        self._lst.write(f"{index}\t{gender:d}\t{age:g}\t{source_path}\n")
        lo, hi = interval or (age, age)
        csv.writer(self._attrs, lineterminator="\n").writerow([index, race, f"{lo:g}", f"{hi:g}"])
        self.count += 1
        return index

    def _close(self) -> None:
        if self._lst is not None:
            self._rec.close()
            self._lst.close()
            self._attrs.close()
            self._lst = None

    def commit(self) -> None:
        """Close and rename the temporary files into place."""
        self._close()
        for key, path in self.paths.items():
            replace_with(self._tmp[key], path)

    def abort(self) -> None:
        """Close and delete the temporary files; the files in place stay untouched."""
        self._close()
        for tmp in self._tmp.values():
            if os.path.exists(tmp):
                os.remove(tmp)
