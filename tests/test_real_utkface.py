"""Packing real UTKFace faces from ../shared with RetinaFace alignment (skipped when absent)."""
from __future__ import annotations

import csv
import os
import re


from tests.conftest import run_script, shared_path


def test_pack_520_real_utkface_faces(tmp_path):
    src = shared_path("data", "utkface")
    names = sorted(os.listdir(src))[::40][:520]  # spread over the whole age range
    sub = tmp_path / "utk"
    sub.mkdir()
    for n in names:
        os.symlink(os.path.join(src, n), sub / n)
    out = tmp_path / "out"
    proc = run_script("create_dataset.py", "--utkface", str(sub), "--output", str(out), "--val-ratio", "0.05",
                      check=True)

    import mxnet as mx
    from agegender.data.recordio import iter_records

    rx = re.compile(r"^(\d+)_([01])_\d+_\d+\.jpg\.chip\.jpg$")
    expected = {n: (1 - int(m[2]), float(m[1])) for n in names if (m := rx.match(n))}  # 0=male -> 1
    packed = {}
    for split in ("train", "val"):
        with open(out / f"{split}.lst") as f:
            paths = [line.rstrip("\n").split("\t")[3] for line in f]
        for path, rec in zip(paths, iter_records(str(out / f"{split}.rec"))):
            packed[os.path.basename(path)] = (rec.gender, rec.age)
            assert mx.image.imdecode(rec.jpeg).shape == (112, 112, 3)
    with open(out / "skipped.csv") as f:
        skipped = {os.path.basename(r["path"]): r["reason"] for r in csv.DictReader(f)}
    assert set(packed) | set(skipped) == set(names)
    assert len(packed) >= 500
    for name, label in packed.items():
        assert label == expected[name], name
    for name, reason in skipped.items():  # only malformed names or undetectable faces, each with its reason
        assert reason in ("bad_name", "no_face"), (name, reason)
    # UTKFace's chips are tighter than the ArcFace crop: about a third of every aligned crop is border
    import json
    inside = json.load(open(out / "meta.json"))["sources"][0]["crop_in_photo"]
    assert 0.55 < inside < 0.8, inside
    assert f"{inside:.0%}" in proc.stdout and "black border" in proc.stdout
