"""The one output schema (agegender/schema/face.schema.json): every producer -- infer.py --json/--jsonl/--csv,
FaceResult.to_dict() -- writes it, the old output is kept face for face, and JSON on stdout stays parseable."""
from __future__ import annotations

import csv
import io
import json
import os
import re

import numpy as np
import pytest

from conftest import ROOT, run_script

from agegender.data.demo import wheel_image
from agegender.schema import CSV_COLUMNS, FACE_FIELDS, KINDS, load_schema, validate

LEGACY = os.path.join(ROOT, "tests", "data", "legacy_bundled_faces.json")


def test_schema_is_a_valid_json_schema_with_every_kind():
    import jsonschema

    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(KINDS) <= set(schema["$defs"])
    assert tuple(schema["$defs"]["face"]["required"]) == FACE_FIELDS


GOOD = {"face": 1, "box": [1, 2, 30, 40], "score": 0.99, "landmarks": [[1.0, 2.0]] * 5, "gender": "female",
        "p_male": 0.2, "age": 31.5, "age_low": 25, "age_high": 40, "flags": []}


@pytest.mark.parametrize("change, why", [
    ({"gender_prob": 0.8}, "gender_prob"),                 # the old field name is not the schema's
    ({"gender": "male"}, "disagrees"),                     # gender must follow p_male
    ({"gender": None, "p_male": None, "age": None, "age_low": None, "age_high": None}, "without an error"),
    ({"box": [1, 2, 3]}, "box"),
    ({"p_male": 1.5}, "p_male"),
])
def test_validate_rejects_what_a_consumer_would_trip_on(change, why):
    validate(GOOD)
    with pytest.raises(ValueError, match=why):
        validate({**GOOD, **change})


def test_a_labelled_track_never_has_a_null_gender():
    track = {"id": 1, "labelled": 2, "settled": False, "gender": None, "p_male": 0.7, "age": 30.0, "age_low": 24,
             "age_high": 37}
    with pytest.raises(ValueError, match="without a gender"):
        validate(track, "track")
    validate({**track, "gender": "male"}, "track")
    validate({**track, "settled": True, "gender": "female"}, "track")  # hysteresis may hold the shown gender


@pytest.fixture(scope="module")
def bundled_json() -> list[dict]:
    """infer.py --json with the bundled model on the insightface wheel's images."""
    folder = os.path.dirname(wheel_image("t1.jpg"))
    proc = run_script("infer.py", "--image", folder, "--json", check=True)
    return json.loads(proc.stdout)


def test_new_output_matches_the_old_face_for_face(bundled_json):
    """Same RGB input, same faces as before the schema; while the bundled model is the one that made the old
    output, the same labels and numbers too (gender_prob = max(p_male, 1 - p_male))."""
    import hashlib

    from agegender.model.engine import BUNDLED_ONNX

    with open(LEGACY, encoding="utf-8") as f:
        legacy = json.load(f)
    old = {d["image"]: d for d in legacy["images"]}
    with open(BUNDLED_ONNX, "rb") as f:
        same_model = hashlib.sha256(f.read()).hexdigest() == legacy["_model_sha256"]
    new = {os.path.basename(d["image"]): d for d in bundled_json}
    assert set(new) == set(old) and sum(len(d["faces"]) for d in new.values()) == 7
    for name, doc in new.items():
        validate(doc, "image")
        assert len(doc["faces"]) == len(old[name]["faces"]), name
        for a, b in zip(doc["faces"], old[name]["faces"]):
            assert (a["box"], a["score"], a["landmarks"]) == (b["box"], b["score"], b["landmarks"]), name
            if same_model:
                assert (a["gender"], a["age"]) == (b["gender"], b["age"]), name
                assert abs(max(a["p_male"], 1 - a["p_male"]) - b["gender_prob"]) <= 1.01e-4, name


def test_to_dict_is_the_json_face(bundled_json):
    from agegender.serving.analyzer import FaceAnalyzer
    from agegender.data.image import read_image

    analyzer = FaceAnalyzer.from_options(net_threads=1)
    faces = analyzer.analyze(read_image(wheel_image("t1.jpg")))
    t1 = next(d for d in bundled_json if d["image"].endswith("t1.jpg"))
    assert [fr.to_dict() for fr in faces] == t1["faces"]
    for fr in faces:
        validate(fr.to_dict())


def test_json_is_always_a_list_and_stdout_stays_json(tmp_path):
    t1 = wheel_image("t1.jpg")
    one = run_script("infer.py", "--image", t1, "--json", check=True)
    doc = json.loads(one.stdout)
    assert isinstance(doc, list) and len(doc) == 1 and len(doc[0]["faces"]) == 6
    # --jsonl - with two inputs and a missing one: every stdout line is JSON, the human lines are on stderr
    proc = run_script("infer.py", "--image", t1, str(tmp_path / "missing.jpg"), wheel_image("Tom_Hanks_54745.png"),
                      "--jsonl", "-")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    docs = [json.loads(line) for line in lines]
    assert len(docs) == 3
    for d in docs:
        validate(d, "image")
    assert "face 1, box" in proc.stderr and "error: " in proc.stderr
    assert "summary: 3 images: 2 labelled (7 faces), 1 failed" in proc.stderr
    # two outputs cannot share stdout
    both = run_script("infer.py", "--image", t1, "--json", "--jsonl", "-")
    assert both.returncode == 2 and "only one output can go to stdout" in both.stderr


def test_csv_one_row_per_face_and_failures_as_rows(tmp_path):
    out = tmp_path / "faces.csv"
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((64, 64, 3), 128, np.uint8))
    proc = run_script("infer.py", "--image", wheel_image("t1.jpg"), str(blank), str(tmp_path / "nope.jpg"),
                      "--csv", str(out))
    assert proc.returncode == 1
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    by_image = {}
    for r in rows:
        by_image.setdefault(os.path.basename(r["image"]), []).append(r)
    assert [r["face"] for r in by_image["t1.jpg"]] == ["1", "2", "3", "4", "5", "6"]
    assert all(r["gender"] in ("male", "female") and 0 <= float(r["p_male"]) <= 1 for r in by_image["t1.jpg"])
    assert by_image["blank.png"] == [{**{c: "" for c in CSV_COLUMNS}, "schema_version": "2", "image": str(blank)}]
    assert by_image["nope.jpg"][0]["error"] == "not found" and by_image["nope.jpg"][0]["face"] == ""


def test_inputs_named_twice_are_analysed_once(tmp_path):
    import shutil

    shutil.copy(wheel_image("t1.jpg"), tmp_path / "a.jpg")
    os.symlink(tmp_path / "a.jpg", tmp_path / "link.jpg")
    proc = run_script("infer.py", "--image", str(tmp_path), str(tmp_path / "*.jpg"), str(tmp_path / "a.jpg"),
                      "--json", check=True)
    docs = json.loads(proc.stdout)
    assert [os.path.basename(d["image"]) for d in docs] == ["a.jpg"]


@pytest.mark.parametrize("script", ["infer.py", "create_dataset.py", "eval.py", "serve.py"])
def test_help_shows_no_none_defaults(script):
    text = run_script(script, "--help", check=True).stdout
    assert "(default: None)" not in text and "(default: False)" not in text
    assert re.search(r"\(default: [0-9.]+\)", text)  # real defaults are still shown


def test_one_face_index_and_the_schema_version_in_every_output(tmp_path):
    """Text, JSON lines, CSV and Parquet number the same face the same (from 1, left to right), and every
    document carries schema_version; the faces carry their age range and quality flags."""
    import pyarrow.parquet as pq

    from agegender.schema import SCHEMA_VERSION
    from agegender.serving.batch import docs_from_table

    t1 = wheel_image("t1.jpg")
    jsonl, csv_out, parquet = tmp_path / "f.jsonl", tmp_path / "f.csv", tmp_path / "f.parquet"
    proc = run_script("infer.py", "--image", t1, "--jsonl", str(jsonl), "--csv", str(csv_out), "--parquet",
                      str(parquet), check=True)
    text = {int(m[0]): [int(v) for v in m[1].split(", ")]
            for m in re.findall(r"face (\d+), box \(([\d, ]+)\), gender: \w+, age: \d+ \(\d+-\d+\)", proc.stdout)}
    doc = json.loads(jsonl.read_text())
    validate(doc, "image")
    assert doc["schema_version"] == SCHEMA_VERSION == 2
    by_json = {f["face"]: f["box"] for f in doc["faces"]}
    assert text == by_json and sorted(by_json) == [1, 2, 3, 4, 5, 6]
    assert [b[0] for _, b in sorted(by_json.items())] == sorted(b[0] for b in by_json.values())  # left to right
    for f in doc["faces"]:
        assert f["age_low"] <= round(f["age"]) <= f["age_high"] and isinstance(f["flags"], list)
    rows = list(csv.DictReader(io.StringIO(csv_out.read_text())))
    assert {int(r["face"]): [int(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in rows} == by_json
    assert {r["schema_version"] for r in rows} == {"2"}
    assert [(int(r["age_low"]), int(r["age_high"])) for r in rows] == [(f["age_low"], f["age_high"]) for f in doc["faces"]]
    table = pq.read_table(parquet)
    assert set(table.column("schema_version").to_pylist()) == {2}
    assert table.schema.metadata[b"agegender_schema_version"] == b"2"
    back = docs_from_table(table)
    assert back == [doc] and {f["face"]: f["box"] for f in back[0]["faces"]} == by_json


def test_validate_checks_the_range_and_the_flags():
    validate({**GOOD, "age_low": 25, "age_high": 40})
    with pytest.raises(ValueError, match="age range"):
        validate({**GOOD, "age_low": 33, "age_high": 40})  # age 31.5 outside its own range
    with pytest.raises(ValueError, match="flags"):
        validate({**GOOD, "flags": ["tiny"]})
    with pytest.raises(ValueError, match="face"):
        validate({**GOOD, "face": 0})  # numbered from 1
