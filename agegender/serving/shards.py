"""The output folder of a resumable batch run (infer.py --ray --parquet DIR; docs/ray.md): small Parquet shards
keyed by their inputs, a manifest each, and the rules that decide what a rerun keeps.

- **Plan.** The inputs, in order, are cut into shards by content-defined chunking: a shard ends after an
  input whose path hashes to a boundary (about one in `shard_size`), or at 4 x `shard_size` inputs, and
  never before `shard_size` / 4. Whether a path ends a shard depends on that path alone, so adding or
  removing one input changes only the shard it falls in (and, rarely, the next).
- **Key.** A shard is named by a hash of its sorted input paths and the settings that produce its rows
  (`DIR/part-<key>.parquet`, manifest `DIR/_manifest/part-<key>.json`): a rerun reuses every shard whose
  inputs and settings did not change, whatever was added or removed elsewhere.
- **Complete.** A shard counts as done only when its manifest is well formed and names exactly the planned
  inputs and settings, its Parquet file reads, and its rows hold exactly those inputs with the manifest's
  counts. Anything else is damaged: moved to `DIR/_stale/` (said in one line) and redone.
- **Stale.** Shards that no shard of the plan needs any more (other inputs, other settings, an earlier
  `--shard-size`) are moved to `DIR/_stale/` and reported, never deleted unless `overwrite` says so.
  Readers of `DIR` (pyarrow, pandas, Spark) skip folders whose names start with `_`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from agegender.atomic import write_atomic
from agegender.errors import UserError
from agegender.serving.batch import SCHEMA, write_parquet

SHARD_RE = re.compile(r"^part-([0-9A-Za-z]+)\.parquet$")
MANIFEST_RE = re.compile(r"^part-([0-9A-Za-z]+)\.json$")
MANIFEST_DIR = "_manifest"
STALE_DIR = "_stale"
COUNTS = ("images", "faces", "failures")


def _hash(text: str, size: int = 8) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=size).digest()


def plan_shards(paths: list[str], shard_size: int) -> list[list[str]]:
    """The inputs in order, cut into shards of about `shard_size` inputs (content-defined: see the module)."""
    least, most = max(1, shard_size // 4), max(1, 4 * shard_size)
    odds = max(1, shard_size - least)  # one path in `odds` is a boundary: shards average about shard_size
    shards: list[list[str]] = []
    current: list[str] = []
    for path in paths:
        current.append(path)
        boundary = int.from_bytes(_hash(path), "big") % odds == 0
        if (boundary and len(current) >= least) or len(current) >= most:
            shards.append(current)
            current = []
    if current:
        shards.append(current)
    return shards


def shard_key(inputs: list[str], fingerprint: dict) -> str:
    """The shard's name part: a hash of its sorted inputs and the settings that make its rows."""
    text = json.dumps(fingerprint, sort_keys=True) + "\0" + "\0".join(sorted(inputs))
    return _hash(text, 10).hex()


def shard_name(key: str) -> str:
    return f"part-{key}.parquet"


def manifest_path(out_dir: str, key: str) -> str:
    return os.path.join(out_dir, MANIFEST_DIR, f"part-{key}.json")


@dataclass
class OutputState:
    """What `prepare_output` found: the manifests of the shards already complete (by key), and what it moved
    aside (or deleted, with overwrite)."""

    done: dict[str, dict] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)          # shard names no planned shard needs
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (shard name, why)


def counts_of(docs: list[dict]) -> dict:
    """images / faces / failures of a shard's documents."""
    failed = sum(1 for d in docs if d.get("error"))
    return {"images": len(docs) - failed, "faces": sum(len(d["faces"]) for d in docs), "failures": failed}


def check_shard(out_dir: str, key: str, inputs: list[str], fingerprint: dict) -> str | None:
    """None when the shard `key` is complete for `inputs` and `fingerprint`; else why not (one phrase)."""
    try:
        with open(manifest_path(out_dir, key), encoding="utf-8") as f:
            m = json.load(f)
    except FileNotFoundError:
        return "it has no manifest"
    except (OSError, ValueError) as exc:
        return f"its manifest does not read ({str(exc).splitlines()[0]})"
    if not isinstance(m, dict) or not isinstance(m.get("inputs"), list) or not isinstance(m.get("settings"), dict) \
            or not all(isinstance(m.get(k), int) and m[k] >= 0 for k in COUNTS):
        return "its manifest is not well formed"
    if m["inputs"] != inputs or m["settings"] != fingerprint:
        return "its manifest names other inputs or settings"
    try:
        table = pq.read_table(os.path.join(out_dir, shard_name(key)), columns=["image", "face", "error"])
    except FileNotFoundError:
        return "its Parquet file is missing"
    except Exception as exc:  # noqa: BLE001 -- pyarrow raises several types for a damaged file
        return f"its Parquet file does not read ({str(exc).splitlines()[0]})"
    images = table.column("image").to_pylist()
    faces = table.column("face").to_pylist()
    errors = table.column("error").to_pylist()
    failed = {im for im, f, e in zip(images, faces, errors) if f is None and e}
    got = {"images": len(set(images)) - len(failed), "faces": sum(f is not None for f in faces),
           "failures": len(failed)}
    if set(images) != set(inputs) or len(images) < len(inputs):
        return "its rows do not hold its inputs"
    if got != {k: m[k] for k in COUNTS}:
        return "its rows do not match its manifest's counts"
    return None


def _move_aside(out_dir: str, name: str, overwrite: bool) -> None:
    """Move a shard (Parquet file and manifest, whichever exist) into DIR/_stale/, or delete it with overwrite.
    A name already in _stale/ gets a number: nothing is ever replaced there."""
    key = name[len("part-"):-len(".parquet")]
    files = [(os.path.join(out_dir, name), name), (manifest_path(out_dir, key), f"part-{key}.json")]
    stale = os.path.join(out_dir, STALE_DIR)
    for src, base in files:
        if not os.path.exists(src):
            continue
        if overwrite:
            os.remove(src)
            continue
        os.makedirs(stale, exist_ok=True)
        dst, n = os.path.join(stale, base), 1
        while os.path.exists(dst):
            n += 1
            stem, ext = os.path.splitext(base)
            dst = os.path.join(stale, f"{stem}.{n}{ext}")
        shutil.move(src, dst)


def prepare_output(out_dir: str, planned: dict[str, list[str]], fingerprint: dict,
                   overwrite: bool = False) -> OutputState:
    """Create `out_dir` if needed; find which planned shards (key -> inputs) are complete; move aside (or
    delete, with `overwrite`) every shard that is damaged or that the plan does not need; remove the
    temporary files of an interrupted run. A folder with part files but no manifest folder is not ours, and
    is refused untouched."""
    if os.path.isdir(out_dir) and not os.path.isdir(os.path.join(out_dir, MANIFEST_DIR)) and any(
            SHARD_RE.match(n) for n in os.listdir(out_dir)):  # someone else's part files: never touched
        raise UserError(f"{out_dir} holds part-*.parquet files that infer.py --ray did not write (no "
                        f"{MANIFEST_DIR}/); choose a new or empty folder")
    try:
        os.makedirs(os.path.join(out_dir, MANIFEST_DIR), exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK):
        raise UserError(f"cannot write into output folder {out_dir}: permission denied")
    state = OutputState()
    present = {m.group(1) for m in map(SHARD_RE.match, os.listdir(out_dir)) if m}
    present |= {m.group(1) for m in map(MANIFEST_RE.match, os.listdir(os.path.join(out_dir, MANIFEST_DIR))) if m}
    for key in sorted(present):
        if key not in planned:
            state.stale.append(shard_name(key))
            _move_aside(out_dir, shard_name(key), overwrite)
            continue
        why = check_shard(out_dir, key, planned[key], fingerprint)
        if why is None:
            with open(manifest_path(out_dir, key), encoding="utf-8") as f:
                state.done[key] = json.load(f)
        else:
            state.damaged.append((shard_name(key), why))
            _move_aside(out_dir, shard_name(key), overwrite)
    for folder in (out_dir, os.path.join(out_dir, MANIFEST_DIR)):  # an interrupted write's temporary files
        for name in os.listdir(folder):
            if name.startswith(".part-") and ".tmp" in name:
                os.remove(os.path.join(folder, name))
    return state


def write_shard(out_dir: str, key: str, inputs: list[str], docs: dict[str, dict], fingerprint: dict) -> dict:
    """Write one complete shard (Parquet, then its manifest: a shard without a manifest is redone); returns
    the manifest."""
    ordered = [docs[p] for p in inputs]
    os.makedirs(os.path.join(out_dir, MANIFEST_DIR), exist_ok=True)
    write_parquet(os.path.join(out_dir, shard_name(key)), ordered)
    manifest = {"inputs": inputs, "settings": fingerprint, **counts_of(ordered)}
    write_atomic(manifest_path(out_dir, key), json.dumps(manifest))
    return manifest


def read_shards(out_dir: str) -> pa.Table:
    """Every shard of `out_dir` as one table (for tests and small outputs; use pyarrow.dataset for big ones)."""
    files = sorted(os.path.join(out_dir, n) for n in os.listdir(out_dir) if SHARD_RE.match(n))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else SCHEMA.empty_table()


__all__ = ["OutputState", "check_shard", "counts_of", "manifest_path", "plan_shards", "prepare_output",
           "read_shards", "shard_key", "shard_name", "write_shard", "MANIFEST_DIR", "STALE_DIR", "SHARD_RE"]
