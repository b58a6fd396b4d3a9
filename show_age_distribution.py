#!/usr/bin/env python
"""Plot the age histogram (split by gender, one panel per source) of a packed `.rec`, an im2rec `.lst`
or a `path,gender,age` list, and print count, mean/median age and the gender and source shares."""
from __future__ import annotations

import argparse

from utils.distribution import load_labels, plot_histogram, summarize
from utils.cli import ArgumentParser
from utils.errors import UserError, run_cli


def main() -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("input", help="a .rec (source names from meta.json beside it), a .lst, or a path,gender,age list")
    p.add_argument("--output", default="age_distribution.png", help="where the PNG goes")
    args = p.parse_args()
    try:
        labels = load_labels(args.input)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:  # MXNet raises its own error types on a damaged .rec
        raise UserError(f"cannot read {args.input}: {str(exc).splitlines()[0]}") from None
    print(summarize(labels))
    plot_histogram(labels, args.output, title=args.input)
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
