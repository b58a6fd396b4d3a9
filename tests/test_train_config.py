"""A run's settings (PREFIX-config.json), `--resume` and `--config` taking them as defaults, and `Fit`'s
cheap constructor and label helpers on hand-made batches."""
from __future__ import annotations

import json
import os
import re

import mxnet as mx
import numpy as np
import pytest

from agegender.data.iterators import Augment
from agegender.model.training import (Fit, Source, TrainConfig, age_band_weights, band_sample_weights,
                                      interval_labels, mix_band_weights)
from tests.conftest import one_line_error, run_script

TINY = ["--multiplier", "0.25", "--version-input", "0", "--num-workers", "1", "--log-interval", "1000"]


def _config(prefix: str) -> dict:
    with open(f"{prefix}-config.json", encoding="utf-8") as f:
        return json.load(f)["config"]


def _logged(stdout: str) -> str:
    """The `train.py --flag=value ...` line a run logs with the settings it trains with."""
    return re.search(r"train\.py (--.*)", stdout).group(1)


def test_resume_takes_the_runs_config_and_flags_given_win(packed_demo, tmp_path):
    data_dir, _ = packed_demo
    prefix = str(tmp_path / "run" / "model")
    run_script("train.py", "--data-dir", data_dir, "--prefix", prefix, *TINY, "--batch-size", "4", "--lr", "0.03",
               "--lr-steps", "5", "--color", "0.1", "--end-epoch", "1", check=True)
    saved = _config(prefix)
    assert saved["lr"] == 0.03 and saved["batch_size"] == 4 and saved["network"] == "m50"
    assert saved["multiplier"] == 0.25 and saved["lr_steps"] == [5] and saved["data_dirs"] == [data_dir]
    assert saved["augment"]["color"] == 0.1 and saved["augment"]["mirror"] is True
    assert not [f for f in os.listdir(tmp_path / "run") if f.endswith(".tmp")]

    # no flag but the run's prefix: every setting comes back, the epoch goes on
    again = run_script("train.py", "--prefix", prefix, "--resume", "--end-epoch", "2", check=True)
    assert "continuing at epoch 1" in again.stdout and f"settings from {prefix}-config.json" in again.stdout
    logged = _logged(again.stdout)
    for word in ("--lr=0.03", "--batch-size=4", "--network=m50", "--multiplier=0.25", "--lr-steps=5",
                 "--color=0.1", "--version-input=0", f"--data-dir=['{data_dir}']"):
        assert word in logged, (word, logged)
    assert _config(prefix)["end_epoch"] == 2 and _config(prefix)["lr"] == 0.03

    # a flag given on the command line wins, and is what the config keeps from then on
    third = run_script("train.py", "--prefix", prefix, "--resume", "--end-epoch", "3", "--lr", "0.02",
                       "--max-steps", "1", check=True)
    assert "--lr=0.02" in _logged(third.stdout) and "--batch-size=4" in _logged(third.stdout)
    assert _config(prefix)["lr"] == 0.02 and _config(prefix)["max_steps"] == 1

    # --config starts another run from it: its own prefix, the saved settings, explicit flags over them
    other = str(tmp_path / "other" / "model")
    new = run_script("train.py", "--config", f"{prefix}-config.json", "--prefix", other, "--end-epoch", "1",
                     check=True)
    assert "--lr=0.02" in _logged(new.stdout) and f"--prefix={other}" in _logged(new.stdout)
    assert _config(other)["lr"] == 0.02 and _config(other)["end_epoch"] == 1
    assert _config(other)["data_dirs"] == [data_dir]
    assert _config(other)["max_steps"] == 0  # a smoke run's step cap stays with that run

    # a resume that fails to set up (its data gone) keeps the config its checkpoints were trained with
    before = _config(prefix)
    one_line_error(run_script("train.py", "--prefix", prefix, "--resume", "--data-dir", str(tmp_path / "gone")),
                   2, "gone")
    assert _config(prefix) == before


def _write(path, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _doc(**config) -> str:
    return json.dumps({"kind": "agegender train.py config", "version": "1.0.0", "config": config})


@pytest.mark.parametrize("text,fragment", [
    ("{not json", "is not JSON"),
    ('{"lr": 0.1}', "not a train.py config"),
    ("[1, 2]", "not a train.py config"),
    (_doc(lr=-1.0), "--lr"),
    (_doc(lr="fast"), "lr is 'fast'"),
    (_doc(batch_size=True), "batch_size is 'True'"),
    (_doc(learning_rate=0.1), "unknown setting 'learning_rate'"),
    (_doc(augment={"colour": 0.2}), "augment"),
    (_doc(lr_steps="10,20"), "not a list"),
    ("[" * 100_000 + "]" * 100_000, "is not JSON"),  # nesting past Python's recursion limit
])
def test_a_bad_config_is_a_one_line_error(tmp_path, text, fragment):
    prefix = str(tmp_path / "m")
    _write(f"{prefix}-config.json", text)
    one_line_error(run_script("train.py", "--prefix", prefix, "--resume"), 2, fragment)
    one_line_error(run_script("train.py", "--config", f"{prefix}-config.json", "--prefix", str(tmp_path / "n")),
                   2, fragment)


def test_a_missing_config_and_a_config_naming_the_runs_own_outputs_are_refused(packed_demo, tmp_path):
    data_dir, _ = packed_demo
    one_line_error(run_script("train.py", "--config", str(tmp_path / "none.json")), 2, "no such config file")
    # a config may name inputs that are this run's outputs: the prefix checks run on the merged settings
    new = str(tmp_path / "new")
    _write(str(tmp_path / "c.json"), _doc(data_dirs=[data_dir], teacher_genders=[f"{new}-teacher.csv"]))
    one_line_error(run_script("train.py", "--config", str(tmp_path / "c.json"), "--prefix", new), 2,
                   "would write over the input")
    _write(str(tmp_path / "d.json"), _doc(data_dirs=[data_dir], pretrained=f"{new},1"))
    one_line_error(run_script("train.py", "--config", str(tmp_path / "d.json"), "--prefix", new), 2,
                   "is this run's own --prefix")
    assert not os.path.exists(f"{new}-config.json")


def test_other_data_leaves_the_saved_runs_teachers_and_source_weights(packed_demo, tmp_path):
    """--config with --data-dir typed: the saved teacher CSVs and source weights were the saved run's sources';
    kept, they would distil that run's teacher labels onto these faces by record index."""
    data_dir, _ = packed_demo
    _write(str(tmp_path / "c.json"), _doc(data_dirs=[str(tmp_path / "a"), str(tmp_path / "b")],
                                          teacher_genders=[str(tmp_path / "a-teacher.csv"), "-"],
                                          source_weights=[1.0, 3.0], lr=0.02))
    prefix = str(tmp_path / "run" / "m")
    proc = run_script("train.py", "--config", str(tmp_path / "c.json"), "--data-dir", data_dir, "--prefix", prefix,
                      *TINY, "--batch-size", "4", "--end-epoch", "1", "--max-steps", "1", check=True)
    saved = _config(prefix)
    assert saved["data_dirs"] == [data_dir] and saved["lr"] == 0.02  # the rest of the recipe carries over
    assert saved["teacher_genders"] == [] and saved["source_weights"] == [], proc.stdout


def test_fit_is_built_cheaply_and_prepared_by_from_config(packed_demo, tmp_path):
    data_dir, _ = packed_demo
    cfg = TrainConfig(data_dir=data_dir, prefix=str(tmp_path / "m"), multiplier=0.25, version_input=0,
                      batch_size=4, augment=Augment(), num_workers=1)
    cheap = Fit(cfg)
    assert cheap.net is None and cheap.trainer is None and cheap.shares == [] and not cheap.resumed
    assert cheap.sources == [] and cheap.begin_epoch == 0 and not os.listdir(tmp_path)
    fit = Fit.from_config(cfg, ctx=[mx.cpu()])
    assert fit.shares == [4] and fit.trainer is not None and not fit.resumed and fit.label_width == 2
    assert fit.train_rec == os.path.join(data_dir, "train.rec") and fit.num_train == fit.sources[0].num_train


def test_band_weights_of_a_mix_count_each_face_at_its_sources_rate():
    ages = [[5, 15, 25, 25], [70, 80]]
    genders = [[1, 0, -1, 1], [0, 1]]
    age_w, gender_w = mix_band_weights(ages, genders, [3, 1], 1.0, 0.5)
    rate = np.array([3 / 4] * 4 + [1 / 2] * 2)
    flat = np.array([5, 15, 25, 25, 70, 80], np.float64)
    np.testing.assert_array_equal(age_w, age_band_weights(flat, 1.0, rate=rate))
    known = np.array([1, 1, 0, 1, 1, 1], bool)  # the unknown gender is left out of the gender weights
    np.testing.assert_array_equal(gender_w, age_band_weights(flat[known], 0.5, rate=rate[known]))
    assert mix_band_weights(ages, genders, [1, 1], 0.0, 0.0) == (None, None)
    assert mix_band_weights([[5]], [[-1]], [1], 0.0, 1.0) == (None, None)  # no known gender: nothing to weigh


def test_band_sample_weights_pick_each_faces_band():
    weights = mx.nd.array(np.arange(8) / 10)
    exact = mx.nd.array([[1, 3], [0, 35], [1, 79.5], [0, 110]])  # [gender, age]
    np.testing.assert_allclose(band_sample_weights(exact, weights, mx.cpu()).asnumpy(), [0, 0.3, 0.7, 0.7])
    grouped = mx.nd.array([[1, 20, 29], [0, 70, 100]])  # [gender, age_lo, age_hi]: the group's lower end
    np.testing.assert_allclose(band_sample_weights(grouped, weights, mx.cpu()).asnumpy(), [0.2, 0.7])
    assert band_sample_weights(exact, None, mx.cpu()) is None


def test_interval_labels_are_exact_ages_without_a_groups_sidecar(packed_demo):
    data_dir, _ = packed_demo
    rec = os.path.join(data_dir, "train.rec")
    assert interval_labels([Source("a", rec, "", 1)]) == (2, [None])
