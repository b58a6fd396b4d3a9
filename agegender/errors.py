"""The one exception type a script turns into a one-line error and exit code 2."""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
from typing import Callable


class UserError(Exception):
    """A problem the user can fix (bad path, bad flag, nothing to do): reported in one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers, systemd and containers send), raised like Ctrl-C so that the same
    clean-up runs; the script then exits 143 instead of 130."""


def raise_terminated(signum=None, frame=None) -> None:
    raise Terminated()


def interrupt_status(exc: BaseException) -> int:
    """The exit status for an interruption: 143 for SIGTERM, 130 for Ctrl-C."""
    return 143 if isinstance(exc, Terminated) else 130


def short_reason(exc: BaseException) -> str:
    """One line saying why `exc` happened: MXNet's and onnxruntime's messages carry a C++ stack, whose
    last line is the reason (e.g. "Check failed: fi->Read(data): Invalid NDArray file format")."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("Traceback", "File ", "[bt]", "Stack trace"))] or ["unknown error"]
    reason = lines[-1]
    for prefix in ("MXNetError: ", "mxnet.base.MXNetError: "):
        reason = reason[len(prefix):] if reason.startswith(prefix) else reason
    if reason.startswith("Check failed:") and ": " in reason[len("Check failed:"):]:
        reason = reason.rsplit(": ", 1)[1]  # "Check failed: fi->Read(data): Invalid NDArray file format"
    return reason[:300]


# errors of writing an output that the user fixes outside the program: reported in one line, exit 1
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def read_text(path: str, what: str) -> str:
    """A text file that the user names (a list of paths, a split's .lst), read whole as UTF-8 (a byte-order
    mark allowed); UserError in one line, naming `what` and the line, when it is not UTF-8 or cannot be
    read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{what} {path}, line {line}: not UTF-8 text; save it as UTF-8") from None


class MissingDependency(UserError):
    """An optional package a feature needs is not installed."""


# What to install for an optional module (the rest: the module's own name)
PACKAGES = {"mxnet": "mxnet==1.9.1 (see requirements.txt)", "cv2": "opencv-python", "PIL": "Pillow",
            "sklearn": "scikit-learn", "skimage": "scikit-image", "ray": "'ray[data]' pyarrow (see requirements-ray.txt)"}


# Modules that an extra of the installed package brings (pyproject.toml)
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
          "mxnet": "train", "onnx": "train", "matplotlib": "train", "skimage": "train", "insightface": "insightface",
          "ray": "ray", "pyarrow": "ray"}


def missing_module_message(module: str, feature: str = "this command") -> str:
    """`this command needs mxnet, which is not installed here; pip install ...`: one line (naming the
    package's extra too, for an installed agegender)."""
    package = PACKAGES.get(module, module)
    extra = f" (or pip install 'agegender[{EXTRAS[module]}]')" if module in EXTRAS else ""
    return f"{feature} needs {module}, which is not installed here; pip install {package}{extra}"


def require(module: str, feature: str):
    """Import `module` for `feature`, or raise MissingDependency saying which package to install (one line
    instead of a ModuleNotFoundError traceback; run_cli also turns any other missing module into one line)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(missing_module_message(module.split(".")[0], feature)) from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's own flush at exit cannot fail a second time
    (a closed pipe, a full disk)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a script's main(); a UserError prints `error: ...` and exits 2, Ctrl-C exits 130 and SIGTERM
    143 (each after the script's own clean-up, with one line). A closed pipe on stdout (`| head`) ends the
    run quietly (exit 0, as Unix tools do); a full disk or an I/O error on an output is one line, exit 1."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)
    try:
        code = main()
        sys.stdout.flush()  # `> /dev/full`: fail here, in one line, not in the interpreter's exit
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # output piped into `head` and the like
        _silence_stdout()
        sys.exit(0)
    except KeyboardInterrupt as exc:
        print("terminated" if isinstance(exc, Terminated) else "interrupted", file=sys.stderr)
        sys.exit(interrupt_status(exc))
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if not top or top == "agegender":  # our own package broken: a bug, keep its traceback
            raise
        print(f"error: {missing_module_message(top)}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        where = exc.filename or ("standard output" if _stdout_failed() else "an output")
        _silence_stdout()
        print(f"error: cannot write {where}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)


def _stdout_failed() -> bool:
    try:
        sys.stdout.flush()
        return False
    except OSError:
        return True
