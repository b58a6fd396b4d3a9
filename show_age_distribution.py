#!/usr/bin/env python
"""Plot the age histogram (split by gender, one panel per source) of a packed `.rec`, an im2rec `.lst`
or a `path,gender,age` list, and print count, mean/median age and the gender and source shares."""
from __future__ import annotations


from agegender.atomic import check_writable, dataset_files, refuse_inputs
from agegender.model.engine import model_files
from agegender.cli import ArgumentParser
from agegender.data.distribution import load_labels, plot_histogram, summarize
from agegender.errors import UserError, run_cli, short_reason


def main() -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("input", help="a .rec (source names from meta.json beside it), a .lst, or a path,gender,age list")
    p.add_argument("--output", default="age_distribution.png", help="where the PNG goes")
    args = p.parse_args()
    if not args.input.lower().endswith((".rec", ".lst", ".csv", ".txt")):
        raise UserError(f"{args.input} is not a .rec, .lst or path,gender,age list (.csv/.txt)")
    refuse_inputs([("--output", args.output)], dataset_files(args.input) + model_files())
    check_writable(args.output, "--output")
    try:
        labels = load_labels(args.input)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 -- MXNet raises its own error types on a damaged .rec
        raise UserError(f"cannot read {args.input}: {short_reason(exc)}") from None
    if not len(labels.age):
        raise UserError(f"{args.input} holds no labelled faces")
    print(summarize(labels))
    plot_histogram(labels, args.output, title=args.input)
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
