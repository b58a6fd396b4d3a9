"""Label parsing for each raw dataset layout: AFAD, MegaAge(-Asian), AgeDB, UTKFace, All-Age-Faces and list files.

Every parser returns the samples it could label and a list of skips (path, reason) for the inputs it
could not, so nothing is dropped silently. Gender is coded as the project codes it everywhere:
1 = male, 0 = female, -1 = unknown (MegaAge has no gender; we never invent one).
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field

import numpy as np

MALE, FEMALE, UNKNOWN = 1, 0, -1

# Skip reasons for label problems (image problems are in agegender/data/image.py).
BAD_NAME = "bad_name"
BAD_AGE = "bad_age"
BAD_GENDER = "bad_gender"
BAD_LINE = "bad_list_line"
UNLISTED = "unlisted"        # AAF: an image in no image-set list, so without a gender
DUPLICATE = "duplicate"      # AAF: an image listed twice

# The order sources get their `id2` in (lists follow, in the order given).
SOURCE_ORDER = ("afad", "megaage", "agedb", "utkface", "aaf", "fairface")

# UTKFace's race field, as its authors define it
UTKFACE_RACES = {"0": "White", "1": "Black", "2": "Asian", "3": "Indian", "4": "Others"}


@dataclass
class Sample:
    """One labelled input image."""

    path: str                 # file to read
    gender: int               # 1 male, 0 female, -1 unknown
    age: float                # years, as the source gives it (> 100 kept)
    group: str                # identity key: samples sharing it land in the same split
    split: str | None = None  # forced split ("train"/"val"), e.g. MegaAge's official lists
    age_lo: float | None = None  # an interval label (FairFace's age groups): the age lies in
    age_hi: float | None = None  # age_lo..age_hi (whole years, inclusive); None for an exact age
    race: str = ""               # the source's own race field, where it has one (kept for eval)

    def interval(self) -> tuple[float, float]:
        """(lo, hi) of the age label: (age, age) for an exact age."""
        return (self.age, self.age) if self.age_lo is None else (self.age_lo, self.age_hi)


@dataclass
class Skip:
    """One input that will not be packed, and why."""

    path: str
    reason: str
    detail: str = ""


@dataclass
class Parsed:
    """What a source folder or list file yielded."""

    name: str
    root: str
    samples: list[Sample] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)


def parse_age(text: str) -> float | None:
    """A non-negative finite age in years, or None."""
    try:
        age = float(text.strip())
    except ValueError:
        return None
    if not (age >= 0 and age < 1e4):  # rejects NaN, inf and negatives
        return None
    return age


def parse_gender(text: str) -> int | None:
    """1/0/-1 or m/f/male/female/unknown (any case) in the project's coding, or None."""
    t = text.strip().lower()
    table = {"1": MALE, "m": MALE, "male": MALE, "0": FEMALE, "f": FEMALE, "female": FEMALE,
             "-1": UNKNOWN, "u": UNKNOWN, "unknown": UNKNOWN, "": None}
    return table.get(t)


def _files_under(root: str) -> list[str]:
    """Every non-hidden file below root, sorted, so runs are deterministic."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
    return sorted(out)


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} folder not found: {path}")


def parse_afad(root: str) -> Parsed:
    """AFAD: root/<age>/<111|112>/<name>.jpg, 111 = male, 112 = female; <id>-<n>.jpg groups by <id>."""
    _require_dir(root, "AFAD")
    out = Parsed("afad", root)
    for path in _files_under(root):
        parts = os.path.relpath(path, root).split(os.sep)
        if len(parts) != 3:
            if len(parts) > 1:  # files at the root (README, lists) are not part of the layout
                out.skips.append(Skip(path, BAD_NAME, "expected <age>/<111|112>/<file>"))
            continue
        age = parse_age(parts[0]) if parts[0].isdigit() else None
        if age is None:
            out.skips.append(Skip(path, BAD_AGE, f"age folder {parts[0]!r}"))
            continue
        gender = {"111": MALE, "112": FEMALE}.get(parts[1])
        if gender is None:
            out.skips.append(Skip(path, BAD_GENDER, f"gender folder {parts[1]!r}"))
            continue
        stem = os.path.splitext(parts[2])[0]
        ident = stem.split("-")[0] if "-" in stem else stem
        out.samples.append(Sample(path, gender, age, group=f"afad:{ident}"))
    return out


def parse_megaage(root: str, official_split: bool = False) -> Parsed:
    """MegaAge(-Asian): root/{train,test}/<name>, with root/list/{train,test}_{name,age}.txt.

    Line i of a name list pairs with line i of its age list. There is no gender: recorded as -1.
    With `official_split`, the test list goes to val and the train list to train.
    """
    _require_dir(root, "MegaAge")
    out = Parsed("megaage", root)
    found = False
    for part in ("train", "test"):
        names_file = os.path.join(root, "list", f"{part}_name.txt")
        ages_file = os.path.join(root, "list", f"{part}_age.txt")
        if not (os.path.isfile(names_file) and os.path.isfile(ages_file)):
            continue
        found = True
        with open(names_file, encoding="utf-8", errors="replace") as f:
            names = [line.strip() for line in f]
        with open(ages_file, encoding="utf-8", errors="replace") as f:
            ages = [line.strip() for line in f]
        while names and not names[-1]:
            names.pop()
        while ages and not ages[-1]:
            ages.pop()
        for i in range(max(len(names), len(ages))):
            where = f"{names_file}:{i + 1}"
            if i >= len(names) or i >= len(ages) or not names[i]:
                out.skips.append(Skip(where, BAD_LINE, "name and age lists differ in length"))
                continue
            path = os.path.join(root, part, names[i])
            age = parse_age(ages[i])
            if age is None:
                out.skips.append(Skip(path, BAD_AGE, repr(ages[i])))
                continue
            split = ("val" if part == "test" else "train") if official_split else None
            out.samples.append(Sample(path, UNKNOWN, age, group=f"megaage:{part}/{names[i]}",
                                      split=split))
    if not found:
        raise FileNotFoundError(f"MegaAge lists not found: {root}/list/{{train,test}}_{{name,age}}.txt")
    return out


_AGEDB = re.compile(r"^(?P<id>\d+)_(?P<name>.+)_(?P<age>-?\d+)_(?P<gender>[mfMF])$")


def parse_agedb(root: str) -> Parsed:
    """AgeDB: <id>_<Name>_<age>_<m|f>.jpg; all images of one <Name> share a split."""
    _require_dir(root, "AgeDB")
    out = Parsed("agedb", root)
    for path in _files_under(root):
        m = _AGEDB.match(os.path.splitext(os.path.basename(path))[0])
        if not m:
            out.skips.append(Skip(path, BAD_NAME, "expected <id>_<Name>_<age>_<m|f>.jpg"))
            continue
        age = parse_age(m["age"])
        if age is None:
            out.skips.append(Skip(path, BAD_AGE, m["age"]))
            continue
        gender = MALE if m["gender"].lower() == "m" else FEMALE
        out.samples.append(Sample(path, gender, age, group=f"agedb:{m['name'].lower()}"))
    return out


_UTK = re.compile(r"^(?P<age>\d+)_(?P<gender>\d+)_(?P<race>\d+)_(?P<date>\d+)\.jpg(\.chip\.jpg)?$")


def parse_utkface(root: str) -> Parsed:
    """UTKFace: <age>_<gender>_<race>_<date>.jpg[.chip.jpg] with gender 0 = male, 1 = female.

    The gender is converted to the project's coding (1 = male). Names with a field missing or
    misspelt are skipped as bad_name: with a field gone, which one is gender cannot be known.
    """
    _require_dir(root, "UTKFace")
    out = Parsed("utkface", root)
    for path in _files_under(root):
        m = _UTK.match(os.path.basename(path))
        if not m:
            out.skips.append(Skip(path, BAD_NAME, "expected <age>_<gender>_<race>_<date>.jpg.chip.jpg"))
            continue
        gender = {"0": MALE, "1": FEMALE}.get(m["gender"])
        if gender is None:
            out.skips.append(Skip(path, BAD_GENDER, m["gender"]))
            continue
        out.samples.append(Sample(path, gender, float(m["age"]), group=f"utkface:{os.path.basename(path)}",
                                  race=UTKFACE_RACES.get(m["race"], "")))
    return out


AAF_IMAGES, AAF_SETS = "original images", "image sets"
AAF_LISTS = (("train", "train_.txt"), ("val", "val_.txt"))
_AAF = re.compile(r"^(?P<id>\d+)A(?P<age>\d+)\.jpg$", re.IGNORECASE)


def parse_aaf(root: str, official_split: bool = True) -> Parsed:
    """All-Age-Faces: root/original images/<id>A<age>.jpg, genders in root/image sets/{train_,val_}.txt.

    List lines are `<file> <gender>` with 0 = female, 1 = male (the project's coding already; mapped
    through `parse_gender`'s table all the same, so a `2` or `m?` is a bad_gender skip). The age is the
    file name's two digits. With `official_split` (the default), train_.txt goes to train and val_.txt to
    val; otherwise both lists are pooled for the seeded draw. Images in no list are skipped as `unlisted`;
    the authors do not say whether a person appears twice, so every image is its own group.
    """
    _require_dir(root, "All-Age-Faces")
    images = os.path.join(root, AAF_IMAGES)
    _require_dir(images, f"All-Age-Faces {AAF_IMAGES!r}")
    out = Parsed("aaf", root)
    seen: dict[str, str] = {}
    found = False
    for split, list_name in AAF_LISTS:
        list_file = os.path.join(root, AAF_SETS, list_name)
        if not os.path.isfile(list_file):
            continue
        found = True
        with open(list_file, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        for no, line in enumerate(lines, 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{list_file}:{no}"
            if len(fields) != 2:
                out.skips.append(Skip(where, BAD_LINE, line.strip()[:80]))
                continue
            name, code = fields
            path = os.path.join(images, name)
            if name in seen:
                out.skips.append(Skip(path, DUPLICATE, f"{where}: listed before in {seen[name]}"))
                continue
            seen[name] = where
            m = _AAF.match(name)
            if not m:
                out.skips.append(Skip(path, BAD_NAME, f"{where}: expected <id>A<age>.jpg"))
                continue
            gender = parse_gender(code) if code in ("0", "1") else None
            if gender is None:
                out.skips.append(Skip(path, BAD_GENDER, f"{where}: {code!r}"))
                continue
            out.samples.append(Sample(path, gender, float(int(m["age"])), group=f"aaf:{m['id']}",
                                      split=split if official_split else None))
    if not found:
        raise FileNotFoundError(f"All-Age-Faces lists not found: {root}/{AAF_SETS}/{{train_,val_}}.txt")
    listed = {os.path.join(images, n) for n in seen}
    out.skips.extend(Skip(path, UNLISTED, "in no image-set list, so its gender is unknown")
                     for path in _files_under(images) if path not in listed)
    return out


FAIRFACE_SETS = ("train", "val")
# "more than 70" has no upper end: its hi is the last age the 100 "age > k" classifiers can tell
OPEN_AGE_HI = 100.0
OPEN_GROUP_MIDPOINT_TOP = 80.0  # an open group ("more than 70") is taken to end here for its midpoint (75)
_GROUP = re.compile(r"^\s*(?P<lo>\d{1,3})\s*-\s*(?P<hi>\d{1,3})\s*$")
_MORE_THAN = re.compile(r"^\s*more than (?P<lo>\d{1,3})\s*$", re.IGNORECASE)


def parse_age_group(text: str) -> tuple[float, float] | None:
    """An age group as FairFace writes it ("10-19", "more than 70") -> (lo, hi) in whole years, inclusive;
    None for anything else, e.g. a group a spreadsheet turned into a date ("03-Sep")."""
    m = _GROUP.match(text)
    if m and int(m["lo"]) <= int(m["hi"]):
        return float(m["lo"]), float(m["hi"])
    m = _MORE_THAN.match(text)
    if m:
        return float(m["lo"]), OPEN_AGE_HI
    return None


def group_midpoint(lo: float, hi: float) -> float:
    """The age packed into a grouped record's [gender, age] label, for tools that read one age: the middle
    of the group (75 for "more than 70")."""
    return (lo + np.minimum(hi, OPEN_GROUP_MIDPOINT_TOP)) / 2.0


def parse_fairface(root: str, subset: str = "train") -> Parsed:
    """FairFace's official layout: root/{train,val}/<n>.jpg and root/fairface_label_{train,val}.csv
    (`file,age,gender,race[,service_test]`, age an age group, gender `Male`/`Female`).

    Each face gets its group as an interval label (`age_lo`..`age_hi`), the group's midpoint as its packed
    age, and its race. `subset` picks the CSV: `train` (split by --val-ratio, seeded) or `val` (the published
    benchmark split: all of it lands in val, so training never selects on it). Rows with a bad group
    (e.g. a date a spreadsheet made of "3-9"), gender or missing file are skipped with the reason.
    FairFace names no person, so every image is its own group.
    """
    if subset not in FAIRFACE_SETS:
        raise ValueError(f"FairFace subset must be one of {', '.join(FAIRFACE_SETS)}, got {subset!r}")
    _require_dir(root, "FairFace")
    csv_path = os.path.join(root, f"fairface_label_{subset}.csv")
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"FairFace labels not found: {csv_path}")
    out = Parsed("fairface" if subset == "train" else "fairface-val", root)
    with open(csv_path, encoding="utf-8-sig", errors="replace", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip().lower() for c in rows[0][:4]] != ["file", "age", "gender", "race"]:
        raise FileNotFoundError(f"{csv_path} does not start with the header file,age,gender,race")
    seen: set[str] = set()
    for no, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        where = f"{csv_path}:{no}"
        if len(row) < 4 or not row[0].strip():
            out.skips.append(Skip(where, BAD_LINE, ",".join(row)[:80]))
            continue
        name, group, gender_text, race = (c.strip() for c in row[:4])
        path = os.path.normpath(os.path.join(root, name))
        if name in seen:
            out.skips.append(Skip(path, DUPLICATE, f"{where}: listed twice"))
            continue
        seen.add(name)
        interval = parse_age_group(group)
        if interval is None:
            out.skips.append(Skip(path, BAD_AGE, f"{where}: age group {group!r}"))
            continue
        gender = {"male": MALE, "female": FEMALE}.get(gender_text.lower())
        if gender is None:
            out.skips.append(Skip(path, BAD_GENDER, f"{where}: {gender_text!r}"))
            continue
        lo, hi = interval
        out.samples.append(Sample(path, gender, group_midpoint(lo, hi), group=f"fairface:{subset}:{name}",
                                  split="val" if subset == "val" else None, age_lo=lo, age_hi=hi, race=race))
    return out


def parse_list(list_file: str) -> Parsed:
    """A `path,gender,age` list (path relative to the list file; gender 1/0/-1 or m/f).

    Blank lines, `#` comments and a `path,gender,age` header line are ignored.
    """
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"list file not found: {list_file}")
    base = os.path.dirname(os.path.abspath(list_file))
    out = Parsed(f"list:{os.path.basename(list_file)}", base)
    with open(list_file, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    for no, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{list_file}:{no}"
        fields = [x.strip() for x in text.rsplit(",", 2)]
        if len(fields) != 3 or not fields[0]:
            out.skips.append(Skip(where, BAD_LINE, text[:80]))
            continue
        if no == 1 and fields[1].lower() == "gender" and fields[2].lower() == "age":
            continue
        path = os.path.normpath(os.path.join(base, fields[0]))
        gender = parse_gender(fields[1])
        if gender is None:
            out.skips.append(Skip(path, BAD_GENDER, f"{where}: {fields[1]!r}"))
            continue
        age = parse_age(fields[2])
        if age is None:
            out.skips.append(Skip(path, BAD_AGE, f"{where}: {fields[2]!r}"))
            continue
        out.samples.append(Sample(path, gender, age, group=f"{out.name}:{fields[0]}"))
    return out
