"""Command lines: an ArgumentParser whose usage errors are one line (exit 2), and range-checked number
types for argparse, so a batch size of 0, a threshold of -1 or NaN is refused before any work starts."""
from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, NoReturn


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows `(default: X)` only where it tells something: not for None, False, or a help text that
    already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with `error: ...` on one line (no usage dump) and exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def number(kind: type = float, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Callable[[str], float]:
    """An argparse `type` accepting a finite `kind` (int or float) in the interval [lo, hi] (open ends
    with `lo_open` / `hi_open`); NaN and infinities are refused."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    if lo is not None and hi is not None:
        what = f"in {left}{lo:g}, {hi:g}{right}"
    elif lo is not None:
        what = f"{'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        what = f"{'<' if hi_open else '<='} {hi:g}"
    else:
        what = "finite"
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (lo is not None and (value < lo or (lo_open and value == lo))) or \
                (hi is not None and (value > hi or (hi_open and value == hi))):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {what}")
        return value

    parse.__name__ = f"{kind.__name__} {what}"  # argparse names the type in its messages
    return parse


def add_flip_argument(p: argparse.ArgumentParser) -> None:
    """`--flip / --no-flip`, default None: the model's own default (`Engine.default_flip`: on, unless the
    model's metadata says `flip` false)."""
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average each face's outputs with its mirror image's (default: the model's own: on, "
                        "except for a model whose metadata says flip false, e.g. `open`: docs/model.md)")


def gpu_ids(text: str) -> list[int]:
    """`--gpus 0,1` -> [0, 1]; empty -> [] (the CPU). UserError for anything else."""
    from agegender.errors import UserError

    try:
        return [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise UserError(f"--gpus takes GPU ids such as 0,1; got {text!r}") from None


# The detector's lowest threshold, shared by every entry point (infer.py, create_dataset.py, serve.py and the
# library's load_detector): below it RetinaFace's scores are noise, a photo gives thousands of "faces" and the
# time and memory of detection grow without bound (19,065 boxes, 61 s, 2.8 GB on t1.jpg at 0).
DET_THRESH_MIN = 0.3

# the ranges the scripts use
COUNT = number(int, 1)                  # epochs, intervals, threads: >= 1
BATCH = number(int, 1, 4096)            # faces per forward pass (MXNet refuses tensors over 2^31 elements)
NON_NEGATIVE_INT = number(int, 0)       # worker counts, steps, seeds (0 = off / auto)
PROBABILITY = number(float, 0, 1)       # thresholds, shares of faces
RATIO = number(float, 0, 1, hi_open=True)  # val ratio: [0, 1)
POSITIVE = number(float, 0, lo_open=True)  # learning rates, sizes
NON_NEGATIVE = number(float, 0)         # pixel sizes, strengths (0 = off)
DET_THRESH = number(float, DET_THRESH_MIN, 1)  # detector score thresholds
AGE_LEVEL = number(float, 0, 1, lo_open=True, hi_open=True)  # the age range's level: (0, 1)


__all__ = ["ArgumentParser", "DefaultsHelpFormatter", "number", "DET_THRESH", "DET_THRESH_MIN", "gpu_ids", "COUNT", "BATCH", "NON_NEGATIVE_INT", "PROBABILITY", "RATIO", "POSITIVE",
           "NON_NEGATIVE", "AGE_LEVEL"]
