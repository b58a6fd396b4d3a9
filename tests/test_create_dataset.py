"""create_dataset.py end to end on the miniature layouts: labels, skips, splits, determinism,
atomic output, colours and the error cases."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from tests.conftest import run_script
from agegender.data.demo import synthetic_face_image
from agegender.data.image import encode_jpeg
from agegender.data.recordio import iter_records


def _all_sources(demo: dict[str, str]) -> list[str]:
    return ["--afad", demo["afad"], "--megaage", demo["megaage"], "--agedb", demo["agedb"],
            "--utkface", demo["utkface"], "--list", demo["list"]]


def _read(out, split):
    return list(iter_records(os.path.join(out, f"{split}.rec")))


@pytest.fixture(scope="module")
def packed(packed_demo):
    return packed_demo


def test_every_good_face_is_packed_with_its_label(packed, demo_sources):
    out, proc = packed
    records = _read(out, "train") + _read(out, "val")
    meta = json.load(open(os.path.join(out, "meta.json")))
    names = {s["id"]: s["name"] for s in meta["sources"]}
    got = {}
    for split in ("train", "val"):
        with open(os.path.join(out, f"{split}.lst")) as f:
            lst = [line.rstrip("\n").split("\t") for line in f]
        recs = _read(out, split)
        assert [int(r[0]) for r in lst] == [r.index for r in recs] == list(range(len(recs)))
        for line, rec in zip(lst, recs):
            assert (int(line[1]), float(line[2])) == (rec.gender, rec.age)
            got[os.path.basename(line[3])] = (names[rec.source_id], rec.gender, rec.age)
    assert len(records) == 25
    assert got["100-1.jpg"] == ("afad", 1, 25)
    assert got["101-1.jpg"] == ("afad", 0, 31)
    assert got["0_AnnaSmith_35_f.jpg"] == ("agedb", 0, 35)
    assert got["26_0_0_20170116174525125.jpg.chip.jpg"] == ("utkface", 1, 26)  # UTKFace 0 = male -> 1
    assert got["34_1_1_20170116174525126.jpg.chip.jpg"] == ("utkface", 0, 34)
    assert got["105_0_0_20170116174525129.jpg.chip.jpg"][2] == 105
    assert got["p2.jpg"] == ("list:labels.csv", -1, 48)
    assert {v[1] for k, v in got.items() if v[0] == "megaage"} == {-1}
    import mxnet as mx
    for rec in records:
        assert mx.image.imdecode(rec.jpeg).shape == (112, 112, 3)
    assert "total" in proc.stdout and "skipped" in proc.stdout and "in photo" in proc.stdout


def test_every_bad_input_is_reported_with_its_reason(packed):
    out, _ = packed
    with open(os.path.join(out, "skipped.csv")) as f:
        rows = list(csv.DictReader(f))
    reasons = sorted(r["reason"] for r in rows)
    assert reasons == sorted(["bad_age", "bad_gender", "empty_file", "truncated",            # afad
                              "bad_age", "not_image", "missing_file",                        # megaage
                              "bad_name",                                                    # agedb
                              "bad_name", "bad_gender",                                      # utkface
                              "bad_gender", "bad_age", "bad_list_line", "missing_file"])     # list
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert sum(meta["skipped"].values()) == len(rows)
    for s in meta["sources"]:
        assert s["found"] == s["train"] + s["val"] + sum(s["skipped"].values())
    assert meta["splits"]["train"]["count"] + meta["splits"]["val"]["count"] == 25
    assert meta["face"]["align"] == "retinaface" and meta["seed"] == 0
    assert meta["versions"]["mxnet"] == "1.9.1"
    assert all(0 < s["crop_in_photo"] <= 1 for s in meta["sources"] if s["train"] + s["val"])


def test_identity_groups_stay_in_one_split(packed):
    out, _ = packed
    where = {}
    for split in ("train", "val"):
        with open(os.path.join(out, f"{split}.lst")) as f:
            for line in f:
                where[os.path.basename(line.rstrip().split("\t")[3])] = split
    assert where["100-1.jpg"] == where["100-2.jpg"]                       # AFAD <id>-<n>
    assert where["0_AnnaSmith_35_f.jpg"] == where["1_AnnaSmith_41_f.jpg"]  # AgeDB <Name>
    assert where["2_JohnDoe_60_m.jpg"] == where["3_JohnDoe_62_m.jpg"]


def test_output_is_byte_identical_for_the_same_inputs_and_seed(packed, demo_sources, tmp_path):
    out, _ = packed
    run_script("create_dataset.py", *_all_sources(demo_sources), "--output", str(tmp_path), "--val-ratio", "0.3",
               "--workers", "1", check=True)
    for name in ("train.idx", "train.lst", "val.idx", "val.lst", "train.rec", "val.rec"):
        assert open(os.path.join(out, name), "rb").read() == open(tmp_path / name, "rb").read(), name


def test_megaage_official_split_and_val_ratio_zero(demo_sources, tmp_path):
    run_script("create_dataset.py", "--megaage", demo_sources["megaage"], "--megaage-split", "official",
               "--val-ratio", "0", "--output", str(tmp_path / "official"), check=True)
    with open(tmp_path / "official" / "val.lst") as f:
        assert sorted(os.path.relpath(line.split("\t")[3].strip(), demo_sources["megaage"]) for line in f) == \
            ["test/1.jpg", "test/2.jpg"]
    run_script("create_dataset.py", "--agedb", demo_sources["agedb"], "--val-ratio", "0",
               "--output", str(tmp_path / "all"), check=True)
    assert len(_read(str(tmp_path / "all"), "train")) == 6
    assert not os.path.exists(tmp_path / "all" / "val.rec")


def _card_list(tmp_path) -> str:
    (tmp_path / "card.png").write_bytes(encode_jpeg(synthetic_face_image(200)))
    lst = tmp_path / "cards.csv"
    lst.write_text("card.png,1,20\n")
    return str(lst)


def test_stored_faces_decode_to_the_source_rgb_colours(tmp_path):
    import mxnet as mx

    out = tmp_path / "out"
    run_script("create_dataset.py", "--list", _card_list(tmp_path), "--align", "none", "--val-ratio", "0",
               "--output", str(out), check=True)
    rec = _read(str(out), "train")[0]
    img = mx.image.imdecode(rec.jpeg).asnumpy()  # RGB
    expected = {(25, 25): (255, 0, 0), (25, 85): (0, 255, 0), (85, 25): (0, 0, 255), (85, 85): (255, 255, 255)}
    for (y, x), colour in expected.items():
        assert np.abs(img[y, x].astype(int) - colour).max() < 16, ((y, x), img[y, x])
    it = mx.io.ImageRecordIter(path_imgrec=str(out / "train.rec"), data_shape=(3, 112, 112), label_width=2,
                               batch_size=1, round_batch=False)
    batch = it.next()
    data = batch.data[0].asnumpy()[0]  # (3, H, W), channel 0 = R
    for (y, x), colour in expected.items():
        assert np.abs(data[:, y, x] - colour).max() < 16, ((y, x), data[:, y, x])
    assert batch.label[0].asnumpy().tolist() == [[1.0, 20.0]]


def test_no_face_is_skipped_or_centre_cropped(tmp_path):
    lst = _card_list(tmp_path)
    proc = run_script("create_dataset.py", "--list", lst, "--output", str(tmp_path / "skip"))
    last = proc.stderr.strip().splitlines()[-1]  # after the progress bar: one error line
    assert proc.returncode == 2 and last.startswith("error: nothing packed") and "no_face 1" in last
    run_script("create_dataset.py", "--list", lst, "--no-face", "center", "--val-ratio", "0",
               "--output", str(tmp_path / "center"), check=True)
    assert len(_read(str(tmp_path / "center"), "train")) == 1


def test_interrupted_run_keeps_the_previous_output(demo_sources, tmp_path, monkeypatch):
    from agegender.data import pack
    from agegender.data.pack import FaceSettings, pack_dataset
    from agegender.data.sources import parse_agedb

    out = str(tmp_path)
    pack_dataset([parse_agedb(demo_sources["agedb"])], out, FaceSettings(), val_ratio=0.0, workers=1, progress=False)
    before = {n: open(os.path.join(out, n), "rb").read() for n in ("train.rec", "train.idx", "train.lst")}
    calls = {"n": 0}
    real_write = pack.SplitWriter.write

    def failing_write(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(pack.SplitWriter, "write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        pack_dataset([parse_agedb(demo_sources["agedb"])], out, FaceSettings(align="none"), val_ratio=0.0,
                     workers=1, progress=False)
    assert {n: open(os.path.join(out, n), "rb").read() for n in before} == before
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


@pytest.mark.parametrize("args,message", [
    (["--afad", "/nonexistent/afad"], "AFAD folder not found"),
    ([], "no source given"),
    (["--list", "/nonexistent/list.csv"], "list file not found"),
    (["--utkface", "{src}"], "nothing to pack"),
    (["--utkface", "{src}", "--image-size", "100"], "--image-size"),
    (["--utkface", "{src}", "--val-ratio", "1"], "--val-ratio"),
])
def test_user_errors_are_one_line_with_exit_code_2(args, message, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.txt").write_text("no labelled face in here")
    args = [a.format(src=tmp_path / "src") for a in args]
    proc = run_script("create_dataset.py", *args, "--output", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
