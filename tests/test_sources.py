"""Label parsing of every source layout, on the miniature layouts (bad files included)."""
from __future__ import annotations

import os

import pytest

from agegender.data.sources import (FEMALE, MALE, UNKNOWN, parse_afad, parse_age, parse_agedb, parse_gender,
                           parse_list, parse_megaage, parse_utkface)


def _labels(parsed):
    return {os.path.basename(s.path): (s.gender, s.age) for s in parsed.samples}


def _reasons(parsed):
    return sorted(s.reason for s in parsed.skips)


def test_afad_labels_and_groups(demo_sources):
    p = parse_afad(demo_sources["afad"])
    assert _labels(p) == {"100-1.jpg": (MALE, 25), "100-2.jpg": (MALE, 26), "101-1.jpg": (FEMALE, 31),
                          "102-1.jpg": (MALE, 42), "103-1.jpg": (FEMALE, 42), "104-1.jpg": (FEMALE, 19),
                          "107-1.jpg": (MALE, 30), "108-1.jpg": (FEMALE, 30)}
    groups = {os.path.basename(s.path): s.group for s in p.samples}
    assert groups["100-1.jpg"] == groups["100-2.jpg"] != groups["101-1.jpg"]
    assert _reasons(p) == ["bad_age", "bad_gender"]


def test_megaage_has_no_gender_and_pairs_lines(demo_sources):
    p = parse_megaage(demo_sources["megaage"])
    labels = {os.path.relpath(s.path, demo_sources["megaage"]): (s.gender, s.age) for s in p.samples}
    assert labels == {"train/1.jpg": (UNKNOWN, 8), "train/2.jpg": (UNKNOWN, 23), "train/4.jpg": (UNKNOWN, 57),
                      "train/5.jpg": (UNKNOWN, 30), "train/6.jpg": (UNKNOWN, 12),
                      "test/1.jpg": (UNKNOWN, 35), "test/2.jpg": (UNKNOWN, 3)}
    assert _reasons(p) == ["bad_age"]
    assert all(s.split is None for s in p.samples)
    official = parse_megaage(demo_sources["megaage"], official_split=True)
    assert {os.path.basename(os.path.dirname(s.path)): s.split for s in official.samples} == {"train": "train",
                                                                                              "test": "val"}


def test_megaage_lists_of_unequal_length(tmp_path):
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "train_name.txt").write_text("a.jpg\nb.jpg\n")
    (tmp_path / "list" / "train_age.txt").write_text("20\n")
    p = parse_megaage(str(tmp_path))
    assert len(p.samples) == 1 and _reasons(p) == ["bad_list_line"]


def test_agedb_labels_and_name_groups(demo_sources):
    p = parse_agedb(demo_sources["agedb"])
    assert _labels(p)["0_AnnaSmith_35_f.jpg"] == (FEMALE, 35)
    assert _labels(p)["2_JohnDoe_60_m.jpg"] == (MALE, 60)
    groups = {os.path.basename(s.path): s.group for s in p.samples}
    assert groups["0_AnnaSmith_35_f.jpg"] == groups["1_AnnaSmith_41_f.jpg"] != groups["2_JohnDoe_60_m.jpg"]
    assert _reasons(p) == ["bad_name"]


def test_utkface_gender_is_converted_to_project_coding(demo_sources):
    p = parse_utkface(demo_sources["utkface"])
    labels = _labels(p)
    # UTKFace: 0 = male, 1 = female; the project: 1 = male, 0 = female.
    assert labels["26_0_0_20170116174525125.jpg.chip.jpg"] == (MALE, 26)
    assert labels["34_1_1_20170116174525126.jpg.chip.jpg"] == (FEMALE, 34)
    assert labels["105_0_0_20170116174525129.jpg.chip.jpg"] == (MALE, 105)  # ages above 100 are kept
    assert _reasons(p) == ["bad_gender", "bad_name"]


def test_list_file(demo_sources):
    p = parse_list(demo_sources["list"])
    base = os.path.dirname(demo_sources["list"])
    labels = {os.path.relpath(s.path, base): (s.gender, s.age) for s in p.samples}
    assert labels == {"img/p0.jpg": (MALE, 33), "img/p1.jpg": (FEMALE, 27), "img/p2.jpg": (UNKNOWN, 48),
                      "img/missing.jpg": (FEMALE, 20)}  # a missing file is caught when it is read
    assert _reasons(p) == ["bad_age", "bad_gender", "bad_list_line"]


@pytest.mark.parametrize("text,age", [("3", 3.0), (" 41.5 ", 41.5), ("0", 0.0), ("-1", None), ("x", None),
                                      ("nan", None), ("inf", None), ("", None)])
def test_parse_age(text, age):
    assert parse_age(text) == age


@pytest.mark.parametrize("text,gender", [("1", 1), ("M", 1), ("male", 1), ("0", 0), ("f", 0), ("Female", 0),
                                         ("-1", -1), ("2", None), ("x", None)])
def test_parse_gender(text, gender):
    assert parse_gender(text) == gender


@pytest.mark.parametrize("parse", [parse_afad, parse_agedb, parse_utkface, parse_megaage])
def test_missing_folder_raises(parse, tmp_path):
    with pytest.raises(FileNotFoundError):
        parse(str(tmp_path / "nope"))
