"""The bundled models by name (`--model default`, `--model small`, `--model open`): the one table of names,
the files each name is read from, and the rule that tells a name from a path. docs/model.md describes it.

A registered NAME is read from models/ in a checkout (agegender/weights/ in the wheel), or first from the
folders of $AGEGENDER_MODELS_DIR, under one naming scheme:

    default  agegender.onnx  agegender-symbol.json  agegender-0000.params  agegender-calibration.json
    NAME     the same with agegender-NAME: agegender-small.onnx, agegender-small-symbol.json, ...

plus an optional licence / attribution file, agegender[-NAME].LICENSE.md. A name is available when its
.onnx or its -0000.params is there. This module imports neither numpy nor a runtime: `agegender --version`
lists the models without loading one.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

from agegender import SMALL_TERMS, WEIGHTS_TERMS
from agegender.errors import UserError

MODELS_DIR_ENV = "AGEGENDER_MODELS_DIR"  # folders searched before the built-in one (os.pathsep between them)
DEFAULT = "default"
STEM = "agegender"
CALIBRATION_SUFFIX = "-calibration.json"  # beside a checkpoint: PREFIX-calibration.json
LICENSE_SUFFIX = ".LICENSE.md"
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PACKAGED = os.path.join(_PACKAGE, "weights")  # the wheel carries the models there (pyproject.toml)
BUILTIN_DIR = _PACKAGED if os.path.isdir(_PACKAGED) else os.path.join(os.path.dirname(_PACKAGE), "models")

OPEN_TERMS = ("CC-BY-4.0: trained only on CC BY 4.0 material (FairFace's labels, CC BY 4.0, Karkkainen and Joo, "
              "WACV 2021) from the CC0 weights of dlib's age net (Cydral); attribution in agegender-open.LICENSE.md")

# name -> (the terms one-liner, what it is). The terms must equal the `license` in the model's ONNX metadata
# (tools/export_onnx.py --license; tests/test_named_models.py checks every model present).
REGISTERED: dict[str, tuple[str, str]] = {
    DEFAULT: (WEIGHTS_TERMS, "the default model"),
    "small": (SMALL_TERMS, "the 1.1 MB MobileNet-0.25 net, the default until round 4's session 3"),
    "open": (OPEN_TERMS, "trained only on CC BY 4.0 and CC0 material, for any use under CC BY 4.0"),
}

# A bare word of these characters is looked up as a name; anything with a path separator, a comma or a dot
# (`./small`, `small,0`, `small.onnx`) is a path, as --model always read it.
_NAME_LIKE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class BundledModel:
    """A registered name and the folder its files are (or would be) in."""

    name: str
    folder: str

    @property
    def prefix(self) -> str:
        """The MXNet checkpoint's PREFIX (epoch 0); the other files are named from it."""
        return os.path.join(self.folder, STEM if self.name == DEFAULT else f"{STEM}-{self.name}")

    @property
    def onnx(self) -> str:
        return self.prefix + ".onnx"

    @property
    def calibration(self) -> str:
        return self.prefix + CALIBRATION_SUFFIX

    @property
    def license_file(self) -> str:
        return self.prefix + LICENSE_SUFFIX

    @property
    def terms(self) -> str:
        return REGISTERED[self.name][0]

    @property
    def what(self) -> str:
        return REGISTERED[self.name][1]

    @property
    def has_onnx(self) -> bool:
        return os.path.isfile(self.onnx)

    @property
    def has_checkpoint(self) -> bool:
        return os.path.isfile(f"{self.prefix}-0000.params")

    @property
    def available(self) -> bool:
        return self.has_onnx or self.has_checkpoint

    @property
    def spec(self) -> str:
        """What --model would say for it as a path: the .onnx when present, else PREFIX,0."""
        return self.onnx if self.has_onnx else f"{self.prefix},0"

    def files(self, calibration: bool = True) -> list[str]:
        """Every file the model is read from (present or not, the checkpoint's epochs as found), and its
        licence file when there is one: the inputs no output may replace."""
        found = [self.onnx, f"{self.prefix}-symbol.json"]
        found += sorted(glob.glob(glob.escape(self.prefix) + "-[0-9][0-9][0-9][0-9].*"))
        if calibration:
            found.append(self.calibration)
        return found + ([self.license_file] if os.path.isfile(self.license_file) else [])


def model_dirs() -> list[str]:
    """The folders searched for the registered names, first match wins: $AGEGENDER_MODELS_DIR's, then the
    built-in one."""
    extra = [d for d in os.environ.get(MODELS_DIR_ENV, "").split(os.pathsep) if d.strip()]
    return extra + [BUILTIN_DIR]


def find(name: str) -> BundledModel | None:
    """The registered `name` in the first folder that has its files; None when none has."""
    for folder in model_dirs():
        model = BundledModel(name, folder)
        if model.available:
            return model
    return None


def available() -> list[BundledModel]:
    """The registered models present here, in the table's order."""
    return [m for m in (find(n) for n in REGISTERED) if m is not None]


def _names_here() -> str:
    return ", ".join(m.name for m in available()) or "none"


def lookup(name: str) -> BundledModel:
    """The registered model `name`; a one-line UserError naming the models available here otherwise."""
    if name not in REGISTERED:
        raise UserError(f"no bundled model named {name!r} (registered: {', '.join(REGISTERED)}; "
                        f"available here: {_names_here()})")
    model = find(name)
    if model is None:
        raise UserError(f"bundled model {name!r} is not installed here "
                        f"(no {os.path.basename(BundledModel(name, '').onnx)} in {os.pathsep.join(model_dirs())}); "
                        f"available here: {_names_here()}")
    return model


def is_name_like(spec: str) -> bool:
    """Whether --model `spec` is read as a name: a bare word, no path separator, comma or dot."""
    return bool(_NAME_LIKE.fullmatch(spec))


def _is_path_here(spec: str) -> str | None:
    """The file that makes the bare word `spec` a path in the current folder: itself (a file or folder),
    or the checkpoint it would be the PREFIX of; None when there is none."""
    for path in (spec, f"{spec}-symbol.json", *glob.glob(glob.escape(spec) + "-[0-9][0-9][0-9][0-9].params")):
        if os.path.lexists(path):
            return path
    return None


def resolve(spec: str | None, strict: bool = True, flag: str = "--model") -> BundledModel | None:
    """--model `spec` as a bundled model, or None when it is a path. None or "" is `default` (returned even
    when absent: the loader says what to pass instead). A registered name that is absent, or that is also a
    file or a checkpoint in the current folder (ambiguous), is a one-line UserError; so is a bare word that
    is neither a registered name nor a path here, unless `strict` is off (then it is a path: `model_files`
    lists what a run would read, and the loader says what is missing). `flag` names the option in it."""
    if not spec:
        return find(DEFAULT) or BundledModel(DEFAULT, BUILTIN_DIR)
    if not is_name_like(spec):
        return None
    here = _is_path_here(spec)
    if spec in REGISTERED:
        if here is not None:
            raise UserError(f"model {spec!r} is ambiguous: a bundled model's name, and {here} is in this folder; "
                            f"write ./{spec} for the one here, or run from another folder for the bundled model")
        return lookup(spec)
    if here is not None or not strict:
        return None
    raise UserError(f"{flag} {spec}: neither a bundled model's name (available here: {_names_here()}) nor a "
                    f"file here (a .onnx file, or PREFIX,EPOCH of a checkpoint)")


def for_path(path: str) -> BundledModel | None:
    """The registered model whose .onnx or checkpoint PREFIX `path` is (by real path): an engine loaded from
    a path still knows it is a bundled model, and under which terms."""
    real = os.path.realpath(path)
    for model in available():
        if real in (os.path.realpath(model.onnx), os.path.realpath(model.prefix)):
            return model
    return None


__all__ = ["BundledModel", "REGISTERED", "DEFAULT", "MODELS_DIR_ENV", "BUILTIN_DIR", "OPEN_TERMS", "available",
           "find", "for_path", "is_name_like", "lookup", "model_dirs", "resolve", "LICENSE_SUFFIX"]
