"""`agegender COMMAND ...` (and `python -m agegender`): one console command over the project's scripts,
`agegender infer|serve|eval|train|pack|distribution`, and `agegender --version`.

Each command runs its script unchanged: from the checkout (infer.py, ...) when run there, or the copy
the wheel carries under agegender/_scripts/ when installed."""
from __future__ import annotations

import os
import sys

from agegender import CODE_LICENSE, __version__
from agegender.errors import EXTRAS, run_cli

COMMANDS = {  # command: (script, what it does)
    "infer": ("infer.py", "gender and age of every face in images, folders or a video"),
    "serve": ("serve.py", "the HTTP service (needs the [serve] extra)"),
    "eval": ("eval.py", "accuracy and MAE of a model on a packed .rec"),
    "train": ("train.py", "train or fine-tune (needs the [train] extra: MXNet)"),
    "pack": ("create_dataset.py", "detect, align and pack face datasets into .rec files (needs [train])"),
    "distribution": ("show_age_distribution.py", "age histogram of a packed .rec or a label list"),
}
_HERE = os.path.dirname(os.path.abspath(__file__))
# a module missing at run time -> the extra that installs it (pyproject.toml)


def script_path(script: str) -> str:
    """The script's file: the wheel's copy when installed, else the checkout's."""
    for path in (os.path.join(_HERE, "_scripts", script), os.path.join(os.path.dirname(_HERE), script)):
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(script)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: agegender COMMAND [options]   (agegender COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "  --version  the version, the code's licence, the bundled models and their terms"]
    return "\n".join(lines)


def version_text() -> str:
    """`agegender --version`: the version, the code's licence, and each bundled model present here with its
    files and terms (agegender/model/registry.py; `--model NAME` picks one)."""
    from agegender.model import registry

    lines = [f"agegender {__version__}", f"code: {CODE_LICENSE}", "bundled models (--model NAME; docs/model.md):"]
    present = registry.available()
    for model in present:
        rel = os.path.relpath(model.spec)
        lines.append(f"  {model.name}: {model.spec if rel.startswith('..') else rel}")
        lines.append(f"    terms: {model.terms}")
    if not present:
        lines.append("  none here: pass --model FILE.onnx or PREFIX,EPOCH")
    missing = [name for name in registry.REGISTERED if registry.find(name) is None]
    if missing:
        lines.append(f"  not installed here: {', '.join(missing)}")
    return "\n".join(lines)


def dispatch(argv: list[str] | None = None) -> int:
    """Dispatch to a command's script (which exits with its own status); 0/2 for --help/--version/usage."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(version_text())
        return 0
    if args[0] not in COMMANDS:
        print(f"error: unknown command {args[0]!r}; expected one of {', '.join(COMMANDS)} (see agegender --help)",
              file=sys.stderr)
        return 2
    name = args[0]
    sys.argv = [f"agegender {name}", *args[1:]]  # argparse names the command in usage and errors
    path = script_path(COMMANDS[name][0])
    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), path, "exec")
    # run as a script would be (runpy would reset argv[0] to the file's path); it ends in sys.exit
    try:
        exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        print(f"error: agegender {name} needs {top}, which this installation lacks: "
              f"pip install 'agegender[{EXTRAS[top]}]' (or the checkout's requirements.txt)", file=sys.stderr)
        return 2
    return 0


def main() -> None:
    """The console command: `dispatch` under run_cli, so that `agegender --version | head -1` ends quietly."""
    run_cli(dispatch)


if __name__ == "__main__":
    main()
