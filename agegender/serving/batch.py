"""Parquet output of labelled faces (infer.py --parquet, and the shards of a Ray run): one row per face,
with the fields of the JSON face objects (`agegender.serving.inference.to_json`, agegender/schema/face.schema.json)
plus the image path and the schema version (the face's number, `face`, is the JSON's: from 1); one row per image
that failed (path and error, no face columns); one row per image in which no face was found (face null, no
error), so that every input is accounted for in the file itself.

Rows are built from the JSON documents through one function, `rows_from_doc`, so the Parquet and the JSON
output cannot drift apart. Files are written in row groups as images complete, into a temporary file beside
the target that is renamed over it when the writing completes (`agegender.atomic`). pyarrow is imported
here only: nothing else of the project needs it.
"""
from __future__ import annotations

import contextlib
import errno
import os

import pyarrow as pa
import pyarrow.parquet as pq

from agegender.atomic import check_writable, is_stream, replace_with, temp_beside
from agegender.errors import UserError
from agegender.schema import FACE_FIELDS as SCHEMA_FACE_FIELDS
from agegender.schema import SCHEMA_VERSION

# The Arrow type of each face field of the output schema (agegender/schema); `image`, `face` and `error` are
# the row's own columns (`error`: why the image failed, or why a face has no labels).
ARROW_TYPES: dict[str, pa.DataType] = {
    "box": pa.list_(pa.int32()),            # x1, y1, x2, y2
    "score": pa.float64(),
    "landmarks": pa.list_(pa.list_(pa.float64())),  # 5 (x, y): eyes, nose, mouth corners
    "gender": pa.string(),
    "p_male": pa.float64(),
    "age": pa.float64(),
    "age_low": pa.int32(),
    "age_high": pa.int32(),
    "flags": pa.list_(pa.string()),          # quality reasons; empty: fine
}
# the schema's order, less `face` (the row's own column, beside the image)
FACE_FIELDS: dict[str, pa.DataType] = {k: ARROW_TYPES[k] for k in SCHEMA_FACE_FIELDS if k != "face"}
SCHEMA = pa.schema([pa.field("schema_version", pa.int32(), nullable=False),
                    pa.field("image", pa.string(), nullable=False), pa.field("face", pa.int32()),
                    *(pa.field(k, t) for k, t in FACE_FIELDS.items()), pa.field("error", pa.string())],
                   metadata={"agegender_schema_version": str(SCHEMA_VERSION)})
ROWS_PER_GROUP = 4096  # a row group is flushed at this many rows (and at the end)


def rows_from_doc(doc: dict) -> list[dict]:
    """The Parquet rows of one image's JSON document (`to_json`): one per face (`face` = its number in the
    image, from 1, as in the JSON), or a single row with `face` null (the image's `error`, or none: no face)."""
    base = {"schema_version": doc.get("schema_version", SCHEMA_VERSION), "image": doc["image"]}
    if doc.get("error") or not doc["faces"]:
        return [{**base, "face": None, "error": doc.get("error")}]
    return [{**base, "face": face["face"], **{k: face.get(k) for k in FACE_FIELDS}, "error": face.get("error")}
            for face in doc["faces"]]


def docs_from_table(table: pa.Table) -> list[dict]:
    """The JSON documents back from Parquet rows (the inverse of `rows_from_doc`, in row order): what
    tests and readers use to compare a Parquet output with `infer.py --json`."""
    docs: dict[str, dict] = {}
    for row in table.to_pylist():
        doc = docs.setdefault(row["image"], {"schema_version": row["schema_version"], "image": row["image"],
                                             "faces": []})
        if row["face"] is None:
            if row["error"]:
                doc["error"] = row["error"]
            continue
        face = {"face": row["face"], **{k: row[k] for k in FACE_FIELDS}}
        if row["error"]:
            face["error"] = row["error"]
        doc["faces"].append(face)
    return list(docs.values())


def check_target(path: str) -> None:
    """Fail early, in one line, when `path` cannot take a Parquet file (creates nothing)."""
    if path == "-":
        raise UserError("--parquet needs a file name (Parquet is binary; stdout carries the text output)")
    if os.path.isdir(path):
        raise UserError(f"--parquet {path} is a folder; without --ray it names one .parquet file")
    check_writable(path, "--parquet")


class ParquetSink:
    """One Parquet file written row group by row group as documents are added. A regular file is written to
    a fresh temporary file beside `path`, renamed over it by `close()` (a reader never sees half a file;
    leaving the `with` block by Ctrl-C or SIGTERM does the same with the rows so far, as the JSON lines do;
    `abort()`, or leaving it on any other exception, removes it and leaves any old file as it was);
    a FIFO or a device is written through."""

    def __init__(self, path: str, rows_per_group: int = ROWS_PER_GROUP):
        check_target(path)
        self.path, self.rows_per_group = path, rows_per_group
        self.stream = is_stream(path)
        self.tmp = None if self.stream else temp_beside(path, ".parquet")
        self._file = open(os.path.realpath(path), "wb") if self.stream else None
        self._writer = pq.ParquetWriter(self._file if self.stream else self.tmp, SCHEMA)
        self._rows: list[dict] = []
        self.rows = 0

    def add(self, doc: dict) -> None:
        """One image's document; a row group is written once enough rows are waiting."""
        self._rows += rows_from_doc(doc)
        if len(self._rows) >= self.rows_per_group:
            self.flush()

    def flush(self) -> None:
        """Write the waiting rows as one row group."""
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=SCHEMA))
            self.rows += len(self._rows)
            self._rows = []

    def close(self) -> None:
        """Write what is waiting and the footer, then put the file in place. When that fails (a full disk),
        the temporary file is removed (the target keeps what it had) and the OSError names the output."""
        try:
            self.flush()
            self._writer.close()
            if self._file is not None:
                self._file.close()
            if self.tmp is not None:
                replace_with(self.tmp, self.path)
                self.tmp = None
        except OSError as exc:
            self.abort()
            # pyarrow's errors carry no errno: EIO, so that the script reports it in one line (exit 1)
            raise OSError(exc.errno or errno.EIO, exc.strerror or str(exc), self.path) from None

    def abort(self) -> None:
        """Drop the file being written (the target keeps what it had)."""
        with contextlib.suppress(Exception):
            self._writer.close()
        if self._file is not None:
            self._file.close()
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(self.tmp)
            self.tmp = None

    def __enter__(self) -> "ParquetSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):  # Ctrl-C / SIGTERM: the rows so far
            self.close()
        else:
            self.abort()


def write_parquet(path: str, docs: list[dict]) -> int:
    """Write documents to one Parquet file (atomically); returns the number of rows."""
    with ParquetSink(path) as sink:
        for doc in docs:
            sink.add(doc)
        sink.flush()
        return sink.rows


__all__ = ["FACE_FIELDS", "SCHEMA", "ParquetSink", "check_target", "rows_from_doc", "docs_from_table", "write_parquet"]
