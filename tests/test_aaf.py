"""All-Age-Faces read natively: ages from file names, genders from the image-set lists (0 = female,
1 = male), the official split, and every bad line or file reported, never dropped."""
from __future__ import annotations

import csv
import os

import pytest

from tests.conftest import SHARED, run_script
from agegender.data.sources import FEMALE, MALE, parse_aaf


def _by_name(parsed):
    return {os.path.basename(s.path): s for s in parsed.samples}


def test_labels_split_and_skips(demo_sources):
    p = parse_aaf(demo_sources["aaf"])
    got = {k: (s.gender, s.age, s.split) for k, s in _by_name(p).items()}
    assert got == {"00012A05.jpg": (FEMALE, 5, "train"), "00340A27.jpg": (FEMALE, 27, "train"),
                   "07390A08.jpg": (MALE, 8, "train"), "08001A45.jpg": (MALE, 45, "train"),
                   "00700A21.jpg": (FEMALE, 21, "train"), "00800A30.jpg": (FEMALE, 30, "train"),
                   "09100A63.jpg": (MALE, 63, "val")}
    reasons = sorted((s.reason, os.path.basename(s.path)) for s in p.skips)
    assert reasons == [("bad_gender", "00500A33.jpg"), ("bad_list_line", "train_.txt:9"),
                       ("bad_name", "photo.jpg"), ("duplicate", "00340A27.jpg"), ("unlisted", "00600A19.jpg")]


def test_random_split_pools_both_lists(demo_sources):
    p = parse_aaf(demo_sources["aaf"], official_split=False)
    assert {s.split for s in p.samples} == {None}
    assert len(p.samples) == 7


def test_missing_lists_are_one_error(tmp_path):
    os.makedirs(tmp_path / "original images")
    with pytest.raises(FileNotFoundError, match="image sets"):
        parse_aaf(str(tmp_path))
    proc = run_script("create_dataset.py", "--aaf", str(tmp_path), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "All-Age-Faces lists not found" in proc.stderr


def test_create_dataset_packs_the_official_split(demo_sources, tmp_path):
    out = tmp_path / "aaf"
    proc = run_script("create_dataset.py", "--aaf", demo_sources["aaf"], "--output", str(out), "--workers", "1",
                      "--no-progress", check=True)
    lst = {}
    for split in ("train", "val"):
        with open(out / f"{split}.lst") as f:
            for line in f:
                idx, gender, age, path = line.rstrip("\n").split("\t")
                lst[os.path.basename(path)] = (split, int(float(gender)), float(age))
    assert lst["09100A63.jpg"] == ("val", 1, 63.0)
    assert lst["07390A08.jpg"] == ("train", 1, 8.0)          # a boy: 1 = male, as the list says
    assert lst["00012A05.jpg"] == ("train", 0, 5.0)
    with open(out / "skipped.csv", newline="") as f:
        skipped = {os.path.basename(r["path"]): r["reason"] for r in csv.DictReader(f)}
    assert skipped["00700A21.jpg"] == "truncated" and skipped["00800A30.jpg"] == "missing_file"
    assert skipped["00600A19.jpg"] == "unlisted"
    assert "aaf" in proc.stdout


AAF = os.path.join(SHARED, "data", "aaf")


@pytest.mark.skipif(not os.path.isdir(AAF), reason="../shared/data/aaf (All-Age-Faces) is not here")
def test_real_aaf_lists_follow_the_id_ranges():
    """The real lists: images 00000-07380 are female, 07381-13321 male (../shared/README.md)."""
    p = parse_aaf(AAF)
    assert len(p.samples) > 11000 and not p.skips
    for s in p.samples:
        ident = int(os.path.basename(s.path)[:5])
        assert s.gender == (MALE if ident >= 7381 else FEMALE), s.path
    assert sum(s.split == "val" for s in p.samples) == 1685
