"""Writing outputs safely: a reader never sees a half-written file, and nothing but the named output is
ever touched.

- A regular file (or a new name) is written to a fresh temporary file created exclusively (O_EXCL,
  random name) in the same folder, then renamed over the target: a symlink planted at a predictable
  temporary name cannot redirect the write, and an interrupted run leaves the old file as it was.
- A symlink is followed: its target is what gets replaced, the link stays a link.
- A device, a FIFO or `-` (stdout) is written through, never replaced by a regular file (replacing
  `/dev/stdout` as root breaks it for the whole machine).
- No output may be an input (same path, same file through links or hard links): `refuse_inputs` says so
  in one line before any work.
- Streaming outputs (`open_output`) go to the temporary file as they are produced and are renamed when the
  run ends (normally or on Ctrl-C / SIGTERM: what was done is complete); a run that fails leaves the old
  file as it was.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
from typing import IO, Iterable, Iterator

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


def _copy_into_stream(tmp: str, path: str) -> None:
    """The finished bytes of `tmp` written through to `-` (stdout) or a device / FIFO."""
    with open(tmp, "rb") as src:
        if path == "-":
            sys.stdout.flush()
            shutil.copyfileobj(src, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            with open(os.path.realpath(path), "wb") as dst:
                shutil.copyfileobj(src, dst)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "", keep_on_interrupt: bool = False) -> Iterator[str]:
    """A fresh temporary path for any writer that takes a file name (MXNet's savers, OpenCV's video
    writer); when the block completes it is renamed over the target, or, for `-`, a device or a FIFO
    (whose writers cannot seek), copied through to it from a temporary file in the system's temp folder.
    Removed when the block fails; with `keep_on_interrupt`, Ctrl-C / SIGTERM still put it in place."""
    stream = is_stream(path)
    if stream:
        fd, tmp = tempfile.mkstemp(prefix=".agegender.", suffix=".tmp" + suffix)
        os.close(fd)
    else:
        tmp = temp_beside(path, suffix)
    try:
        try:
            yield tmp
        except KeyboardInterrupt:
            if not keep_on_interrupt:
                raise
            _finish(tmp, path, stream)
            raise
        _finish(tmp, path, stream)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _finish(tmp: str, path: str, stream: bool) -> None:
    if stream:
        _copy_into_stream(tmp, path)
    else:
        replace_with(tmp, path)


@contextlib.contextmanager
def open_output(path: str, binary: bool = False) -> Iterator[IO]:
    """A file to stream an output into (JSON lines): `-` is stdout, a device or a FIFO is written through
    as lines come, anything else goes to an exclusive temporary file beside it, renamed over `path` when
    the block ends normally or by Ctrl-C / SIGTERM (the lines so far, complete), removed when it fails (the
    old file stays)."""
    kw = {} if binary else {"encoding": "utf-8"}
    if path == "-":
        yield sys.stdout.buffer if binary else sys.stdout
        (sys.stdout.buffer if binary else sys.stdout).flush()
        return
    if is_stream(path):
        f = open(os.path.realpath(path), "wb" if binary else "w", **kw)
        try:
            yield f
        except BaseException:
            with contextlib.suppress(OSError):  # the error that stopped the run is the one to report
                f.close()
            raise
        try:
            f.close()
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, path) from None
        return
    tmp = temp_beside(path)
    f = open(tmp, "wb" if binary else "w", **kw)
    try:
        try:
            yield f
        except KeyboardInterrupt:
            f.close()
            replace_with(tmp, path)
            raise
        f.close()
        replace_with(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            f.close()
        with contextlib.suppress(OSError):
            os.remove(tmp)  # gone already after the rename


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


def _identity(path: str) -> tuple:
    """What makes two names the same file: the device and inode of an existing file (hard links and
    symlinks included), else the resolved path."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", real)


def unique_files(paths: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """`paths` with each file kept once, where first named (the same file: the same path, through links, or
    the same inode), and the (dropped, kept) pairs, for the caller to say what it dropped."""
    kept: dict[tuple, str] = {}
    dropped = []
    for path in paths:
        key = _identity(path)
        if key in kept:
            dropped.append((path, kept[key]))
        else:
            kept[key] = path
    return list(kept.values()), dropped


def named(exc: OSError, path: str) -> OSError:
    """`exc` with `path` as its file name when it has none (a failed write on an open file carries no
    name), so the one-line error says which output failed."""
    return exc if exc.filename else OSError(exc.errno, exc.strerror, path)


def refuse_inputs(outputs: Iterable[tuple[str, str | None]], inputs: Iterable[str]) -> None:
    """The one check every tool runs before any work: UserError (one line, exit 2) when an output (flag,
    path) is one of the input files (same path, same inode, through links). `-` is never an input; `None`
    outputs are skipped. Inputs that do not exist are compared by their resolved path."""
    known: dict[tuple, str] = {}
    for path in inputs:
        if path and path != "-":
            known.setdefault(_identity(path), path)
    for flag, path in outputs:
        if not path or path == "-":
            continue
        hit = known.get(_identity(path))
        if hit is not None:
            same = "" if os.path.abspath(hit) == os.path.abspath(path) else f" (the same file as {hit})"
            raise UserError(f"{flag} {path} is an input{same}: it would be replaced; choose another name")


def refuse_same_outputs(outputs: Iterable[tuple[str, str | None]]) -> None:
    """UserError (one line) when two named outputs (flag, path) are the same file (same path, or the same
    file through links): one would overwrite the other. `-` and `None` are skipped."""
    seen: dict[tuple, str] = {}
    for flag, path in outputs:
        if not path or path == "-":
            continue
        other = seen.setdefault(_identity(path), flag)
        if other != flag:
            raise UserError(f"{other} and {flag} are the same file: {path}")


def refuse_prefix(flag: str, prefix: str, inputs: Iterable[str]) -> None:
    """`refuse_inputs` for a tool whose outputs are every `PREFIX-*` file (train.py's checkpoints, logs and
    metrics): UserError when an input file resolves to such a name."""
    root = os.path.realpath(prefix) + "-"
    for path in inputs:
        if path and os.path.realpath(path).startswith(root):
            raise UserError(f"{flag} {prefix} would write over the input {path} (its outputs are {prefix}-*); "
                            "choose another prefix")


def dataset_files(path: str) -> list[str]:
    """A packed split and what is read with it: `X.rec` -> X.rec, X.idx, X.lst, X-attrs.csv and the folder's
    meta.json (a `.lst` or `.idx` gives the same set)."""
    base, ext = os.path.splitext(path)
    if ext.lower() not in (".rec", ".idx", ".lst"):
        return [path]
    return [base + e for e in (".rec", ".idx", ".lst", "-attrs.csv")] + \
        [os.path.join(os.path.dirname(path), "meta.json")]


__all__ = ["atomic_path", "open_output", "refuse_inputs", "refuse_same_outputs", "refuse_prefix", "named", "unique_files", "dataset_files", "temp_beside", "replace_with", "write_atomic", "save_figure", "check_writable", "is_stream"]
