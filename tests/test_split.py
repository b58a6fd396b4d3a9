"""Deterministic, identity-grouped train/val splits."""
from __future__ import annotations

import pytest

from agegender.data.sources import Sample
from agegender.data.split import split_samples


def _samples(n_people: int, per_person: int) -> list[Sample]:
    return [Sample(f"p{p}_{i}.jpg", 1, 30.0, group=f"person{p}") for p in range(n_people) for i in range(per_person)]


def test_same_inputs_and_seed_give_the_same_split():
    s = _samples(200, 3)
    assert split_samples(s, 0.1, seed=0) == split_samples(s, 0.1, seed=0)
    assert split_samples(s, 0.1, seed=0) != split_samples(s, 0.1, seed=1)


def test_groups_never_straddle_the_split_and_ratio_holds():
    s = _samples(300, 4)
    splits = split_samples(s, 0.2, seed=3)
    by_group: dict[str, set] = {}
    for sample, split in zip(s, splits):
        by_group.setdefault(sample.group, set()).add(split)
    assert all(len(v) == 1 for v in by_group.values())
    assert splits.count("val") == pytest.approx(0.2 * len(s), abs=4)


def test_forced_splits_are_kept_and_zero_ratio_is_all_train():
    s = _samples(10, 1) + [Sample("official.jpg", -1, 20.0, group="x", split="val")]
    assert split_samples(s, 0.0, seed=0) == ["train"] * 10 + ["val"]
    with pytest.raises(ValueError):
        split_samples(s, 1.0, seed=0)


def test_salt_gives_each_source_its_own_draw():
    s = _samples(100, 1)
    assert split_samples(s, 0.3, 0, salt="afad") != split_samples(s, 0.3, 0, salt="agedb")
