"""Write-then-rename, so a reader never sees a half-written file."""
from __future__ import annotations

import os


def write_atomic(path: str, data: str | bytes) -> None:
    """Write `data` to `path` through a temporary file renamed into place when complete."""
    tmp = f"{path}.tmp"
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(tmp, mode, **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as f:
        f.write(data)
    os.replace(tmp, path)
