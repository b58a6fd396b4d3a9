"""Batch inference on a Ray cluster (infer.py --ray [ADDRESS] --parquet DIR; docs/ray.md): the photo-to-faces
path of `FaceAnalyzer` run by Ray Data over many files, with Parquet shards as output and resume.

- The inputs (files, folders, globs, or a .txt / .parquet list of paths) are split, in order, into shards of
  `shard_size` files; shard K is written as DIR/part-K.parquet (agegender/serving/batch.py's rows) once every
  one of its files has come back, then its manifest DIR/_manifest/part-K.json (its input files, the settings
  and its counts). A shard whose manifest matches the plan is complete: a rerun over the same inputs and DIR
  skips it, so an interrupted run continues where it stopped, and every input is in the output once.
- Reading, decoding, detection and alignment are Ray tasks spread over the cluster's CPUs (a worker keeps its
  detector between tasks); the attribute net runs in an actor pool (one actor per GPU with the onnx engine's
  CUDA provider where the cluster has GPUs, else CPU actors). Ray retries the tasks of a worker that dies and
  restarts a dead actor; the driver keeps one result per file, so a retried batch cannot duplicate rows.
- A file that cannot be read or analysed is a row with its error, never a failed run.

Ray is imported by `run` only; the driver writes every shard (workers need no shared file system).
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import pickle
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agegender.atomic import write_atomic
from agegender.errors import UserError, read_text
from agegender.model.age import DEFAULT_AGE_LEVEL, DEFAULT_DECODE, DEFAULT_FLIP
from agegender.data.image import MAX_PIXELS
from agegender.serving.batch import write_parquet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARD_RE = re.compile(r"^part-(\d+)\.parquet$")
MANIFEST_DIR = "_manifest"
DIE_ONCE_ENV = "AGEGENDER_RAY_TEST_DIE_ONCE"  # tests: the first net actor to find this file missing creates it and dies
LIST_COLUMNS = ("path", "image")
# What a detection task reserves: a decoded photo, its detector input and the crops. Declaring it also keeps
# Ray from fusing detection into the net's actors (their resources differ), so detection stays spread over
# every CPU of the cluster. A task whose worker dies is run again (Ray's default, 3 times).
DETECT_MEMORY = 400 * 2 ** 20
# A CPU net actor reserves a quarter of a core: the net is a small share of the work next to detection, and a
# whole core reserved for it would leave one detection task on a 2-core node instead of two.
NET_CPUS = 0  # the column of paths in a .parquet list of inputs


@dataclass(frozen=True)
class Settings:
    """What turns a photo into labelled faces (infer.py's options); all but `batch_size` are part of the
    manifest, so a rerun with other settings redoes the shards instead of mixing two models' outputs."""

    model: str | None = None
    engine: str | None = None
    det_model: str | None = None
    det_thresh: float = 0.8
    max_size: int = 1280
    min_face: float = 0.0
    age_decode: str = DEFAULT_DECODE
    flip: bool = DEFAULT_FLIP
    max_pixels: int = MAX_PIXELS
    batch_size: int = 256
    age_level: float = DEFAULT_AGE_LEVEL  # the age range's level
    drop_flagged: bool = False            # leave out the faces the quality flag marks

    def fingerprint(self) -> dict:
        d = asdict(self)
        del d["batch_size"]
        for k in ("model", "det_model"):  # the same file named two ways is the same run
            d[k] = os.path.realpath(d[k]) if d[k] and os.path.exists(d[k].split(",")[0]) else d[k]
        return d


@dataclass
class Summary:
    """What a run left under `out_dir`, and how fast this run went."""

    out_dir: str
    shards: int = 0
    resumed: int = 0            # shards complete before this run (skipped)
    images: int = 0             # images analysed (in every shard)
    faces: int = 0
    failures: int = 0           # images that could not be analysed (error rows)
    processed: int = 0          # files analysed by this run
    seconds: float = 0.0        # this run, from the first task to the last shard
    startup: float = 0.0        # connecting to (or starting) Ray
    complete: bool = False
    errors: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        state = "" if self.complete else ", interrupted (rerun the same command to resume)"
        return (f"summary: {self.images} images, {self.faces} faces, {self.failures} failed, {self.processed} "
                f"processed by this run in {self.seconds:.1f} s = {rate:.1f} photos/s (+{self.startup:.1f} s "
                f"Ray start-up), {self.resumed} of {self.shards} shards already complete{state}; output: "
                f"{os.path.join(self.out_dir, 'part-*.parquet')}")


# --- inputs and plan -------------------------------------------------------------------------------------
def expand_inputs(specs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Image paths from files, folders and globs (as infer.py reads them), and from lists: a `.txt` file (one
    path a line; blank lines and `#` comments skipped) or a `.parquet` file (its `path` or `image` column).
    Listed paths are not checked here: a missing one becomes an error row. Each path is kept once, first
    position. Also returns the (spec, reason) of each spec that gives nothing."""
    from agegender.serving.inference import find_images

    paths: list[str] = []
    problems: list[tuple[str, str]] = []
    for spec in specs:
        low = spec.lower()
        if os.path.isfile(spec) and low.endswith(".txt"):
            found = _text_list(spec)
        elif os.path.isfile(spec) and low.endswith(".parquet"):
            found = _parquet_list(spec)
        else:
            found, missing = find_images([spec])
            problems += missing
            paths += found
            continue
        if not found:
            problems.append((spec, "the list holds no path"))
        paths += found
    return list(dict.fromkeys(paths)), problems


def _text_list(path: str) -> list[str]:
    """The paths of a `.txt` list (UTF-8, a byte-order mark allowed); UserError for one that is not text."""
    text = read_text(path, "the list of inputs")
    return [ln.strip() for ln in text.split("\n") if ln.strip() and not ln.lstrip().startswith("#")]


def _parquet_list(path: str) -> list[str]:
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # noqa: BLE001 -- pyarrow raises several types for a file that is not Parquet
        raise UserError(f"cannot read the list of inputs {path}: {exc}") from None
    col = next((c for c in LIST_COLUMNS if c in schema.names), None)
    if col is None:
        raise UserError(f"the list of inputs {path} has no column {' or '.join(LIST_COLUMNS)} "
                        f"(has: {', '.join(schema.names)})")
    kind = schema.field(col).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UserError(f"the list of inputs {path}: column {col} holds {kind}, not paths (text)")
    return [p for p in pq.read_table(path, columns=[col]).column(col).to_pylist() if p]


def plan_shards(paths: list[str], shard_size: int) -> list[list[str]]:
    """The inputs in order, cut into shards of `shard_size` files (the last one shorter)."""
    return [paths[i:i + shard_size] for i in range(0, len(paths), shard_size)]


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def _manifest_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, MANIFEST_DIR, name[:-len(".parquet")] + ".json")


def _read_manifest(out_dir: str, name: str) -> dict | None:
    try:
        with open(_manifest_path(out_dir, name), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def prepare_output(out_dir: str, shards: list[list[str]], settings: Settings) -> dict[int, dict]:
    """Create `out_dir` if needed, and return the manifests of the shards already complete (same files, same
    settings, Parquet file present), by shard index. Shards that are not complete, and left-over temporary
    files of an interrupted run, are removed so that no input can appear twice; a folder with part files but
    no manifest folder is not ours, and is refused."""
    if os.path.isdir(out_dir) and not os.path.isdir(os.path.join(out_dir, MANIFEST_DIR)) and any(
            SHARD_RE.match(n) for n in os.listdir(out_dir)):  # someone else's part files: never removed
        raise UserError(f"{out_dir} holds part-*.parquet files that infer.py --ray did not write (no "
                        f"{MANIFEST_DIR}/); choose a new or empty folder")
    try:
        os.makedirs(os.path.join(out_dir, MANIFEST_DIR), exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK):
        raise UserError(f"cannot write into output folder {out_dir}: permission denied")
    fp = settings.fingerprint()
    done: dict[int, dict] = {}
    for i, inputs in enumerate(shards):
        m = _read_manifest(out_dir, shard_name(i))
        if m and m.get("inputs") == inputs and m.get("settings") == fp and os.path.isfile(
                os.path.join(out_dir, shard_name(i))):
            done[i] = m
    _drop_stale(out_dir, SHARD_RE, done)
    _drop_stale(os.path.join(out_dir, MANIFEST_DIR), re.compile(r"^part-(\d+)\.json$"), done)
    return done


def _drop_stale(folder: str, pattern: re.Pattern, done: dict[int, dict]) -> None:
    """Remove the files of `folder` named by `pattern` whose shard is not complete, and temporary files."""
    for name in os.listdir(folder):
        m = pattern.match(name)
        if (m and int(m.group(1)) not in done) or (name.startswith(".part-") and ".tmp" in name):
            os.remove(os.path.join(folder, name))


def refuse_inputs_in(out_dir: str, inputs: list[str]) -> None:
    """The output folder is ours to clean (stale shards are removed): no input may lie inside it."""
    root = os.path.join(os.path.realpath(out_dir), "")
    for path in inputs:
        if os.path.realpath(path).startswith(root):
            raise UserError(f"--parquet {out_dir} holds the input {path}: its shards would be written (and stale "
                            "ones removed) beside it; choose another folder")


def _counts(docs: list[dict]) -> dict:
    failed = sum(1 for d in docs if d.get("error"))
    return {"images": len(docs) - failed, "faces": sum(len(d["faces"]) for d in docs), "failures": failed}


def write_shard(out_dir: str, index: int, inputs: list[str], docs: dict[str, dict], settings: Settings) -> dict:
    """Write one complete shard (Parquet, then its manifest: a shard without a manifest is redone); returns
    the manifest."""
    ordered = [docs[p] for p in inputs]
    write_parquet(os.path.join(out_dir, shard_name(index)), ordered)
    manifest = {"inputs": inputs, "settings": settings.fingerprint(), **_counts(ordered)}
    write_atomic(_manifest_path(out_dir, shard_name(index)), json.dumps(manifest))
    return manifest


# --- the Ray side ------------------------------------------------------------------------------------------
_ANALYZERS: dict[str, object] = {}  # per worker process: its detector, loaded by its first task


def _detector_analyzer(settings: Settings):
    from agegender.data.face import load_detector
    from agegender.serving.analyzer import FaceAnalyzer

    key = json.dumps(asdict(settings), sort_keys=True)
    if key not in _ANALYZERS:
        detector = load_detector(settings.det_model, thresh=settings.det_thresh, max_size=settings.max_size,
                                 threads=1)
        _ANALYZERS[key] = FaceAnalyzer(detector, None, min_face=settings.min_face, max_pixels=settings.max_pixels,
                                     drop_flagged=settings.drop_flagged)
    return _ANALYZERS[key]


def detect_batch(batch: pa.Table, settings: Settings) -> pa.Table:
    """Ray task: read, detect and align the batch's files (FaceAnalyzer.prepare); the faces and their crops
    travel pickled to the net."""
    analyzer = _detector_analyzer(settings)
    paths, errors, dets = [], [], []
    for path in batch.column("path").to_pylist():
        _, faces, crops, error = analyzer.prepare(path)
        paths.append(path)
        errors.append(error)
        dets.append(pickle.dumps((faces, np.stack(crops) if crops else np.zeros((0, 112, 112, 3), np.uint8))))
    return pa.table({"path": pa.array(paths, pa.string()), "error": pa.array(errors, pa.string()),
                     "det": pa.array(dets, pa.binary())})


class NetLabeller:
    """Ray actor: the attribute net, loaded once; labels the faces of a batch of images and returns each
    image's JSON document (`agegender.serving.inference.to_json`, the same as infer.py --json)."""

    def __init__(self, settings: Settings, gpus: str = ""):
        from agegender.model.loading import load_engine
        from agegender.serving.analyzer import FaceAnalyzer

        engine = load_engine(settings.model, settings.engine, gpus, threads=1)
        self.analyzer = FaceAnalyzer(None, engine, age_decode=settings.age_decode, min_face=settings.min_face,
                                     flip=settings.flip, batch_size=settings.batch_size, age_level=settings.age_level)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from agegender.serving.analyzer import ImageResult
        from agegender.serving.inference import to_json

        _die_once_for_tests()
        items = [(p, e, pickle.loads(d)) for p, e, d in zip(batch.column("path").to_pylist(),
                                                            batch.column("error").to_pylist(),
                                                            batch.column("det").to_pylist())]
        crops = [c for _, _, (_, cs) in items for c in cs]
        labels = self.analyzer.labels(crops)
        docs, i = [], 0
        for path, error, (faces, cs) in items:
            res = ImageResult(path, None, self.analyzer.results(faces, cs, labels, i), error)
            i += len(faces)
            docs.append(json.dumps(to_json(res)))
        return pa.table({"path": pa.array([p for p, _, _ in items], pa.string()), "doc": pa.array(docs, pa.string())})


def _die_once_for_tests() -> None:
    """The test hook that kills a net worker mid-run: exits this process if the file named by
    AGEGENDER_RAY_TEST_DIE_ONCE does not exist yet (creating it first, so only one worker dies)."""
    marker = os.environ.get(DIE_ONCE_ENV)
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)


def _check_reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on is one line of error (Ray itself would retry for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # `auto` and the like: Ray's own resolution
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def connect(address: str | None, num_cpus: int | None = None, object_store_mb: int | None = None) -> bool:
    """Join the cluster at `address` (`auto`: the one `ray start` runs here), or start a local Ray (None);
    an already connected driver (a test's) is reused. Returns True when this call connected (then `run`
    disconnects at its end)."""
    import ray

    if ray.is_initialized():
        return False
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    if os.environ.get(DIE_ONCE_ENV):
        env[DIE_ONCE_ENV] = os.environ[DIE_ONCE_ENV]
    kwargs: dict = {"runtime_env": {"env_vars": env}, "logging_level": logging.WARNING, "log_to_driver": False,
                    "configure_logging": True}
    if address:
        _check_reachable(address)
        kwargs["address"] = address
        if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(
                os.path.expanduser("~/.ray/auth_token"))):
            # clusters that `ray start` makes check a token; a driver that does not send it waits forever
            os.environ["RAY_AUTH_MODE"] = "token"
    else:  # "local": a new Ray, even where `ray start` runs one (joining it is `--ray auto`)
        kwargs.update(address="local", num_cpus=num_cpus, include_dashboard=False,
                      object_store_memory=object_store_mb * 2 ** 20 if object_store_mb else None)
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise UserError(f"cannot join the Ray cluster at {address}: {exc}") from None
    return True


def build_dataset(paths: list[str], settings: Settings, files_per_task: int = 8):
    """The Ray Data pipeline over `paths`: detection tasks on CPUs, then the net in an actor pool."""
    import ray
    from ray.data import ActorPoolStrategy

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    blocks = max(1, min(len(paths) // files_per_task + 1, 4096))
    ds = ray.data.from_arrow(pa.table({"path": pa.array(paths, pa.string())})).repartition(blocks)
    ds = ds.map_batches(detect_batch, fn_kwargs={"settings": settings}, batch_size=files_per_task,
                        batch_format="pyarrow", num_cpus=1, memory=DETECT_MEMORY)
    if gpus:  # one actor per GPU; Ray sets CUDA_VISIBLE_DEVICES, so each actor's GPU is its device 0
        net = {"compute": ActorPoolStrategy(size=gpus), "num_gpus": 1, "fn_constructor_kwargs":
               {"settings": settings, "gpus": "0"}}
    else:  # the net is light next to detection: a few CPU actors keep up with the rest of the cores
        net = {"compute": ActorPoolStrategy(min_size=1, max_size=max(1, cpus // 8)), "num_cpus": NET_CPUS,
               "fn_constructor_kwargs": {"settings": settings}}
    return ds.map_batches(NetLabeller, batch_size=4 * files_per_task, batch_format="pyarrow", **net)


def run(specs: list[str], out_dir: str, settings: Settings = Settings(), address: str | None = None,
        shard_size: int = 1000, num_cpus: int | None = None, object_store_mb: int | None = None,
        on_shard: Callable[[int, dict], None] | None = None, log=sys.stderr) -> Summary:
    """Label every image of `specs` into Parquet shards under `out_dir` (see the module's doc), skipping the
    shards a previous run completed; `on_shard(index, manifest)` is called after each shard is written.
    Raises KeyboardInterrupt (after the shards already complete are in place) when interrupted."""
    paths, problems = expand_inputs(specs)
    for spec, reason in problems:
        print(f"error: {spec}: {reason}", file=log, flush=True)
    if not paths:
        raise UserError("no image to process")
    refuse_inputs_in(out_dir, [s for s in specs if os.path.isfile(s)] + paths)
    shards = plan_shards(paths, shard_size)
    done = prepare_output(out_dir, shards, settings)
    summary = Summary(out_dir, shards=len(shards), resumed=len(done))
    for m in done.values():
        summary.images, summary.faces, summary.failures = (summary.images + m["images"], summary.faces + m["faces"],
                                                           summary.failures + m["failures"])
    todo = {i: inputs for i, inputs in enumerate(shards) if i not in done}
    shard_of = {p: i for i, inputs in todo.items() for p in inputs}
    waiting: dict[int, dict[str, dict]] = {i: {} for i in todo}
    if not todo:
        summary.complete = True
        return summary
    import ray

    t0 = time.perf_counter()
    started = connect(address, num_cpus, object_store_mb)
    summary.startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        for batch in build_dataset(list(shard_of), settings).iter_batches(batch_format="pyarrow", batch_size=None):
            for path, doc in zip(batch.column("path").to_pylist(), batch.column("doc").to_pylist()):
                i = shard_of[path]
                if i not in waiting or path in waiting[i]:
                    continue  # a retried task's second copy: the first one counts
                waiting[i][path] = d = json.loads(doc)
                if d.get("error"):
                    summary.errors.append((path, d["error"]))
                    print(f"error: {path}: {d['error']}", file=log, flush=True)
                if len(waiting[i]) == len(todo[i]):
                    m = write_shard(out_dir, i, todo[i], waiting.pop(i), settings)
                    summary.processed += len(todo[i])
                    summary.images, summary.faces, summary.failures = (
                        summary.images + m["images"], summary.faces + m["faces"], summary.failures + m["failures"])
                    if on_shard is not None:
                        on_shard(i, m)
        if waiting:  # cannot happen unless Ray lost a result for good: say so rather than report success
            lost = sum(len(todo[i]) - len(w) for i, w in waiting.items())
            raise UserError(f"Ray returned no result for {lost} files; rerun the same command to complete the output")
        summary.complete = True
    finally:
        summary.seconds = time.perf_counter() - t0
        if started:
            ray.shutdown()
        if not summary.complete:  # the shards written so far stay: say how far it got
            print(summary.line(), file=log, flush=True)
    return summary


__all__ = ["Settings", "Summary", "expand_inputs", "plan_shards", "prepare_output", "refuse_inputs_in", "write_shard", "detect_batch",
           "NetLabeller", "connect", "build_dataset", "run", "shard_name", "DIE_ONCE_ENV"]
