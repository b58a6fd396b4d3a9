"""Deterministic, identity-grouped train/val splits."""
from __future__ import annotations

import zlib
from collections import OrderedDict

import numpy as np

from agegender.data.sources import Sample


def split_samples(samples: list[Sample], val_ratio: float, seed: int, salt: str = "") -> list[str]:
    """Assign each sample "train" or "val"; returns one split name per sample, in order.

    Samples with a forced `split` keep it. The others are grouped by `group` (an identity: all
    images of one person land in the same split); the groups, in first-seen order, are shuffled by
    a generator seeded from `seed` and `salt` (the source name, so each source gets its own but
    reproducible draw) and taken into val until it holds round(val_ratio * n) samples.
    The same samples in the same order with the same seed always give the same split.
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val ratio must be in [0, 1), got {val_ratio}")
    result = [s.split or "train" for s in samples]
    groups: "OrderedDict[str, list[int]]" = OrderedDict()
    for i, s in enumerate(samples):
        if s.split is None:
            groups.setdefault(s.group, []).append(i)
    n_free = sum(len(v) for v in groups.values())
    target = int(round(val_ratio * n_free))
    if target == 0:
        return result
    rng = np.random.RandomState((seed * 1000003 + zlib.crc32(salt.encode())) % (2 ** 32))
    keys = list(groups)
    taken = 0
    for k in rng.permutation(len(keys)):
        if taken >= target:
            break
        members = groups[keys[k]]
        for i in members:
            result[i] = "val"
        taken += len(members)
    return result
