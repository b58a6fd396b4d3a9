"""The one exception type a script turns into a one-line error and exit code 2."""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix (bad path, bad flag, nothing to do): reported in one line."""


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
