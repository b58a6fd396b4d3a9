"""A training run's saved settings (`PREFIX-config.json`, written by train.py) as the defaults of a new command
line: `--resume` takes the run's own, `--config FILE` another run's; flags given still win. The saved values
are turned back into command-line words, so that train.py's parser checks them as it checks typed flags."""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Callable, NoReturn

from agegender.errors import UserError

# never taken from a saved config: the run to write is the command line's (a config names the run it came
# from), and --resume is itself the flag that reads one
NOT_SAVED = ("prefix", "resume")
LIST_KINDS = {"data_dirs": str, "source_weights": float, "lr_steps": int, "teacher_genders": str}


def _word(flag: str, value, kind: type, where: str) -> str:
    """`--flag=value` for a saved value of the field's type (an int for a float is fine); UserError else."""
    fits = isinstance(value, kind) or (kind is float and isinstance(value, int))
    if not fits or (kind is not bool and isinstance(value, bool)):
        raise UserError(f"{where}: {flag[2:].replace('-', '_')} is {str(value)[:40]!r}, not of type {kind.__name__}")
    return f"{flag}={value}"


def saved_flags(config: dict, where: str) -> list[tuple[str, list[str]]]:
    """A saved TrainConfig (`dataclasses.asdict`) as (argparse dest, command-line words) pairs, so that the
    parser checks its values as it checks typed flags. UserError for a setting train.py does not have."""
    from agegender.data.iterators import Augment  # MXNet: imported once the command line parsed
    from agegender.model.training import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out: list[tuple[str, list[str]]] = []
    for key, value in config.items():
        if key not in fields:
            raise UserError(f"{where}: unknown setting {key!r} (not a config of this train.py)")
        if key in NOT_SAVED or key in ("data_dir", "teacher_gender") and config.get(key + "s"):
            continue  # data_dirs / teacher_genders hold it
        flag = "--" + key.replace("_", "-")
        if key in LIST_KINDS:
            if not isinstance(value, list):
                raise UserError(f"{where}: {key} is {str(value)[:40]!r}, not a list")
            if key in ("data_dirs", "teacher_genders"):  # a flag repeated
                out.append((key[:-1], [_word(flag[:-1], v, str, where) for v in value]))
            else:
                values = [_word(flag, v, LIST_KINDS[key], where).split("=", 1)[1] for v in value]
                out.append((key, [f"{flag}={','.join(values)}"]))
        elif key == "augment":
            aug = {f.name: f.default for f in dataclasses.fields(Augment)}
            if not isinstance(value, dict) or set(value) - set(aug):
                raise UserError(f"{where}: augment is {str(value)[:40]!r}, not train.py's augmentation settings")
            for name, v in value.items():
                dest = "rand_mirror" if name == "mirror" else name
                word = _word("--" + dest.replace("_", "-"), v, type(aug[name]), where)
                out.append((dest, [word.replace("=True", "=1").replace("=False", "=0")]))
        elif isinstance(fields[key].default, bool):  # a store_true flag: no word turns it off
            out.append((key, [_word(flag, value, bool, where).split("=")[0]] if value else []))
        elif key in ("data_dir", "teacher_gender"):  # "" as --teacher-gender would name a file
            out.append((key, [_word(flag, value, str, where)] if value else []))
        else:
            out.append((key, [_word(flag, value, type(fields[key].default), where)]))
    return out


def given_dests(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str]) -> set[str]:
    """The argparse dests that `argv` sets itself (defaults left out)."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def parse_with_saved_config(build_parser: Callable[[], argparse.ArgumentParser],
                             argv: list[str]) -> tuple[argparse.Namespace, str]:
    """train.py's command line (`build_parser`'s) over the defaults of a saved config: `--config FILE`'s, or
    with `--resume` the run's own PREFIX-config.json (none: the flags as given, as for a run older than the
    file). Returns (args, the config's path or "")."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from agegender.model.run_files import config_path, read_config  # MXNet: after --help and usage errors

    if args.config:
        path, flag = args.config, "--config"
    elif args.resume and os.path.isfile(config_path(args.prefix)):
        path, flag = config_path(args.prefix), "--resume"
    else:
        return args, ""
    saved = saved_flags(read_config(path, flag), f"{flag} {path}")
    checker = build_parser()

    def refuse(message: str) -> NoReturn:
        raise UserError(f"{flag} {path}: {message}")

    checker.error = refuse  # a bad value names the file it came from, not a flag the user did not type
    checker.parse_args([w for _, words in saved for w in words])
    given = given_dests(build_parser, argv)
    if "data_dir" in given:  # other data: the saved run's per-source teachers and weights belong to its own
        given |= {"teacher_gender", "source_weights"}
    if flag == "--config":  # a new run: a smoke run's step cap does not carry over
        given.add("max_steps")
    return parser.parse_args([w for dest, words in saved if dest not in given for w in words] + argv), path


__all__ = ["parse_with_saved_config", "saved_flags", "given_dests", "NOT_SAVED"]
