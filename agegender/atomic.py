"""Writing outputs safely: a reader never sees a half-written file, and nothing but the named output is
ever touched.

- A regular file (or a new name) is written to a fresh temporary file created exclusively (O_EXCL,
  random name) in the same folder, then renamed over the target: a symlink planted at a predictable
  temporary name cannot redirect the write, and an interrupted run leaves the old file as it was.
- A symlink is followed: its target is what gets replaced, the link stays a link.
- A device, a FIFO or `-` (stdout) is written through, never replaced by a regular file (replacing
  `/dev/stdout` as root breaks it for the whole machine).
"""
from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from typing import Iterator

from agegender.errors import UserError


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def is_stream(path: str) -> bool:
    """True for `-` and for existing non-regular files (devices, FIFOs, sockets): written through."""
    if path == "-":
        return True
    real = os.path.realpath(path)
    return os.path.exists(real) and not stat.S_ISREG(os.stat(real).st_mode)


def temp_beside(path: str, suffix: str = "") -> str:
    """A new, empty file created exclusively (random name, O_EXCL) in the folder of `path` (of its
    symlink target, if it is a link), named `.NAME.XXXX.tmp` (+ `suffix`, for writers that pick the format
    by extension)."""
    real = os.path.realpath(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(real)}.", suffix=".tmp" + suffix,
                               dir=os.path.dirname(real) or ".")
    os.close(fd)
    return tmp


def replace_with(tmp: str, path: str) -> None:
    """Rename a finished temporary file over `path` (its symlink target), with the mode of the file
    replaced, or the umask's for a new one."""
    real = os.path.realpath(path)
    os.chmod(tmp, stat.S_IMODE(os.stat(real).st_mode) if os.path.isfile(real) else _umask_mode())
    os.replace(tmp, real)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A fresh temporary path beside `path` for any writer that takes a file name (MXNet's savers);
    renamed over the target when the block completes, removed when it fails."""
    tmp = temp_beside(path)
    try:
        yield tmp
        replace_with(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_atomic(path: str, data: str | bytes) -> None:
    """Write `data` to `path` (see the module's rules): atomically for files, through for streams."""
    binary = isinstance(data, bytes)
    if path == "-":
        (sys.stdout.buffer if binary else sys.stdout).write(data)
        sys.stdout.flush()
        return
    if is_stream(path):
        with open(os.path.realpath(path), "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            f.write(data)
        return
    with atomic_path(path) as tmp:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            f.write(data)


def save_figure(fig, path: str, dpi: int = 90) -> None:
    """A matplotlib figure as PNG, through `write_atomic` (so `-`, devices and links work too)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    write_atomic(path, buf.getvalue())


def check_writable(path: str, what: str = "output") -> None:
    """Fail early, in one line, when `path` cannot be written (missing folder, read-only, /proc), so a
    long run does not end in a traceback; creates nothing."""
    if path == "-" or is_stream(path):
        if path != "-" and not os.access(os.path.realpath(path), os.W_OK):
            raise UserError(f"cannot write {what} {path}: permission denied")
        return
    real = os.path.realpath(path)
    folder = os.path.dirname(real) or "."
    if os.path.isdir(real):
        raise UserError(f"cannot write {what} {path}: it is a folder")
    if not os.path.isdir(folder):
        raise UserError(f"cannot write {what} {path}: folder {os.path.dirname(path) or '.'} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".check.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.remove(tmp)
    except OSError as exc:
        raise UserError(f"cannot write {what} {path}: {exc.strerror or exc}") from None


__all__ = ["atomic_path", "temp_beside", "replace_with", "write_atomic", "save_figure", "check_writable", "is_stream"]
