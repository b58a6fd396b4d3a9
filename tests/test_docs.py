"""docs/ stays true to the model: every worked example of the bundled model's output on t1.jpg -- the JSON
of docs/inference.md, the text line, the face object of docs/python-api.md and docs/service.md, the
BGR-as-RGB figure and the engine's version -- is checked against what the code gives today, so a new model
(or a new output field) cannot leave them stale. The failure message prints what to paste."""
from __future__ import annotations

import json
import os
import re

import cv2
import pytest

from conftest import ROOT

from agegender.data.demo import wheel_image

T1 = wheel_image("t1.jpg")


def _read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def analyzer():
    from agegender.serving.analyzer import FaceAnalyzer

    return FaceAnalyzer.from_options(net_threads=1)


@pytest.fixture(scope="module")
def t1_faces(analyzer) -> list[dict]:
    return [f.to_dict() for f in analyzer.analyze(T1)]


def _same_face(shown: dict, real: dict) -> bool:
    """The same face object, key for key (the doc's numbers as printed; 1 px / 0.001 of slack for the last
    digit of another build of the same libraries)."""
    if set(shown) != set(real) or any(shown[k] != real[k] for k in ("face", "gender", "age_low", "age_high", "flags")):
        return False
    near = lambda a, b, tol: all(abs(x - y) <= tol for x, y in zip(a, b))  # noqa: E731
    return (near(shown["box"], real["box"], 1) and near(sum(shown["landmarks"], []), sum(real["landmarks"], []), 1)
            and abs(shown["score"] - real["score"]) <= 0.001 and abs(shown["p_male"] - real["p_male"]) <= 0.001
            and abs(shown["age"] - real["age"]) <= 0.1)


def _json_blocks(text: str) -> list[str]:
    return [b for lang, b in re.findall(r"```([a-z]*)\n(.*?)```", text, re.S) if lang == "json"]


def test_inference_json_example_is_todays_output(t1_faces):
    (block,) = [b for b in _json_blocks(_read("docs", "inference.md")) if "t1.jpg" in b]
    (doc,) = json.loads(block)
    assert os.path.basename(doc["image"]) == "t1.jpg"
    real = ",\n".join(f"  {json.dumps(f)}" for f in t1_faces)
    assert len(doc["faces"]) == len(t1_faces) and all(
        _same_face(a, b) for a, b in zip(doc["faces"], t1_faces)), f"docs/inference.md: paste\n{real}"


def test_inference_text_line_is_todays_output(analyzer):
    from agegender.serving.analyzer import ImageResult
    from agegender.serving.inference import format_lines

    first = format_lines(ImageResult(T1, None, analyzer.analyze(T1)))[0]
    (block,) = [b for b in re.findall(r"```[a-z]*\n(.*?)```", _read("docs", "inference.md"), re.S)
                if b.startswith("face 1,")]
    assert block.strip() == first, f"docs/inference.md: paste {first}"


@pytest.mark.parametrize("page", ["python-api.md", "service.md"])
def test_face_object_examples_are_todays_first_face(t1_faces, page):
    text = _read("docs", page)
    found = re.search(r'\{"face": 1, "box": \[59.*?"flags": \[[^\]]*\]\}', text, re.S)
    assert found, f"docs/{page}: no example of t1.jpg's first face"
    shown = found.group(0).replace("...", "").replace("\n", "")
    real = t1_faces[0]
    if '"landmarks": [[89.0, 327.5], ]' in shown:  # an elided list: compare its first point
        shown = shown.replace('[[89.0, 327.5], ]', json.dumps(real["landmarks"]))
    assert _same_face(json.loads(shown), real), f"docs/{page}: paste {json.dumps(real)}"


def test_bgr_taken_as_rgb_figure(analyzer):
    m = re.search(r"on t1\.jpg face (\d+)'s age (\d+) becomes (\d+)", _read("docs", "python-api.md"))
    assert m, "docs/python-api.md: the BGR-as-RGB example is gone"
    i, right, wrong = (int(g) for g in m.groups())
    bgr = cv2.imread(T1)
    real = (round(analyzer.analyze(bgr, bgr=True)[i - 1].age), round(analyzer.analyze(bgr)[i - 1].age))
    assert (right, wrong) == real, f"docs/python-api.md: face {i}'s age {real[0]} becomes {real[1]}"


def test_engine_version_as_documented(analyzer):
    m = re.search(r'`\.version` \(.*?`"([^"]+)"` for the bundled model', _read("docs", "python-api.md"), re.S)
    assert m and m.group(1) == analyzer.engine.version, analyzer.engine.version


def test_service_example_size_and_model_name(analyzer):
    m = re.search(r'"image": "t1\.jpg", "width": (\d+), "height": (\d+), "model": "([^"]+)"', _read("docs", "service.md"))
    h, w = cv2.imread(T1).shape[:2]
    assert m and (int(m.group(1)), int(m.group(2)), m.group(3)) == (w, h, os.path.basename(analyzer.engine.name))


def test_readme_limitations_quote_the_model_card():
    """README's "Limitations" exists near the top, links the model card's section, and every figure it
    quotes is in that section: the two cannot drift apart."""
    readme = _read("README.md")
    assert "## Limitations" in readme and readme.index("## Limitations") < readme.index("## One example per script")
    section = readme.split("## Limitations", 1)[1].split("\n## ", 1)[0]
    assert "(models/README.md#known-limitations-measured)" in section
    card = _read("models", "README.md").split("## Known limitations (measured)", 1)[1].split("\n## ", 1)[0]
    figures = re.findall(r"\+?\d+\.\d+|\d+ %|\b\d\d\b", section.replace("1.1 MB", "").replace("10-19", "")
                         .replace("0-9", "").replace("10-29", "").replace("5,000", ""))
    assert len(figures) >= 10, figures
    missing = [f for f in figures if f not in card]
    assert not missing, f"README's Limitations quotes {missing}, which models/README.md's section does not say"
