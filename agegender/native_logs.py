"""MXNet's C++ INFO lines (`[10:27:07] ../src/io/iter_image_recordio_2.cc:830: Create ImageRecordIter2 ...`)
are written by the library straight to file descriptor 2, with no switch in MXNet 1.9.1 to turn them off.
Our scripts hide them by default; `--verbose` (or AGEGENDER_VERBOSE=1) shows them again."""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

VERBOSE_ENV = "AGEGENDER_VERBOSE"
# dmlc's LOG(INFO) format from MXNet's data-loading code; anything else (warnings, errors) passes through
INFO_LINE = re.compile(rb"^\[\d\d:\d\d:\d\d\] \S*src/io/\S+\.(cc|h):\d+: (?!.*(Check failed|[Ee]rror|[Ww]arning))")


def set_verbose(verbose: bool) -> None:
    """`--verbose`: let the native INFO lines through in this process and its children."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


@contextlib.contextmanager
def native_info_hidden() -> Iterator[None]:
    """Drop MXNet's C++ INFO lines written to stderr during the block (unless verbose); every other line
    written there meanwhile is passed on when the block ends."""
    if os.environ.get(VERBOSE_ENV) == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().splitlines(keepends=True) if not INFO_LINE.match(line)]
            if kept:
                os.write(2, b"".join(kept))


__all__ = ["native_info_hidden", "set_verbose", "VERBOSE_ENV"]
