"""Batch inference on a Ray cluster (infer.py --ray [ADDRESS] --parquet DIR; docs/ray.md): the photo-to-faces
path of `FaceAnalyzer` run over many files by Ray, with Parquet shards as output and resume.

- The inputs (files, folders, globs, or a .txt / .parquet list of paths: agegender/serving/inputs.py) are cut
  into small shards keyed by their inputs (agegender/serving/shards.py: the plan, the keys, what a rerun
  keeps, what is moved to `_stale/`). Each shard is one Ray task: the driver writes its Parquet file and
  manifest as soon as it comes back, so an interrupted run keeps every shard it finished.
- On CPU nodes, one actor per CPU of the cluster holds a whole `FaceAnalyzer` (detector and net, one thread
  each) and does read, decode, detect, align and the net for a shard in one process: only the rows (JSON
  documents) travel back. Where the cluster has GPUs, the CPU actors read, detect and align, and an actor
  per GPU runs the net on their crops (the onnx engine's CUDA provider).
- Ray restarts a dead actor and retries its task; the driver resubmits a shard whose actor is lost for good,
  and writes each shard once, so no input can appear twice. A file that cannot be read or analysed is a row
  with its error, never a failed run.

Ray is imported by `connect` and `run` only; the driver writes every shard (workers need no shared file system).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Callable

from agegender.errors import UserError, short_reason
from agegender.model.age import DEFAULT_AGE_LEVEL, DEFAULT_DECODE
from agegender.model.ensemble import DEFAULT_GENDER_ENSEMBLE
from agegender.data.image import MAX_PIXELS
from agegender.serving.inputs import expand_inputs
from agegender.serving.shards import (MANIFEST_DIR, STALE_DIR, plan_shards, prepare_output, shard_key, shard_name,
                                      write_shard)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARD_SIZE = 100     # inputs per shard on average: the unit of resume and of work per task
IN_FLIGHT = 1        # calls per actor: the next shard goes to whichever actor frees first (no end-of-run queue)
ATTEMPTS = 3         # a shard whose actor is lost is resubmitted this many times before the run gives up


@dataclass(frozen=True)
class Settings:
    """What turns a photo into labelled faces (infer.py's options); all but `batch_size` are part of the
    manifest and of each shard's key, so a rerun with other settings redoes the shards instead of mixing
    two models' outputs."""

    model: str | None = None
    engine: str | None = None
    det_model: str | None = None
    det_thresh: float = 0.8
    max_size: int = 1280
    min_face: float = 0.0
    age_decode: str = DEFAULT_DECODE
    flip: bool | None = None  # None: the model's own default
    max_pixels: int = MAX_PIXELS
    batch_size: int = 256
    age_level: float = DEFAULT_AGE_LEVEL  # the age range's level
    drop_flagged: bool = False            # leave out the faces the quality flag marks
    gender_ensemble: bool = DEFAULT_GENDER_ENSEMBLE  # P(male) mixed with the CC0 teacher net's

    def fingerprint(self) -> dict:
        d = asdict(self)
        del d["batch_size"]
        from agegender.model.loading import model_calibration

        calibration = model_calibration(self.model)
        if d["flip"] is None:  # the setting used, so that the default and the same flag named give one key
            d["flip"] = calibration.flip
        # what the model's calibration makes of its outputs: a model calibrated anew is new work
        d["calibration"] = {"gender_temperature": calibration.temperature,
                            "age_range_widening": calibration.widening.to_dict(),
                            "gender_teacher_weight": calibration.teacher_weight if self.gender_ensemble else None}
        for k in ("model", "det_model"):  # the same file named two ways is the same run
            d[k] = os.path.realpath(d[k]) if d[k] and os.path.exists(d[k].split(",")[0]) else d[k]
        return d


@dataclass
class Summary:
    """What a run left under `out_dir`, and how fast this run went."""

    out_dir: str
    inputs: int = 0
    shards: int = 0
    resumed: int = 0            # shards complete before this run (kept)
    already: int = 0            # inputs in those shards
    stale: int = 0              # shards no input needs any more, moved to _stale/ (or deleted: overwrite)
    damaged: int = 0            # shards found damaged, moved aside and redone
    images: int = 0             # images analysed (in every shard)
    faces: int = 0
    failures: int = 0           # images that could not be analysed (error rows)
    processed: int = 0          # files analysed by this run
    by_driver: int = 0          # of them, by the driver itself while Ray started
    seconds: float = 0.0        # this run, from starting (or joining) Ray to the last shard written
    startup: float = 0.0        # of which starting (or joining) Ray
    stages: dict = field(default_factory=dict)  # seconds per stage, summed over the actors
    complete: bool = False
    errors: list[tuple[str, str]] = field(default_factory=list)

    def add(self, manifest: dict) -> None:
        self.images += manifest["images"]
        self.faces += manifest["faces"]
        self.failures += manifest["failures"]

    def line(self) -> str:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        state = "" if self.complete else ", interrupted (rerun the same command to resume)"
        return (f"summary: {self.images} images, {self.faces} faces, {self.failures} failed; {self.processed} "
                f"processed by this run in {self.seconds:.1f} s = {rate:.1f} photos/s, Ray start-up included "
                f"({self.startup:.1f} s, {self.by_driver} photos done by the driver meanwhile); {self.already} of "
                f"{self.inputs} inputs already done ({self.resumed} of {self.shards} shards kept){state}; output: "
                f"{os.path.join(self.out_dir, 'part-*.parquet')}")

    def stage_line(self) -> str:
        """Seconds per stage summed over the actors (CPU-side time: read, detect+align, net), and their share."""
        total = sum(self.stages.values()) or 1.0
        return "stages: " + ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f} %)" for k, v in self.stages.items())


# --- inputs and output --------------------------------------------------------------------------------------
def refuse_inputs_in(out_dir: str, inputs: list[str]) -> None:
    """The output folder is ours to tidy (stale shards are moved aside): no input may lie inside it."""
    root = os.path.join(os.path.realpath(out_dir), "")
    for path in inputs:
        if os.path.realpath(path).startswith(root):
            raise UserError(f"--parquet {out_dir} holds the input {path}: its shards would be written (and stale "
                            "ones moved) beside it; choose another folder")


# --- the Ray side ------------------------------------------------------------------------------------------
class ShardWorker:
    """Ray actor, one per CPU: a `FaceAnalyzer` loaded once (detector and net on one thread each), which
    turns a shard's paths into their JSON documents (`agegender.serving.inference.to_json`, the same as
    infer.py --json). Where the net runs on GPU actors, `detector_only` leaves the net out: `prepare` gives the
    faces and crops of a shard for `NetWorker.label`."""

    def __init__(self, settings: Settings, detector_only: bool = False):
        t0 = time.perf_counter()
        from agegender.data.face import load_detector
        from agegender.model.loading import load_engine
        from agegender.serving.analyzer import FaceAnalyzer

        detector = load_detector(settings.det_model, thresh=settings.det_thresh, max_size=settings.max_size,
                                 threads=1)
        engine = None if detector_only else load_engine(settings.model, settings.engine, "", threads=1)
        # the teacher's chips are cut from the photo here, also where a net actor runs the teacher on them
        self.analyzer = FaceAnalyzer(detector, engine, age_decode=settings.age_decode, min_face=settings.min_face,
                                     flip=settings.flip, batch_size=settings.batch_size,
                                     max_pixels=settings.max_pixels, age_level=settings.age_level,
                                     drop_flagged=settings.drop_flagged, teacher=_teacher(settings))
        self.timings = {"load models": time.perf_counter() - t0}  # reported with the first shard

    def _take_timings(self) -> dict:
        out, self.timings = self.timings, {}
        return out

    def analyze(self, paths: list[str]) -> tuple[list[str], dict]:
        """The shard's documents (JSON text, in input order) and the seconds spent per stage."""
        from agegender.serving.inference import to_json

        timings = self._take_timings()
        docs = [json.dumps(to_json(r)) for r in self.analyzer.analyze_paths(paths, timings=timings, threads=1)]
        return docs, timings

    def prepare(self, paths: list[str]) -> tuple[list[tuple], dict]:
        """Read, detect and align the shard: (path, error, faces, packed crops) per file, for a net actor."""
        timings = self._take_timings()
        t0 = time.perf_counter()
        out = []
        for path in paths:
            _, faces, crops, error = self.analyzer.prepare(path)
            out.append((path, error, faces, pack_crops(crops)))
        timings["read+detect+align"] = time.perf_counter() - t0
        return out, timings


class NetWorker:
    """Ray actor, one per GPU: the attribute net on the crops that `ShardWorker.prepare` sent."""

    def __init__(self, settings: Settings, gpus: str = "0"):
        from agegender.model.loading import load_engine
        from agegender.serving.analyzer import FaceAnalyzer

        engine = load_engine(settings.model, settings.engine, gpus, threads=1)
        self.analyzer = FaceAnalyzer(None, engine, age_decode=settings.age_decode, min_face=settings.min_face,
                                     flip=settings.flip, batch_size=settings.batch_size, age_level=settings.age_level,
                                     drop_flagged=settings.drop_flagged, teacher=_teacher(settings))

    def label(self, prepared: tuple[list[tuple], dict]) -> tuple[list[str], dict]:
        from agegender.serving.analyzer import ImageResult
        from agegender.serving.inference import to_json

        items, timings = prepared
        t0 = time.perf_counter()
        per_file = [unpack_crops(packed) for *_, packed in items]
        labels = self.analyzer.labels([c for cs in per_file for c in cs])
        docs, i = [], 0
        for (path, error, faces, _), cs in zip(items, per_file):
            res = ImageResult(path, None, self.analyzer.results(faces, cs, labels, i), error)
            i += len(faces)
            docs.append(json.dumps(to_json(res)))
        timings["net"] = timings.get("net", 0.0) + time.perf_counter() - t0
        return docs, timings


def _teacher(settings: Settings):
    """The gender ensemble's teacher net (one thread), or None when it is off."""
    if not settings.gender_ensemble:
        return None
    from agegender.model.ensemble import TeacherGender

    return TeacherGender(threads=1)


def pack_crops(crops: list) -> tuple:
    """A file's crops as arrays for a net actor: (our (N,112,112,3) crops, the teacher's (N,32,32,3) chips or
    None when the ensemble is off)."""
    import numpy as np

    from agegender.serving.analyzer import FaceCrops

    if crops and isinstance(crops[0], FaceCrops):
        return np.stack([c.net for c in crops]), np.stack([c.teacher for c in crops])
    return (np.stack(crops) if crops else np.zeros((0, 112, 112, 3), np.uint8)), None


def unpack_crops(packed: tuple) -> list:
    """`pack_crops` undone: the list of crops `FaceAnalyzer.labels` takes."""
    from agegender.serving.analyzer import FaceCrops

    net, teacher = packed
    return list(net) if teacher is None else [FaceCrops(n, t) for n, t in zip(net, teacher)]


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


def _token_auth_if_present() -> None:
    """Send the cluster's token when joining by address. A cluster `ray start` makes checks a token when
    ~/.ray/auth_token exists (any earlier local Ray made one), but Ray enables token auth for a driver that
    joins with an explicit address only when RAY_AUTH_MODE=token, and reads that setting into its config
    when `ray` is imported: setting the variable later is not seen unless the config is read again."""
    if "RAY_AUTH_MODE" in os.environ:
        return  # the user's choice
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or os.path.isfile(os.path.expanduser(os.path.join("~", ".ray", "auth_token")))):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # what Ray itself does when it turns token auth on (ray._private.authentication)
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):  # another Ray: the variable, set before connecting, is all there is
        pass


def connect(address: str | None, num_cpus: int | None = None, object_store_mb: int | None = None) -> bool:
    """Join the cluster at `address` (`auto`: the one `ray start` runs here), or start a local Ray (None);
    an already connected driver (a test's) is reused. Returns True when this call connected (then `run`
    disconnects at its end)."""
    if address:
        _check_reachable(address)
        _token_auth_if_present()  # before `import ray` where possible; re-read by Ray's config otherwise
    import ray

    if ray.is_initialized():
        return False
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": True}
    if address:  # the cluster's workers are told where the project is
        kwargs.update(address=address, runtime_env={"env_vars": env})
    else:  # "local": a new Ray, even where `ray start` runs one (joining it is `--ray auto`). Its workers
        # inherit this process's environment: a runtime environment would cost every actor a new process
        os.environ.update(env)
        kwargs.update(address="local", num_cpus=num_cpus, include_dashboard=False,
                      object_store_memory=object_store_mb * 2 ** 20 if object_store_mb else None,
                      # Ray runs its workers at nice 15 unless told: then any other process on the machine (a
                      # training run at nice 8 included) takes their cores first, and --ray ran at 0.6x plain
                      # infer.py beside such load. The workers get the priority of this command instead: they
                      # inherit it, and Ray adds worker_niceness to what they inherit (so 0, not os.nice(0):
                      # under `nice -n 2` that gave them 4)
                      _system_config={"worker_niceness": 0})
    # Ray's own notice that a new local Ray checks a token: not this run's business
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError) as exc:
        raise UserError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None
    return True


class _Pool:
    """The actors of a run: one `ShardWorker` per CPU of the cluster and, where it has GPUs, one `NetWorker` per
    GPU (then the CPU actors only detect). Each shard is one call; `IN_FLIGHT` calls per CPU actor (two
    where the net is elsewhere, so that an actor detects the next shard while its last one is labelled)."""

    def __init__(self, settings: Settings, split: bool | None = None, actors: tuple[type, type] | None = None):
        import ray

        shard_actor, net_actor = actors or (ShardWorker, NetWorker)

        resources = ray.cluster_resources()
        cpus, gpus = max(1, int(resources.get("CPU", 1))), int(resources.get("GPU", 0))
        self.split = bool(gpus) if split is None else split
        retry = {"max_restarts": 3, "max_task_retries": 3}  # a dead actor is restarted and its call run again
        self.workers = [ray.remote(shard_actor).options(num_cpus=1, **retry).remote(settings, self.split)
                        for _ in range(cpus)]
        self.nets = []
        if self.split:  # Ray sets CUDA_VISIBLE_DEVICES: each net actor's GPU is its device 0
            net = {"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": 0}
            self.nets = [ray.remote(net_actor).options(**net, **retry).remote(settings, "0" if gpus else "")
                         for _ in range(max(1, gpus))]
        self._loading = [w.__ray_ready__.remote() for w in self.workers + self.nets]
        self.load = [0] * len(self.workers)
        self.alive = set(range(len(self.workers)))
        self._next_net = 0

    def ready(self) -> bool:
        """Whether every actor has loaded its models."""
        import ray

        if self._loading:
            self._loading = ray.wait(self._loading, num_returns=len(self._loading), timeout=0)[1]
        return not self._loading

    def free(self) -> int | None:
        """The least busy live actor with room for another shard, or None."""
        depth = IN_FLIGHT + self.split
        room = [i for i in self.alive if self.load[i] < depth]
        return min(room, key=lambda i: self.load[i]) if room else None

    def submit(self, i: int, paths: list[str]):
        self.load[i] += 1
        if not self.split:
            return self.workers[i].analyze.remote(paths)
        net = self.nets[self._next_net % len(self.nets)]
        self._next_net += 1
        return net.label.remote(self.workers[i].prepare.remote(paths))


def run(specs: list[str], out_dir: str, settings: Settings = Settings(), address: str | None = None,
        shard_size: int = SHARD_SIZE, num_cpus: int | None = None, object_store_mb: int | None = None,
        overwrite: bool = False, split: bool | None = None, driver_lane: bool = True,
        on_shard: Callable[[str, dict], None] | None = None, log=sys.stderr,
        actors: tuple[type, type] | None = None) -> Summary:
    """Label every image of `specs` into Parquet shards under `out_dir` (see the module's doc and
    agegender/serving/shards.py), keeping the shards a previous run completed; `on_shard(key, manifest)` is
    called after each shard is written. `split`: the net on its own actors (default: where there are GPUs).
    `driver_lane`: while Ray starts (not when the driver is already connected), the driver works through
    shards itself, until the actors have loaded their models. Raises KeyboardInterrupt (after the shards
    already complete are in place) when interrupted. `actors`: the (shard, net) actor classes, subclasses of
    ShardWorker and NetWorker (default: those), e.g. a test's that fail on purpose."""
    paths, problems = expand_inputs(specs)
    for spec, reason in problems:
        print(f"error: {spec}: {reason}", file=log, flush=True)
    if not paths:
        raise UserError("no image to process")
    refuse_inputs_in(out_dir, [s for s in specs if os.path.isfile(s)] + paths)  # the lists too
    if settings.det_model and not os.path.isfile(settings.det_model):  # before Ray: one line, not an actor's death
        raise UserError(f"detector model not found: {settings.det_model}")
    if address:
        _check_reachable(address)  # before any output is made
    fp = settings.fingerprint()
    planned = {shard_key(inputs, fp): inputs for inputs in plan_shards(paths, shard_size)}
    state = prepare_output(out_dir, planned, fp, overwrite)
    _report_moved(out_dir, state, overwrite, log)
    summary = Summary(out_dir, inputs=len(paths), shards=len(planned), resumed=len(state.done),
                      stale=len(state.stale), damaged=len(state.damaged))
    for key, m in state.done.items():
        summary.add(m)
        summary.already += len(planned[key])
    todo = {k: inputs for k, inputs in planned.items() if k not in state.done}
    if not todo:
        summary.complete = True
        return summary
    import ray

    job = _Job(todo, out_dir, settings, fp, summary, on_shard, log, actors)
    t0 = time.perf_counter()
    lane = _DriverLane(job) if driver_lane and not ray.is_initialized() else None
    started = False
    try:
        started = connect(address, num_cpus, object_store_mb)
        summary.startup = time.perf_counter() - t0
        job.run_on_ray(split, lane)
        summary.complete = True
    finally:
        if lane is not None:
            lane.stop(wait=True)
        summary.seconds = time.perf_counter() - t0
        if started:
            ray.shutdown()
        if not summary.complete and summary.processed:  # the shards written so far stay: say how far it got
            print(summary.line(), file=log, flush=True)
    return summary


class _Job:
    """The shards left to do, shared by the Ray actors and the driver's lane; each shard written once."""

    def __init__(self, todo: dict[str, list[str]], out_dir: str, settings: Settings, fp: dict, summary: Summary,
                 on_shard, log, actors: tuple[type, type] | None = None):
        self.todo, self.out_dir, self.settings, self.fp = todo, out_dir, settings, fp
        self.actors = actors
        self.summary, self.on_shard, self.log = summary, on_shard, log
        # largest shards first: the run ends on small ones, so no actor waits long for the last shard
        self.queue: deque[str] = deque(sorted(todo, key=lambda k: -len(todo[k])))
        self.lock = threading.Lock()

    def take(self, smallest: bool = False) -> str | None:
        with self.lock:
            return (self.queue.pop() if smallest else self.queue.popleft()) if self.queue else None

    def give_back(self, key: str) -> None:
        with self.lock:
            self.queue.appendleft(key)

    def deliver(self, key: str, docs: list[str], timings: dict, by_driver: bool = False) -> None:
        """Write one finished shard (its documents as JSON text, in input order) and count it."""
        with self.lock:
            t0 = time.perf_counter()
            by_path = {}
            for path, doc in zip(self.todo[key], docs):
                by_path[path] = d = json.loads(doc)
                if d.get("error"):
                    self.summary.errors.append((path, d["error"]))
                    print(f"error: {path}: {d['error']}", file=self.log, flush=True)
            m = write_shard(self.out_dir, key, self.todo[key], by_path, self.fp)
            timings["write (driver)"] = time.perf_counter() - t0
            for k, v in timings.items():
                self.summary.stages[k] = self.summary.stages.get(k, 0.0) + v
            self.summary.processed += len(self.todo[key])
            if by_driver:
                self.summary.by_driver += len(self.todo[key])
            self.summary.add(m)
            if self.on_shard is not None:
                self.on_shard(key, m)

    def run_on_ray(self, split: bool | None, lane: "_DriverLane | None") -> None:
        """Run the shards of the queue on the actors until none is left (the driver's lane, if any, stops
        taking shards once every actor has loaded its models)."""
        import ray

        pool: _Pool | None = None  # made when there is work for it (the lane may have done everything)
        inflight: dict = {}
        attempts: dict[str, int] = {}

        def refill() -> None:
            nonlocal pool
            with self.lock:
                if pool is None and self.queue:
                    pool = _Pool(self.settings, split, self.actors)
            while pool is not None:
                i = pool.free()
                key = self.take() if i is not None else None
                if key is None:
                    return
                inflight[pool.submit(i, self.todo[key])] = (key, i)

        refill()
        while inflight or (lane is not None and lane.busy()):
            if not inflight:  # the lane's shard: it may come back to the queue
                lane.thread.join(0.2)
                refill()
                continue
            if lane is not None and pool is not None and pool.ready():
                lane.stop(wait=False)  # Ray is up: the actors have every core from now on
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.25)
            if not ready:
                continue
            key, i = inflight.pop(ready[0])
            pool.load[i] -= 1
            try:
                docs, timings = ray.get(ready[0])
            except ray.exceptions.RayError as exc:  # the actor is lost for good (Ray's own restarts spent)
                attempts[key] = attempts.get(key, 0) + 1
                if isinstance(exc, ray.exceptions.RayActorError):
                    pool.alive.discard(i)
                if attempts[key] >= ATTEMPTS or not pool.alive:
                    raise UserError(f"a Ray worker failed on {len(self.todo[key])} inputs ({short_reason(exc)}); "
                                    "the finished shards are kept: rerun the same command to complete the output") \
                        from None
                self.give_back(key)
                refill()
                continue
            refill()
            self.deliver(key, docs, timings)
        if lane is not None and lane.error is not None:
            raise lane.error


class _DriverLane:
    """The driver's own worker while Ray starts: a `FaceAnalyzer` in this process takes the smallest shards
    of the queue (as plain infer.py would) until every actor has loaded its models, so that Ray's start-up
    costs little time. A shard it has begun is finished and written; one it cannot do goes back to the queue."""

    def __init__(self, job: _Job):
        self.job, self.error, self.current = job, None, None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._work, name="driver-lane", daemon=True)
        self.thread.start()

    def busy(self) -> bool:
        return self.thread.is_alive()

    def stop(self, wait: bool) -> None:
        self._stop.set()
        if wait:
            self.thread.join(30)

    def _work(self) -> None:
        from agegender.serving.inference import to_json

        try:
            t0 = time.perf_counter()
            worker = ShardWorker(self.job.settings)
            worker.timings = {"load models": time.perf_counter() - t0}
            while not self._stop.is_set():
                key = self.job.take(smallest=True)  # the actors take the large ones: the lane can stop soon
                if key is None:
                    return
                self.current = key
                try:
                    timings = worker._take_timings()
                    docs = [json.dumps(to_json(r)) for r in worker.analyzer.analyze_paths(
                        self.job.todo[key], timings=timings, threads=0)]  # every core: Ray's start-up waits a lot
                except BaseException:
                    self.job.give_back(key)
                    raise
                self.job.deliver(key, docs, {f"{k} (driver)": v for k, v in timings.items()}, by_driver=True)
                self.current = None
        except UserError as exc:  # the models do not load: the actors will say so too, in their words
            self.error = exc
        except Exception as exc:  # noqa: BLE001 -- the lane is a help only: Ray does the shards it left
            print(f"note: the driver stopped working alongside Ray ({short_reason(exc)})", file=self.job.log,
                  flush=True)


def _report_moved(out_dir: str, state, overwrite: bool, log) -> None:
    """One line for the damaged shards, one for the stale ones: nothing leaves the output unannounced."""
    where = "deleted (--overwrite)" if overwrite else f"moved to {os.path.join(out_dir, STALE_DIR, '')}"
    for name, why in state.damaged:
        print(f"warning: {os.path.join(out_dir, name)} is damaged or incomplete ({why}): {where}; its inputs are "
              "redone", file=log, flush=True)
    if state.stale:
        print(f"note: {len(state.stale)} shard(s) that no input of this run needs (other inputs, settings or "
              f"--shard-size): {where}", file=log, flush=True)


__all__ = ["Settings", "Summary", "ShardWorker", "NetWorker", "connect", "run", "refuse_inputs_in",
           "expand_inputs", "shard_name", "MANIFEST_DIR", "SHARD_SIZE"]
