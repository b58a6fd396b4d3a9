#!/usr/bin/env python
"""A seeded share of a packed train split, beside the same val split: the folder a learning-curve run
trains on (how much would more faces of the same kind help?).

    python tools/subset_rec.py dataset/utkface 0.25 dataset/utkface-25
    python train.py --data-dir dataset/utkface-25 ...

Writes OUTPUT/train.{rec,idx,lst} with the chosen records, byte for byte and in their original order
(renumbered 0..n-1, as create_dataset.py numbers a split), copies OUTPUT/val.{rec,idx,lst} unchanged,
and OUTPUT/meta.json with `subset` (source folder, share, seed, records kept) added. Every file is
written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.cli import ArgumentParser, number  # noqa: E402
from agegender.errors import UserError, run_cli  # noqa: E402


def choose(n: int, share: float, seed: int) -> list[int]:
    """round(share x n) of the indices 0..n-1 (at least one), drawn with `seed`, in ascending order."""
    import numpy as np

    k = max(1, round(share * n))
    return sorted(np.random.default_rng(seed).permutation(n)[:k].tolist())


def write_subset(src: str, share: float, seed: int, out: str) -> int:
    """Write the subset folder (see the module docstring); returns the number of train records kept."""
    from agegender.atomic import atomic_path, write_atomic
    from agegender.data.recordio import SplitWriter, iter_records, read_attrs, split_paths
    from agegender.model.teacher import read_lst

    train = split_paths(src, "train")
    for path in (train["rec"], train["lst"]):
        if not os.path.isfile(path):
            raise UserError(f"{path} not found: SOURCE must be a folder written by create_dataset.py")
    if os.path.realpath(src) == os.path.realpath(out):
        raise UserError("OUTPUT must not be SOURCE: the subset would replace the split it is drawn from")
    from agegender.atomic import dataset_files, refuse_inputs
    from agegender.model.engine import model_files

    refuse_inputs([("OUTPUT", os.path.join(out, os.path.basename(f))) for f in dataset_files(train["rec"]) +
                   dataset_files(os.path.join(src, "val.rec"))],
                  dataset_files(train["rec"]) + dataset_files(os.path.join(src, "val.rec")) + model_files())
    paths = [e.path for e in read_lst(train["lst"])]
    keep = set(choose(len(paths), share, seed))
    os.makedirs(out, exist_ok=True)
    ages = np.array([e.age for e in read_lst(train["lst"])], np.float64)
    try:
        attrs = read_attrs(train["rec"], ages)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    writer = SplitWriter(out, "train")
    try:
        n = 0
        for n, rec in enumerate(iter_records(train["rec"]), 1):
            i = n - 1
            if i in keep:
                interval = (attrs.age_lo[i], attrs.age_hi[i]) if attrs.grouped[i] else None
                writer.write(rec.jpeg, rec.gender, rec.age, rec.source_id, paths[i], attrs.race[i], interval)
        if n != len(paths):
            raise UserError(f"{train['rec']} holds {n} records but its .lst {len(paths)} lines")
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    for path in split_paths(src, "val").values():
        if os.path.isfile(path):
            with atomic_path(os.path.join(out, os.path.basename(path))) as tmp:
                shutil.copyfile(path, tmp)
    meta_path = os.path.join(src, "meta.json")
    meta = json.load(open(meta_path, encoding="utf-8")) if os.path.isfile(meta_path) else {}
    meta["subset"] = {"source": os.path.abspath(src), "share": share, "seed": seed, "train_records": len(keep),
                      "of": len(paths)}
    write_atomic(os.path.join(out, "meta.json"), json.dumps(meta, indent=1) + "\n")
    return len(keep)


def main() -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a folder written by create_dataset.py (train.rec/.idx/.lst, val.*)")
    p.add_argument("share", type=number(float, 0, 1, lo_open=True), help="share of the train records to keep")
    p.add_argument("output", help="folder to write the subset to")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of the draw")
    args = p.parse_args()
    kept = write_subset(args.source, args.share, args.seed, args.output)
    print(f"{kept} train records of {args.source} (share {args.share:g}, seed {args.seed}) and its val split "
          f"written to {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
