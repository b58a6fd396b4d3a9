#!/usr/bin/env python
"""Average the weights of several epochs of one training run into one checkpoint (stochastic weight
averaging: the epochs of a constant learning rate, e.g. `train.py --lr-schedule step` without steps):

    python tools/average_checkpoints.py models/swa/model 1-10 models/swa-mean/model
    python eval.py --model models/swa-mean/model,0

Several runs from the same starting weights (e.g. two seeds) average together, the same epochs of each:

    python tools/average_checkpoints.py models/a/model,models/b/model 1-10 models/ab-mean/model
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.cli import ArgumentParser  # noqa: E402
from agegender.errors import UserError, run_cli  # noqa: E402


def parse_epochs(text: str) -> list[int]:
    """`1-10`, `4,6,8` or a mix such as `1-3,7` -> sorted epochs; a one-line error otherwise."""
    epochs: set[int] = set()
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise UserError(f"bad epochs {text!r}: expected e.g. 1-10 or 4,6,8") from None
        if first < 0 or last < first:
            raise UserError(f"bad epochs {text!r}: a range goes from a lower epoch to a higher one")
        epochs.update(range(first, last + 1))
    return sorted(epochs)


def main() -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefix", help="the run's checkpoint prefix (PREFIX-%%04d.params); several runs: PREFIX,PREFIX")
    p.add_argument("epochs", help="the epochs to average: 1-10, 4,6,8, ...")
    p.add_argument("output", help="prefix of the result (written as OUTPUT-0000.params and OUTPUT-symbol.json)")
    args = p.parse_args()

    from agegender.symbols import average_checkpoints, write_checkpoint

    from agegender.atomic import refuse_inputs
    from agegender.model.engine import model_files

    epochs = parse_epochs(args.epochs)
    runs = [r for r in args.prefix.split(",") if r]
    if not runs:
        raise UserError(f"no checkpoint prefix in {args.prefix!r}")
    refuse_inputs([("output", f"{args.output}-symbol.json"), ("output", f"{args.output}-0000.params")],
                  model_files(*runs))
    try:
        sym, arg, aux = average_checkpoints(runs, epochs)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    path = write_checkpoint(sym, arg, aux, args.output, 0)
    print(f"{len(epochs)} epochs of {' and '.join(runs)} ({epochs[0]}-{epochs[-1]}) averaged into {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
