"""The one exception type a script turns into a one-line error and exit code 2."""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix (bad path, bad flag, nothing to do): reported in one line."""


def short_reason(exc: BaseException) -> str:
    """One line saying why `exc` happened: MXNet's and onnxruntime's messages carry a C++ stack, whose
    last line is the reason (e.g. "Check failed: fi->Read(data): Invalid NDArray file format")."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("Traceback", "File ", "[bt]", "Stack trace"))] or ["unknown error"]
    reason = lines[-1]
    for prefix in ("MXNetError: ", "mxnet.base.MXNetError: "):
        reason = reason[len(prefix):] if reason.startswith(prefix) else reason
    return reason[:300]


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a script's main(); a UserError prints `error: ...` and exits 2, Ctrl-C exits 130."""
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.exit(0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
