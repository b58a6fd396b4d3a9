"""Write-then-rename, so a reader never sees a half-written file."""
from __future__ import annotations

import os


def tmp_name(path: str) -> str:
    """Where a file is written before it is renamed into place."""
    return f"{path}.tmp"


def write_atomic(path: str, data: str | bytes) -> None:
    """Write `data` to `path` through a temporary file renamed into place when complete."""
    tmp = tmp_name(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(tmp, mode, **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as f:
        f.write(data)
    os.replace(tmp, path)
