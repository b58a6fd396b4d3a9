"""show_age_distribution.py on a packed .rec, its .lst and a path,gender,age list."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tests.conftest import run_script
from agegender.data.distribution import load_labels, summarize


@pytest.fixture(scope="module")
def packed(demo_sources, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("packed"))
    run_script("create_dataset.py", "--agedb", demo_sources["agedb"], "--utkface", demo_sources["utkface"],
               "--megaage", demo_sources["megaage"], "--val-ratio", "0", "--output", out, check=True)
    return out


def test_rec_and_lst_give_the_same_labels_with_sources(packed):
    rec = load_labels(os.path.join(packed, "train.rec"))
    lst = load_labels(os.path.join(packed, "train.lst"))
    assert rec.age.tolist() == lst.age.tolist() and rec.gender.tolist() == lst.gender.tolist()
    assert rec.source == lst.source
    assert sorted(set(rec.source)) == ["agedb", "megaage", "utkface"]
    agedb = rec.age[np.asarray(rec.source) == "agedb"]
    assert sorted(agedb.tolist()) == [28, 35, 41, 51, 60, 62]


def test_summary_numbers(packed):
    labels = load_labels(os.path.join(packed, "train.rec"))
    text = summarize(labels)
    n = len(labels.age)
    assert f"count: {n}" in text
    assert f"age mean: {labels.age.mean():.2f}" in text
    assert f"age median: {np.median(labels.age):.1f}" in text
    males = int((labels.gender == 1).sum())
    assert f"male {males} ({males / n:.1%})" in text


def test_cli_writes_png_for_rec_and_list(packed, demo_sources, tmp_path):
    for src in (os.path.join(packed, "train.rec"), demo_sources["list"]):
        png = tmp_path / (os.path.basename(src) + ".png")
        proc = run_script("show_age_distribution.py", src, "--output", str(png), check=True)
        assert "count:" in proc.stdout
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "count: 4" in run_script("show_age_distribution.py", demo_sources["list"], "--output",
                                    str(tmp_path / "l.png")).stdout


def test_cli_errors(tmp_path):
    proc = run_script("show_age_distribution.py", str(tmp_path / "none.rec"))
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.lst"
    bad.write_text("just one field\n")
    proc = run_script("show_age_distribution.py", str(bad), "--output", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "im2rec" in proc.stderr
