"""Training and evaluating on several packed sources: every batch holds each source's share, each source
is validated on its own every epoch (metrics CSV, curves), and eval.py prints one table per file and an
overall line that pools them."""
from __future__ import annotations

import csv
import json
import os

import mxnet as mx
import numpy as np
import pytest

from tests.conftest import run_script
from agegender.data.iterators import MixedBatches, batch_shares
from agegender.errors import UserError
from agegender.model.training import TrainConfig, load_sources


@pytest.fixture(scope="module")
def packed_aaf(demo_sources, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mix") / "aaf")
    run_script("create_dataset.py", "--aaf", demo_sources["aaf"], "--output", out, "--workers", "1",
               "--no-progress", check=True)
    return out


def test_batch_shares_follow_the_weights():
    assert batch_shares(128, [19657, 10137]) == [84, 44]
    assert batch_shares(128, [1, 1]) == [64, 64]
    assert batch_shares(10, [1, 1, 1]) == [4, 3, 3]
    assert batch_shares(4, [1000, 1]) == [3, 1]          # every source keeps at least one row
    with pytest.raises(ValueError):
        batch_shares(4, [1, 0])


def test_every_mixed_batch_holds_each_share_and_sources_restart():
    a = mx.io.NDArrayIter(np.zeros((5, 1)), np.zeros((5, 2)), batch_size=3, last_batch_handle="roll_over")
    b = mx.io.NDArrayIter(np.ones((40, 1)), np.ones((40, 2)), batch_size=1)
    mixed = MixedBatches([a, b], [3, 1], steps=7)
    seen = [batch.label[0].asnumpy()[:, 0] for batch in mixed]
    assert len(seen) == 7                                           # a epoch is `steps` batches, not a's length
    assert all(list(s) == [0, 0, 0, 1] for s in seen)
    assert len(list(mixed)) == 7                                    # the next epoch goes on


def test_sources_are_checked_up_front(packed_demo, packed_aaf):
    demo, _ = packed_demo
    two = dict(data_dirs=[demo, packed_aaf])
    assert [s.name for s in load_sources(TrainConfig(**two))] == [os.path.basename(demo), "aaf"]
    with pytest.raises(UserError, match="one CSV per"):
        load_sources(TrainConfig(**two, teacher_gender="t.csv"))
    with pytest.raises(UserError, match="weights for 2"):
        load_sources(TrainConfig(**two, source_weights=[1.0]))
    with pytest.raises(UserError, match="distinct names"):
        load_sources(TrainConfig(data_dirs=[packed_aaf, packed_aaf]))


def test_train_reports_each_source_every_epoch(packed_demo, packed_aaf, tmp_path):
    demo, _ = packed_demo
    prefix = str(tmp_path / "run" / "model")
    proc = run_script("train.py", "--data-dir", demo, "--data-dir", packed_aaf, "--source-weights", "1,1",
                      "--prefix", prefix, "--network", "m50", "--multiplier", "0.25", "--version-input", "0",
                      "--batch-size", "4", "--end-epoch", "2", "--num-workers", "1", check=True)
    name = os.path.basename(demo)
    assert "sources mixed in every batch: %s 2, aaf 2" % name in proc.stdout
    assert "Epoch[1] Validation aaf: acc=" in proc.stdout and f"Epoch[1] Validation {name}: acc=" in proc.stdout
    with open(prefix + "-metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        for col in ("aaf_val_acc", "aaf_val_mae", f"{name}_val_mae", "val_mae"):
            assert float(r[col]) >= 0, col
    assert os.path.isfile(prefix + "-curves.png")
    bad = run_script("train.py", "--data-dir", demo, "--data-dir", packed_aaf, "--source-weights", "1,x",
                     "--prefix", str(tmp_path / "b"))
    assert bad.returncode == 2 and "--source-weights takes positive numbers" in bad.stderr


def test_eval_prints_a_table_per_file_and_the_pooled_line(packed_demo, packed_aaf, tmp_path):
    demo, _ = packed_demo
    out = tmp_path / "cross.json"
    proc = run_script("eval.py", "--data-dir", demo, "--data-dir", packed_aaf, "--no-progress", "--json", str(out),
                      check=True)
    name = os.path.basename(demo)
    assert f"== {name}/val" in proc.stdout and "== aaf/val" in proc.stdout
    rep = json.load(open(out))
    per = {r["name"]: r for r in rep["recs"]}
    assert set(per) == {f"{name}/val", "aaf/val"}
    overall = rep["overall"]
    assert overall["count"] == sum(r["count"] for r in per.values())
    mae = sum(r["mae"] * r["count"] for r in per.values()) / overall["count"]
    assert overall["mae"] == pytest.approx(mae)
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last[0] == "overall" and int(last[1]) == overall["count"]


def test_cross_dataset_matrix_has_a_row_per_model_and_a_column_per_split(packed_demo, packed_aaf, random_model):
    demo, _ = packed_demo
    proc = run_script("tools/cross_dataset.py", "--model", f"random={random_model}", "--model",
                      f"again={random_model}", "--rec", os.path.join(demo, "val.rec"), "--rec",
                      os.path.join(packed_aaf, "val.rec"), "--no-progress", check=True)
    lines = proc.stdout.splitlines()
    name = os.path.basename(demo)
    assert lines[0] == f"| trained on \\ evaluated on | {name}/val | aaf/val |"
    rows = [ln for ln in lines if ln.startswith("| random |") or ln.startswith("| again |")]
    assert len(rows) == 6                      # the overall matrix and one band table per split, two models each
    assert rows[0].split("|")[2:] == rows[1].split("|")[2:]    # the same model reads the same numbers
