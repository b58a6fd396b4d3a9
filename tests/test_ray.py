"""Parquet output (infer.py --parquet) and batch inference on Ray (infer.py --ray): the same faces, ages and
genders as infer.py --json, bad files as error rows, a worker killed mid-run, an interrupted run resumed,
damaged and stale shards, shards keyed by their inputs, a cluster made by `ray start`; every input exactly
once. Ray runs locally with 2 CPUs and a small object store (docs/ray.md)."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT, run_script, shared_path
from agegender.data.demo import wheel_image

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # pragma: no cover -- make install puts requirements-ray.txt in
    pa = pq = None
try:
    import ray
except ImportError:  # pragma: no cover
    ray = None

needs_pyarrow = pytest.mark.skipif(pq is None, reason="pyarrow is not installed (pip install -r requirements-ray.txt)")
needs_ray = pytest.mark.skipif(ray is None or pq is None,
                               reason="ray[data] is not installed (pip install -r requirements-ray.txt)")
BAD = ("garbage.jpg", "truncated.jpg")


def _photo_folder(folder, sources: list[str]) -> list[str]:
    """Real photos, a photo without a face, and two bad files, in one folder; returns its sorted paths."""
    os.makedirs(folder, exist_ok=True)
    for src in sources:
        shutil.copy(src, os.path.join(folder, os.path.basename(src)))
    cv2.imwrite(os.path.join(folder, "blank.png"), np.full((90, 120, 3), 120, np.uint8))
    with open(os.path.join(folder, "garbage.jpg"), "w") as f:
        f.write("not an image")
    with open(sources[0], "rb") as f:
        head = f.read(300)
    with open(os.path.join(folder, "truncated.jpg"), "wb") as f:
        f.write(head)
    return sorted(os.path.join(folder, n) for n in os.listdir(folder))


def _json_docs(folder: str, *flags: str) -> list[dict]:
    proc = run_script("infer.py", "--image", folder, "--json", *flags)
    assert proc.returncode == 1, proc.stderr  # the bad files failed, the rest did not
    docs = json.loads(proc.stdout)
    return docs


def _shard_docs(out_dir: str) -> list[dict]:
    """The documents of every shard, by image path (shards are named by their inputs' hash, not in order)."""
    from agegender.serving.batch import docs_from_table
    from agegender.serving.shards import read_shards

    return _by_image(docs_from_table(read_shards(out_dir)))


def _by_image(docs: list[dict]) -> list[dict]:
    return sorted(docs, key=lambda d: d["image"])


def _keys(out_dir) -> set[str]:
    return {n for n in os.listdir(out_dir) if n.startswith("part-")}


@pytest.fixture(scope="module")
def wheel_folder(tmp_path_factory) -> tuple[str, list[str], list[dict]]:
    """(folder, its paths, infer.py --json's documents of it): the insightface wheel's real photo t1.jpg, as it
    is, mirrored and at half size."""
    folder = str(tmp_path_factory.mktemp("photos"))
    t1 = cv2.imread(wheel_image("t1.jpg"))
    cv2.imwrite(os.path.join(folder, "t1_mirrored.jpg"), cv2.flip(t1, 1))
    cv2.imwrite(os.path.join(folder, "t1_half.png"), cv2.resize(t1, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
    paths = _photo_folder(folder, [wheel_image("t1.jpg")])
    return folder, paths, _json_docs(folder)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray for this module: 2 CPUs, 200 MB of object store; the dying actors' marker (tests/ray_faults.py)
    set before Ray starts, so its workers know it, and present (no actor dies) until a test removes it."""
    from agegender.serving.ray_batch import connect
    from tests.ray_faults import DIE_ONCE_ENV

    marker = str(tmp_path_factory.mktemp("hook") / "died")
    open(marker, "w").close()
    os.environ[DIE_ONCE_ENV] = marker
    try:
        connect(None, num_cpus=2, object_store_mb=200)
        yield marker
    finally:
        ray.shutdown()
        del os.environ[DIE_ONCE_ENV]


# --- Parquet without Ray ----------------------------------------------------------------------------------
@needs_pyarrow
def test_parquet_rows_are_the_json_faces(wheel_folder, tmp_path):
    from agegender.serving.batch import FACE_FIELDS, docs_from_table

    folder, paths, docs = wheel_folder
    out = tmp_path / "faces.parquet"
    proc = run_script("infer.py", "--image", folder, "--parquet", str(out))
    assert proc.returncode == 1, proc.stderr
    table = pq.read_table(out)
    assert docs_from_table(table) == docs  # face for face: boxes, scores, landmarks, genders, ages, errors
    rows = table.to_pylist()
    n_faces = sum(len(d["faces"]) for d in docs)
    assert n_faces >= 6 and sum(r["face"] is not None for r in rows) == n_faces
    errors = {r["image"]: r["error"] for r in rows if r["face"] is None}
    assert errors.keys() == {os.path.join(folder, n) for n in ("blank.png", "garbage.jpg", "truncated.jpg")}
    assert errors[os.path.join(folder, "blank.png")] is None  # no face: a row without an error
    assert errors[os.path.join(folder, "garbage.jpg")].startswith("not image")
    assert errors[os.path.join(folder, "truncated.jpg")].startswith("truncated")
    # the columns follow the JSON face objects: a field added to one and not the other fails here
    assert {k for d in docs for f in d["faces"] for k in f} - {"error", "face"} == set(FACE_FIELDS)
    assert not [n for n in os.listdir(tmp_path) if n != "faces.parquet"]  # the temporary file was renamed


@needs_pyarrow
def test_parquet_is_written_in_row_groups_and_only_complete_files_appear(tmp_path):
    from agegender.serving.batch import ParquetSink

    doc = {"schema_version": 2, "image": "a.jpg",
           "faces": [{"face": i, "box": [1, 2, 3, 4], "score": 0.9, "landmarks": [[1.0, 2.0]] * 5, "gender": "male",
                      "p_male": 0.8, "age": 30.5, "age_low": 25, "age_high": 36, "flags": []} for i in (1, 2, 3)]}
    out = tmp_path / "x.parquet"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with ParquetSink(str(out), rows_per_group=4) as sink:
            sink.add(doc)
            sink.add(doc)  # 6 rows: one group of 6 is on disk, in the temporary file
            assert sink.rows == 6
            raise RuntimeError("the run failed")
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.parquet"]  # failed: old file kept
    with pytest.raises(KeyboardInterrupt):
        with ParquetSink(str(out), rows_per_group=4) as sink:
            sink.add(doc)
            raise KeyboardInterrupt
    assert pq.ParquetFile(out).metadata.num_rows == 3 and os.listdir(tmp_path) == ["x.parquet"]  # Ctrl-C: rows so far
    with ParquetSink(str(out), rows_per_group=4) as sink:
        for _ in range(3):
            sink.add(doc)
    meta = pq.ParquetFile(out).metadata
    assert (meta.num_rows, meta.num_row_groups) == (9, 2)


@needs_ray
def test_parquet_and_ray_usage_errors(tmp_path):
    for args, message in [(["--parquet", "-"], "needs a file name"),
                          (["--parquet", str(tmp_path)], "is a folder"),
                          (["--parquet", str(tmp_path / "no" / "x.parquet")], "does not exist"),
                          (["--ray", "--json"], "give the output folder with --parquet"),
                          (["--ray", "--parquet", str(tmp_path / "d"), "--json"], "--parquet DIR only"),
                          (["--ray", "127.0.0.1:1", "--parquet", str(tmp_path / "d")], "cannot reach the Ray cluster")]:
        proc = run_script("infer.py", "--image", wheel_image("t1.jpg"), *args)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr


@needs_ray
def test_an_input_inside_the_output_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(wheel_image("t1.jpg"), out / "t1.jpg")
    listed = out / "part-00000.parquet"  # a list of paths named like a shard: it would be removed as stale
    for spec in (out / "t1.jpg", out):
        proc = run_script("infer.py", "--image", str(spec), "--ray", "--parquet", str(out))
        assert proc.returncode == 2 and "holds the input" in proc.stderr and proc.stderr.count("\n") == 1
    (out / "_manifest").mkdir()
    listed.write_text("x")
    from agegender.errors import UserError
    from agegender.serving.ray_batch import refuse_inputs_in

    with pytest.raises(UserError, match="holds the input"):
        refuse_inputs_in(str(out), [str(listed)])
    assert (out / "t1.jpg").exists() and listed.read_text() == "x"


@needs_pyarrow
def test_a_folder_of_someone_elses_part_files_is_refused_not_emptied(tmp_path):
    from agegender.errors import UserError
    from agegender.serving.shards import prepare_output

    (tmp_path / "part-00000.parquet").write_bytes(b"spark's")
    with pytest.raises(UserError, match="did not write"):
        prepare_output(str(tmp_path), {"k": ["a.jpg"]}, {})
    assert (tmp_path / "part-00000.parquet").read_bytes() == b"spark's"


@needs_pyarrow
def test_inputs_from_folders_globs_and_lists(wheel_folder, tmp_path):
    from agegender.errors import UserError
    from agegender.serving.inputs import expand_inputs

    folder, paths, _ = wheel_folder
    pq.write_table(pa.table({"path": paths[:2] + ["elsewhere.jpg"]}), tmp_path / "list.parquet")
    (tmp_path / "list.txt").write_text(f"# two\n{paths[0]}\n\n{paths[3]}\n")
    got, problems = expand_inputs([str(tmp_path / "list.parquet"), str(tmp_path / "list.txt"), folder,
                                   os.path.join(folder, "*.png"), str(tmp_path / "gone")])
    assert got == paths[:2] + ["elsewhere.jpg"] + [paths[3]] + [p for p in paths if p not in paths[:2] + [paths[3]]]
    assert problems == [(str(tmp_path / "gone"), "not found")]
    pq.write_table(pa.table({"file": ["a.jpg"]}), tmp_path / "other.parquet")
    with pytest.raises(UserError, match="no column path or image"):
        expand_inputs([str(tmp_path / "other.parquet")])


def test_plain_infer_imports_neither_ray_nor_pyarrow():
    """Ray and pyarrow are optional: infer.py without --ray / --parquet must not load them."""
    code = ("import contextlib, io, runpy, sys\n"
            f"sys.argv = ['infer.py', '--image', {wheel_image('t1.jpg')!r}, '--json']\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            f"    runpy.run_path({os.path.join(ROOT, 'infer.py')!r}, run_name='__main__')\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'pyarrow', 'pandas'}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr


# --- Ray --------------------------------------------------------------------------------------------------
@needs_ray
def test_cli_ray_over_a_list_of_paths(wheel_folder, tmp_path):
    """infer.py --ray starts its own local Ray; a .txt list may name a missing file: an error row."""
    folder, paths, docs = wheel_folder
    listing = tmp_path / "inputs.txt"
    missing = str(tmp_path / "gone.jpg")
    listing.write_text("# photos\n" + "\n".join(paths + [missing]) + "\n")
    out = tmp_path / "out"
    proc = run_script("infer.py", "--image", str(listing), "--ray", "--parquet", str(out), "--shard-size", "3")
    assert proc.returncode == 1, proc.stderr
    from agegender.serving.shards import plan_shards

    got = _shard_docs(str(out))
    assert got == _by_image(docs + [{"schema_version": 2, "image": missing, "error": "missing file", "faces": []}])
    assert len(glob.glob(str(out / "part-*.parquet"))) == len(plan_shards(paths + [missing], 3))
    summary = proc.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"summary: 4 images, {sum(len(d['faces']) for d in docs)} faces, 3 failed") and \
        "photos/s" in summary and str(out) in summary, proc.stderr
    assert f"0 of {len(paths) + 1} inputs already done" in summary, summary


@needs_ray
def test_two_node_cluster_on_loopback(wheel_folder, tmp_path):
    """tools/ray_two_node.sh: a head and a second node on this machine, 1 CPU each, the same job on them."""
    import socket

    folder, paths, docs = wheel_folder
    with socket.socket() as s:  # a free port for the head, so that a Ray already running here is left alone
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PORT": str(port), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", os.path.join(ROOT, "tools", "ray_two_node.sh"), str(tmp_path / "out"), folder,
                           "--", "--shard-size", "2"], capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 1, proc.stderr  # the bad files
    assert "cluster: 2 nodes x 1 CPU" in proc.stderr, proc.stderr
    assert _shard_docs(str(tmp_path / "out")) == _by_image(docs)


@needs_ray
def test_ray_gives_the_faces_of_infer_json(local_ray, wheel_folder, tmp_path):
    from agegender.serving.ray_batch import run

    from agegender.serving.shards import plan_shards

    folder, paths, docs = wheel_folder
    summary = run([folder], str(tmp_path), shard_size=2)
    assert summary.complete and (summary.images, summary.failures) == (4, 2)
    assert summary.shards == len(plan_shards(paths, 2)) > 1
    assert _shard_docs(str(tmp_path)) == _by_image(docs)  # face for face, the bad files as error rows


@needs_ray
def test_the_local_rays_workers_run_at_the_commands_priority(local_ray):
    """Ray's default puts its workers at nice 15, where any other job on the machine (a training run at nice 8)
    takes their cores first: --ray then ran at a quarter of plain infer.py's rate beside one."""
    @ray.remote(num_cpus=1)
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0)


@needs_ray
def test_ray_real_photos_from_shared(local_ray, tmp_path):
    from agegender.serving.ray_batch import run

    photos = shared_path("data", "photos")
    folder = str(tmp_path / "in")
    _photo_folder(folder, [os.path.join(photos, n) for n in ("biubug6_ncnn_sample.jpg", "insightface_t2.jpg")])
    docs = _json_docs(folder)
    run([folder], str(tmp_path / "out"), shard_size=3)
    assert _shard_docs(str(tmp_path / "out")) == _by_image(docs)


@needs_ray
def test_a_killed_net_worker_is_retried_and_every_input_is_there_once(local_ray, wheel_folder, tmp_path):
    from agegender.serving.ray_batch import run
    from tests.ray_faults import DYING_ACTORS

    folder, paths, docs = wheel_folder
    os.remove(local_ray)  # the first call of a dying actor kills its worker process (os._exit), once
    summary = run([folder], str(tmp_path), shard_size=2, actors=DYING_ACTORS)
    assert os.path.exists(local_ray), "the hook did not fire: no worker was killed"
    assert summary.complete
    assert _shard_docs(str(tmp_path)) == _by_image(docs)  # complete, no duplicates, same values


@needs_ray
def test_the_net_on_its_own_actors_gives_the_same_faces(local_ray, wheel_folder, tmp_path):
    """The GPU layout (detection on CPU actors, the net on a net actor; crops through the object store), run
    on CPUs: the same documents as the one-process path."""
    from agegender.serving.ray_batch import run

    folder, paths, docs = wheel_folder
    summary = run([folder], str(tmp_path), shard_size=3, split=True)
    assert summary.complete and _shard_docs(str(tmp_path)) == _by_image(docs)


@needs_ray
def test_without_the_gender_ensemble_both_layouts_give_infers_faces(local_ray, wheel_folder, tmp_path):
    """--no-gender-ensemble on Ray, one-process and GPU layouts: infer.py --no-gender-ensemble's documents (the
    teacher's chips neither cut nor sent), which differ from the default's in P(male) only."""
    from agegender.serving.ray_batch import Settings, run

    folder, _, with_teacher = wheel_folder
    alone = _json_docs(folder, "--no-gender-ensemble")
    assert alone != with_teacher
    for split in (False, True):
        out = str(tmp_path / f"split{split}")
        summary = run([folder], out, Settings(gender_ensemble=False), shard_size=3, split=split)
        assert summary.complete and _shard_docs(out) == _by_image(alone)


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory, wheel_folder) -> tuple[str, list[str]]:
    """16 distinct files (names differ, so their shard keys do): the wheel folder's three photos, copied. Shard
    boundaries come from the paths, pytest's numbered temporary folder included: the folder is one whose
    paths cut into at least three shards of about 4, so that the tests' runs always have shards to keep."""
    from agegender.serving.shards import plan_shards

    folder, paths, _ = wheel_folder
    photos = [p for p in paths if not p.endswith(BAD + ("blank.png",))]
    base = tmp_path_factory.mktemp("many")
    names = [f"{i:02d}_{os.path.basename(photos[i % len(photos)])}" for i in range(16)]
    out = next(base / f"set{k}" for k in range(1000)
               if len(plan_shards(sorted(str(base / f"set{k}" / n) for n in names), 4)) >= 3)
    out.mkdir()
    made = []
    for i, name in enumerate(names):
        shutil.copy(photos[i % len(photos)], out / name)
        made.append(str(out / name))
    return str(out), sorted(made)


@needs_ray
def test_an_interrupted_run_keeps_its_shards_and_says_how_many_inputs_were_done(local_ray, many_photos, tmp_path):
    """Ctrl-C after two shards: the rerun keeps them, does only the rest, and says how many inputs were done."""
    from agegender.serving.ray_batch import run

    folder, paths = many_photos
    written = []

    def stop(key: str, manifest: dict) -> None:
        written.append(key)
        if len(written) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run([folder], str(tmp_path), shard_size=3, on_shard=stop)
    first = _shard_docs(str(tmp_path))
    assert len(_keys(tmp_path)) == 2 and 0 < len(first) < len(paths)
    again = run([folder], str(tmp_path), shard_size=3)
    assert again.complete and again.resumed == 2 and again.already == len(first)
    assert again.processed == len(paths) - len(first)
    assert f"{len(first)} of {len(paths)} inputs already done (2 of {again.shards} shards kept)" in again.line()
    assert [d["image"] for d in _shard_docs(str(tmp_path))] == paths  # every input once


def test_the_default_shard_is_small_so_a_short_run_keeps_its_work():
    """Ctrl-C in a 200-photo run keeps what finished: the default plan cuts 200 inputs into several shards,
    none above 4x the average."""
    from agegender.serving.ray_batch import SHARD_SIZE
    from agegender.serving.shards import plan_shards

    shards = plan_shards([f"/photos/{i:05d}.jpg" for i in range(200)], SHARD_SIZE)
    assert len(shards) >= 2 and max(map(len, shards)) <= 4 * SHARD_SIZE
    assert plan_shards([f"/p/{i}.jpg" for i in range(5000)], 1000) != [[f"/p/{i}.jpg" for i in range(5000)]]


def test_adding_or_removing_one_input_redoes_only_its_shard():
    """Shards are keyed by their inputs and cut where a path says so: one photo more or less changes one
    shard (rarely two), wherever it sorts."""
    from agegender.serving.shards import plan_shards, shard_key

    paths = [f"/data/photos/{i:06d}.jpg" for i in range(3000)]

    def keys(ps: list[str]) -> set[str]:
        return {shard_key(s, {}) for s in plan_shards(ps, 50)}

    base = keys(paths)
    assert 30 <= len(base) <= 100
    for changed in (["/data/photos/000000a.jpg"] + paths, paths[:10] + ["/data/photos/000010a.jpg"] + paths[10:],
                    paths[1:], paths[:1500] + paths[1501:], paths + ["/data/photos/zzz.jpg"]):
        new = keys(changed)
        assert len(new - base) <= 2 and len(base - new) <= 2, (len(new - base), len(base - new))
    assert shard_key(paths[:5], {}) == shard_key(paths[4::-1], {}) != shard_key(paths[:5], {"model": "other"})


@needs_pyarrow
@pytest.mark.parametrize("damage", ["truncated", "list manifest", "no images", "bad json", "other rows",
                                    "no parquet", "no manifest"])
def test_a_damaged_shard_is_never_trusted(tmp_path, damage):
    """A shard counts as done only when its manifest is well formed, its Parquet reads and its rows are its
    inputs with the manifest's counts; else it is moved to _stale/ (not deleted) and redone."""
    from agegender.serving.shards import manifest_path, prepare_output, shard_key, shard_name, write_shard

    inputs = ["a.jpg", "b.jpg"]
    face = {"face": 1, "box": [1, 2, 3, 4], "score": 0.9, "landmarks": [[1.0, 2.0]] * 5, "gender": "male",
            "p_male": 0.8, "age": 30.5, "age_low": 25, "age_high": 36, "flags": []}
    docs = {"a.jpg": {"schema_version": 2, "image": "a.jpg", "faces": [face]},
            "b.jpg": {"schema_version": 2, "image": "b.jpg", "error": "not image", "faces": []}}
    key = shard_key(inputs, {})
    good = shard_key(["c.jpg"], {})
    write_shard(str(tmp_path), key, inputs, docs, {})
    write_shard(str(tmp_path), good, ["c.jpg"], {"c.jpg": {"image": "c.jpg", "faces": []}}, {})
    part, manifest = tmp_path / shard_name(key), manifest_path(str(tmp_path), key)
    m = json.loads(open(manifest).read())
    if damage == "truncated":
        os.truncate(part, 100)
    elif damage == "list manifest":
        open(manifest, "w").write("[1, 2]")
    elif damage == "no images":
        del m["images"]
        open(manifest, "w").write(json.dumps(m))
    elif damage == "bad json":
        open(manifest, "w").write('{"inputs": ')
    elif damage == "other rows":
        write_shard(str(tmp_path), "x", ["a.jpg"], docs, {})
        os.replace(tmp_path / shard_name("x"), part)
    elif damage == "no parquet":
        os.remove(part)
    else:
        os.remove(manifest)
    state = prepare_output(str(tmp_path), {key: inputs, good: ["c.jpg"]}, {})
    assert list(state.done) == [good] and [n for n, _ in state.damaged] == [shard_name(key)]
    assert not part.exists() and not os.path.exists(manifest)
    assert {n for n in os.listdir(tmp_path / "_stale")} & {shard_name(key), f"part-{key}.json"}
    assert (tmp_path / shard_name(good)).exists()


@needs_ray
def test_a_damaged_shard_is_redone_and_the_run_says_so(wheel_folder, tmp_path):
    """The reviewer's case: a truncated shard, then the same command: redone, said in one line, no traceback,
    and the folder reads again."""
    import pandas as pd

    folder, paths, docs = wheel_folder
    out = tmp_path / "out"
    args = ("infer.py", "--image", folder, "--ray", "--parquet", str(out), "--shard-size", "3")
    assert run_script(*args).returncode == 1
    victim = sorted(n for n in os.listdir(out) if n.endswith(".parquet"))[0]
    os.truncate(out / victim, 100)
    proc = run_script(*args)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"warning: {out / victim} is damaged or incomplete (its Parquet file does not read" in proc.stderr
    assert len(pd.read_parquet(out).image.unique()) == len(paths)
    assert _shard_docs(str(out)) == _by_image(docs) and (out / "_stale" / victim).exists()


@needs_ray
def test_other_inputs_move_the_old_shards_aside_and_reuse_the_rest(local_ray, many_photos, tmp_path):
    """One photo removed: every shard whose inputs did not change is kept, the one that did is moved to _stale/
    and reported; with overwrite the stale shards are deleted."""
    from agegender.serving.ray_batch import run
    from agegender.serving.shards import plan_shards

    folder, paths = many_photos
    out = str(tmp_path / "out")
    first = run([folder], out, shard_size=4)
    before = _keys(out)
    # the photo removed: the first of a shard of several, so the shard boundaries stay where they are
    r = next(paths.index(shard[0]) for shard in plan_shards(paths, 4) if len(shard) > 1)
    fewer = paths[:r] + paths[r + 1:]
    listing = tmp_path / "fewer.txt"
    listing.write_text("\n".join(fewer) + "\n")
    log = tmp_path / "log"
    with open(log, "w") as f:
        second = run([str(listing)], out, shard_size=4, log=f)
    # the removed photo ended no shard, so its shard alone changes: one shard goes, one comes, the rest stay
    old, new = plan_shards(paths, 4), plan_shards(fewer, 4)
    gone, added = [s for s in old if s not in new], [s for s in new if s not in old]
    assert len(gone) == 1 and len(added) == 1 and len(old) >= 3
    assert second.complete and second.stale == len(gone) and second.resumed == first.shards - len(gone)
    assert second.processed == second.inputs - second.already < len(paths) - 1
    assert f"note: {len(gone)} shard(s) that no input of this run needs" in log.read_text()
    stale = set(os.listdir(os.path.join(out, "_stale")))
    assert len(stale) == 2 * len(gone) and stale <= {n for k in before for n in (k, k[:-len(".parquet")] + ".json")}
    assert [d["image"] for d in _shard_docs(out)] == fewer
    third = run([folder], out, shard_size=4, overwrite=True)
    assert third.stale == len(added) and _keys(out) == before
    assert len(os.listdir(os.path.join(out, "_stale"))) == 2 * len(gone)


def test_plain_infer_takes_the_lists_that_ray_takes(wheel_folder, tmp_path):
    """infer.py without --ray reads .txt and .parquet lists of paths as --ray does."""
    folder, paths, docs = wheel_folder
    listing = tmp_path / "inputs.txt"
    listing.write_text("# the photos\n" + "\n".join(paths) + "\n")
    proc = run_script("infer.py", "--image", str(listing), "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout) == docs, proc.stderr
    if pq is not None:
        pq.write_table(pa.table({"image": paths[:3]}), tmp_path / "inputs.parquet")
        proc = run_script("infer.py", "--image", str(tmp_path / "inputs.parquet"), "--json")
        assert json.loads(proc.stdout) == docs[:3], proc.stderr
    proc = run_script("infer.py", "--image", str(listing), "--csv", str(listing))
    assert proc.returncode == 2 and "is an input" in proc.stderr and listing.read_text().startswith("# the")


@needs_ray
def test_joins_a_cluster_started_by_ray_start_as_the_readme_says(wheel_folder, tmp_path):
    """README: `ray start --head --port P`, then `infer.py --ray HOST:P`. A head started where
    ~/.ray/auth_token exists (any earlier local Ray makes one) checks the token; the driver must send it
    without being told. The head gets a free port, its own temp dir and HOME; only its processes are
    stopped (never `ray stop`, which would stop every Ray on the machine)."""
    import signal
    import socket
    import tempfile
    import time

    folder, paths, docs = wheel_folder
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1")
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's Unix sockets live there
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=ROOT)
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", "--port", str(port), "--num-cpus", "1",
                             "--object-store-memory", str(100 * 2 ** 20), "--include-dashboard", "false",
                             "--temp-dir", temp], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        time.sleep(3)  # the GCS answers before the head's raylet is registered
        out = tmp_path / "out"
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), "--image", folder, "--ray",
                               f"127.0.0.1:{port}", "--parquet", str(out)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stderr[-3000:]  # the bad files only
        assert "InvalidAuthToken" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert _shard_docs(str(out)) == _by_image(docs)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
        shutil.rmtree(temp, ignore_errors=True)


def test_the_shard_key_records_the_flip_setting_used_not_the_flag():
    """A shard written with the defaults and one written with the same setting named (`--flip` on a model
    that flips) are the same work: one key. The open model reads each face once, so its default key says
    so, and equals `--no-flip`'s."""
    from agegender.serving.ray_batch import Settings
    from agegender.serving.shards import shard_key

    key = lambda s: shard_key(["a.jpg", "b.jpg"], s.fingerprint())  # noqa: E731
    assert Settings().fingerprint()["flip"] is True
    assert key(Settings()) == key(Settings(flip=True)) != key(Settings(flip=False))
    assert Settings(model="open").fingerprint()["flip"] is False
    assert key(Settings(model="open")) == key(Settings(model="open", flip=False)) != key(Settings(model="open", flip=True))


def test_the_shard_key_changes_when_the_model_is_calibrated_anew(tmp_path):
    """Shards answered before a model's calibration changed (its temperature, or the ensemble's weight for
    the teacher) are not reused for it: the key records the calibration the answers were made with."""
    import shutil

    from agegender.model.engine import BUNDLED_ONNX, with_temperature
    from agegender.serving.ray_batch import Settings
    from agegender.serving.shards import shard_key

    copy = tmp_path / "m.onnx"
    shutil.copy(BUNDLED_ONNX, copy)
    key = lambda s: shard_key(["a.jpg"], s.fingerprint())  # noqa: E731
    before = key(Settings(model=str(copy)))
    copy.write_bytes(with_temperature(copy.read_bytes(), 0.9, teacher_weight=0.3))
    assert key(Settings(model=str(copy))) != before
    assert Settings(model=str(copy)).fingerprint()["calibration"]["gender_teacher_weight"] == 0.3
    # without the ensemble the weight makes no difference to the answers, so none to the key
    alone = Settings(model=str(copy), gender_ensemble=False).fingerprint()
    assert alone["calibration"]["gender_teacher_weight"] is None and alone["calibration"]["gender_temperature"] == 0.9
