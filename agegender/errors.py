"""The one exception type a script turns into a one-line error and exit code 2."""
from __future__ import annotations

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


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a script's main(); a UserError prints `error: ...` and exits 2, Ctrl-C exits 130 and SIGTERM
    143 (each after the script's own clean-up, with one line)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.exit(0)
    except KeyboardInterrupt as exc:
        print("terminated" if isinstance(exc, Terminated) else "interrupted", file=sys.stderr)
        sys.exit(interrupt_status(exc))
    sys.exit(code or 0)
