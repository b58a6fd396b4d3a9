"""The inputs of infer.py, with or without --ray: image files, folders, globs, and lists of paths (a `.txt`
list, one path a line; a `.parquet` list, its `path` or `image` column). One way of naming inputs for both.
pyarrow is imported only when a `.parquet` list is given."""
from __future__ import annotations

import os

from agegender.errors import UserError, read_text
from agegender.serving.inference import find_images

LIST_COLUMNS = ("path", "image")  # the column of paths in a .parquet list of inputs, first found


def is_list(spec: str) -> bool:
    """A `.txt` or `.parquet` file names a list of inputs, not an image."""
    return spec.lower().endswith((".txt", ".parquet")) and os.path.isfile(spec)


def read_list(spec: str) -> list[str]:
    """The paths of a `.txt` list (blank lines and `#` comments skipped) or of a `.parquet` list."""
    if spec.lower().endswith(".parquet"):
        return _parquet_list(spec)
    # read as every user-named text file is: a byte-order mark allowed, a line that is not UTF-8 named
    text = read_text(spec, "the list of inputs")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _parquet_list(path: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        import pyarrow as pa

        schema = pq.read_schema(path)
        names = schema.names
        col = next((c for c in LIST_COLUMNS if c in names), None)
        if col is None:
            raise UserError(f"the list of inputs {path} has no column {' or '.join(LIST_COLUMNS)} "
                            f"(has: {', '.join(names)})")
        kind = schema.field(col).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):  # numbers are no paths
            raise UserError(f"the list of inputs {path}: column {col} holds {kind}, not paths (text)")
        return [p for p in pq.read_table(path, columns=[col]).column(col).to_pylist() if p]
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 -- pyarrow raises several types for a file that is not Parquet
        raise UserError(f"cannot read the list of inputs {path}: {str(exc).splitlines()[0]}") from None


def expand_inputs(specs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Image paths from files, folders and globs (`find_images`) and from lists (`read_list`), in order,
    each once, where first named: a file reached twice through folders, globs or links is one input (its
    real path), a listed path is one input per spelling (listed paths are not checked here: a missing one
    becomes that input's error). Also returns the (spec, reason) of each spec that gives nothing."""
    paths: list[str] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for spec in specs:
        if is_list(spec):
            found = read_list(spec)
            if not found:
                problems.append((spec, "the list holds no path"))
            keys = found
        else:
            found, missing = find_images([spec])
            problems += missing
            keys = [os.path.realpath(p) for p in found]
        for path, key in zip(found, keys):
            if key not in seen and path not in seen:
                seen.update((key, path))
                paths.append(path)
    return paths, problems


def list_files(specs: list[str]) -> list[str]:
    """The specs that are lists of inputs (inputs too: no output may be written over one)."""
    return [s for s in specs if is_list(s)]


__all__ = ["expand_inputs", "is_list", "list_files", "read_list", "LIST_COLUMNS"]
