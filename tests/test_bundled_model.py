"""The bundled model (models/agegender, tracked in git): it loads, it is sensible on real faces, and it is
what infer.py and eval.py use without --model. Runs everywhere: only the repository and the insightface
wheel's images are needed."""
from __future__ import annotations

import os
import re

import numpy as np

from tests.conftest import run_script
from agegender.data.demo import wheel_image
from agegender.data.image import read_image
from agegender.model.engine import BUNDLED_MODEL
from agegender.model.loading import load_engine
from agegender.model.mxnet_engine import resolve_model


def test_bundled_model_is_in_the_repository_and_small():
    for suffix in ("-symbol.json", "-0000.params"):
        path = BUNDLED_MODEL + suffix
        assert os.path.isfile(path), f"{path} missing: the bundled model must be committed"
    assert os.path.getsize(BUNDLED_MODEL + "-0000.params") < 20_000_000  # the accuracy issue's bound
    assert resolve_model(None) == (BUNDLED_MODEL, 0)


def test_tom_hanks_is_an_adult_man():
    face = read_image(wheel_image("Tom_Hanks_54745.png"))  # already an aligned 112x112 face
    assert face.shape == (112, 112, 3)
    p_male, age = load_engine().predict_faces(face[None])
    assert p_male[0] > 0.8, p_male
    assert 30 <= age[0] <= 70, age


def test_infer_labels_the_six_faces_of_t1_without_model_flag():
    proc = run_script("infer.py", "--image", wheel_image("t1.jpg"), check=True)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 6
    found = [re.match(r"^face \d, box \(.*\), gender: (male|female), age: (\d+) \((\d+)-(\d+)\)$", line) for line in lines]
    assert all(found), lines
    # left to right: three women and three men (the photo's cast), all adults
    assert [m[1] for m in found] == ["female", "female", "male", "male", "male", "female"]
    ages = np.array([int(m[2]) for m in found])
    assert ((ages >= 18) & (ages <= 60)).all(), ages
    # the calibrated 80 % ranges of adults: around the age, one to four decades wide, none flagged (no suffix)
    width = np.array([int(m[4]) - int(m[3]) for m in found])
    assert ((width >= 6) & (width <= 40)).all(), width  # d10: the man read 48 gets 31-68
