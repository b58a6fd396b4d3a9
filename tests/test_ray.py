"""Parquet output (infer.py --parquet) and batch inference on Ray (infer.py --ray): the same faces, ages and
genders as infer.py --json, bad files as error rows, a net worker killed mid-run, an interrupted run resumed;
every input exactly once. Ray runs locally with 2 CPUs and a small object store (docs/ray.md)."""
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


def _json_docs(folder: str) -> list[dict]:
    proc = run_script("infer.py", "--image", folder, "--json")
    assert proc.returncode == 1, proc.stderr  # the bad files failed, the rest did not
    docs = json.loads(proc.stdout)
    return docs


def _shard_docs(out_dir: str) -> list[dict]:
    from agegender.serving.batch import docs_from_table

    files = sorted(glob.glob(os.path.join(out_dir, "part-*.parquet")))
    return docs_from_table(pa.concat_tables([pq.read_table(f) for f in files])) if files else []


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
    """A local Ray for this module: 2 CPUs, 200 MB of object store; the die-once hook armed but spent (its
    marker exists) until a test removes the marker."""
    from agegender.serving.ray_batch import DIE_ONCE_ENV, connect

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
    from agegender.serving.ray_batch import Settings, prepare_output

    (tmp_path / "part-00000.parquet").write_bytes(b"spark's")
    with pytest.raises(UserError, match="did not write"):
        prepare_output(str(tmp_path), [["a.jpg"]], Settings())
    assert (tmp_path / "part-00000.parquet").read_bytes() == b"spark's"


@needs_pyarrow
def test_inputs_from_folders_globs_and_lists(wheel_folder, tmp_path):
    from agegender.errors import UserError
    from agegender.serving.ray_batch import expand_inputs

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
    got = _shard_docs(str(out))
    assert got == docs + [{"schema_version": 2, "image": missing, "error": "missing file", "faces": []}]
    assert len(glob.glob(str(out / "part-*.parquet"))) == 3
    summary = proc.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"summary: 4 images, {sum(len(d['faces']) for d in docs)} faces, 3 failed") and \
        "photos/s" in summary and str(out) in summary, proc.stderr


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
    assert _shard_docs(str(tmp_path / "out")) == docs


@needs_ray
def test_ray_gives_the_faces_of_infer_json(local_ray, wheel_folder, tmp_path):
    from agegender.serving.ray_batch import run

    folder, paths, docs = wheel_folder
    summary = run([folder], str(tmp_path), shard_size=2)
    assert summary.complete and (summary.images, summary.failures, summary.shards) == (4, 2, 3)
    assert _shard_docs(str(tmp_path)) == docs  # face for face, the bad files as error rows


@needs_ray
def test_ray_real_photos_from_shared(local_ray, tmp_path):
    from agegender.serving.ray_batch import run

    photos = shared_path("data", "photos")
    folder = str(tmp_path / "in")
    _photo_folder(folder, [os.path.join(photos, n) for n in ("biubug6_ncnn_sample.jpg", "insightface_t2.jpg")])
    docs = _json_docs(folder)
    run([folder], str(tmp_path / "out"), shard_size=3)
    assert _shard_docs(str(tmp_path / "out")) == docs


@needs_ray
def test_a_killed_net_worker_is_retried_and_every_input_is_there_once(local_ray, wheel_folder, tmp_path):
    from agegender.serving.ray_batch import run

    folder, paths, docs = wheel_folder
    os.remove(local_ray)  # the next net call kills its worker process (os._exit), once
    summary = run([folder], str(tmp_path), shard_size=2)
    assert os.path.exists(local_ray), "the hook did not fire: no worker was killed"
    assert summary.complete
    assert _shard_docs(str(tmp_path)) == docs  # complete, no duplicates, same values


@needs_ray
def test_an_interrupted_run_resumes_with_every_image_once(local_ray, wheel_folder, tmp_path):
    from agegender.serving.ray_batch import run

    folder, paths, docs = wheel_folder

    def stop(index: int, manifest: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run([folder], str(tmp_path), shard_size=2, on_shard=stop)
    first = _shard_docs(str(tmp_path))
    assert len(first) == 2 and len(glob.glob(str(tmp_path / "part-*.parquet"))) == 1
    again = run([folder], str(tmp_path), shard_size=2)
    assert again.complete and again.resumed == 1 and again.processed == len(paths) - 2
    assert _shard_docs(str(tmp_path)) == docs
    # other shard sizes: the old shards do not match the plan and are redone, nothing twice
    third = run([folder], str(tmp_path), shard_size=3)
    assert third.resumed == 0 and _shard_docs(str(tmp_path)) == docs
    assert sorted(os.listdir(tmp_path / "_manifest")) == ["part-00000.json", "part-00001.json"]
