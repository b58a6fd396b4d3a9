#!/usr/bin/env python
"""Inference and evaluation speed of both engines on this machine, against the reference pipeline.

1. bare forward of the attribute net (ready arrays, faces/s) at batch 1 / 32 / 256: the onnx engine, the
   mxnet engine (MKLDNN-partitioned Gluon), and a plain `mx.mod.Module` bound to the same checkpoint;
2. eval.py's loop (ImageRecordIter decoding + net + decoding) over a packed .rec with each engine;
3. end to end on N real 200x200 face photos (one face each): the reference pipeline (RetinaFace,
   InsightFace's checkpoint, one face per MXNet forward, as InsightFace's example does it) and
   FaceAnalyzer.analyze_paths (what infer.py runs) with each engine, start-up excluded, per stage;
   and with the speed settings a user can choose for folders of face crops (`--no-flip`, `--max-size 160`);
4. what those settings cost in accuracy: the photos of the val split's list (`--rec`'s `.lst`) through
   each, the main face of each photo against its labels;
5. whole runs of `infer.py --image FOLDER` as a user types it (start-up included), and the start-up
   alone (infer.py on one photo);
6. the ceiling: each stage's cost on one core, run alone, per photo, and the faces/s that a pipeline
   built on these stages would reach if it kept every core busy with no overhead at all, against the
   reference measured on the same photos.

    .venv/bin/python benchmarks/infer.py [--photos 3000] [--rec dataset/utkface/val.rec] [--chunks 3]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
INSIGHTFACE = os.path.join(SHARED, "weights", "insightface-genderage", "model")

import numpy as np  # noqa: E402


def rate(fn, batch: int, n: int) -> float:
    x = np.random.default_rng(0).uniform(0, 255, (batch, 3, 112, 112)).astype(np.float32)
    fn(x)
    fn(x)
    reps = max(3, n // batch)
    t = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return reps * batch / (time.perf_counter() - t)


def module_forward(prefix: str, epoch: int):
    """The checkpoint bound as a plain Module, rebound per batch shape: (N,3,112,112) -> (N,202)."""
    import mxnet as mx

    sym, arg, aux = mx.model.load_checkpoint(prefix, epoch)
    sym = sym.get_internals()["fc1_output"]
    mods: dict = {}

    def fwd(x: np.ndarray) -> np.ndarray:
        if x.shape not in mods:
            mod = mx.mod.Module(sym, data_names=["data"], label_names=None)
            mod.bind(data_shapes=[("data", x.shape)], for_training=False)
            mod.set_params(arg, aux, allow_missing=True, allow_extra=True)
            mods[x.shape] = mod
        mods[x.shape].forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
        return mods[x.shape].get_outputs()[0].asnumpy()
    return fwd


def reference(warm: list[str]):
    """RetinaFace + InsightFace's checkpoint, one face per forward, one thread of Python: a function of a
    list of photos -> (faces, s, seconds per stage)."""
    from agegender.model.age import decode
    from agegender.data.face import align_face, load_detector
    from agegender.data.image import read_image

    detector = load_detector(thresh=0.8)
    fwd = module_forward(INSIGHTFACE, 0)

    def run(paths: list[str]) -> tuple[int, float, dict]:
        t = {"read": 0.0, "detect+align": 0.0, "net": 0.0}
        faces = 0
        start = time.perf_counter()
        for p in paths:
            t0 = time.perf_counter()
            rgb = read_image(p)
            t1 = time.perf_counter()
            crops = [align_face(rgb, f.landmarks) for f in detector.detect(rgb)]
            t2 = time.perf_counter()
            for c in crops:
                decode(fwd(c.transpose(2, 0, 1)[None].astype(np.float32)), "vote")
            t3 = time.perf_counter()
            faces += len(crops)
            for k, dt in (("read", t1 - t0), ("detect+align", t2 - t1), ("net", t3 - t2)):
                t[k] += dt
        return faces, time.perf_counter() - start, t

    run(warm)
    return run


def analyzer_for(engine: str = "onnx", max_size: int = 1280, **settings):
    """A FaceAnalyzer as infer.py sets it up, with infer.py's `--max-size` and FaceAnalyzer's `settings`."""
    from agegender.serving.analyzer import FaceAnalyzer

    return FaceAnalyzer.from_options(engine=engine, max_size=max_size, det_threads=1, net_threads=1, **settings)


def pipeline(engine: str, warm: list[str], **settings):
    """FaceAnalyzer.analyze_paths as infer.py runs it (`settings`: max_size, flip), warmed up: a function
    of a list of photos -> (faces, s, seconds per stage)."""
    analyzer = analyzer_for(engine, **settings)

    def run(paths: list[str]) -> tuple[int, float, dict]:
        t: dict = {}
        start = time.perf_counter()
        faces = sum(len(r.faces) for r in analyzer.analyze_paths(paths, timings=t))
        return faces, time.perf_counter() - start, t

    run(warm)
    return run


SETTINGS = {"defaults": {}, "--no-gender-ensemble": {"gender_ensemble": False}, "--no-flip": {"flip": False},
            "--max-size 160": {"max_size": 160},
            "--max-size 160 --no-flip": {"max_size": 160, "flip": False},
            "--max-size 128": {"max_size": 128}}


def settings_accuracy(lst: str) -> None:
    """Gender accuracy and age MAE of each setting over the photos of a packed split's `.lst`."""
    from agegender.data.face import pick_main_face
    from agegender.model.teacher import read_lst

    entries = read_lst(lst)
    gender = np.array([e.gender for e in entries])
    age = np.array([e.age for e in entries])
    print(f"\naccuracy of the settings on the {len(entries)} photos of {lst} (main face of each photo)")
    for label, settings in SETTINGS.items():
        analyzer = analyzer_for(**settings)
        p_male, pred, missed = [], [], 0
        for res in analyzer.analyze_paths([e.path for e in entries], keep_images=True):
            if not res.faces:
                missed += 1
                p_male.append(np.nan)
                pred.append(np.nan)
                continue
            main_face = pick_main_face([f.face for f in res.faces], res.image.shape)
            main = next(f for f in res.faces if f.face is main_face)
            p_male.append(main.p_male)
            pred.append(main.age)
        p_male, pred = np.array(p_male), np.array(pred)
        ok = ~np.isnan(p_male)
        print(f"  {label:<28} gender {np.mean((p_male[ok] > 0.5) == gender[ok]):.4f}   MAE "
              f"{np.mean(np.abs(pred[ok] - age[ok])):.2f}   photos without a face {missed}", flush=True)


def ceiling(paths: list[str], ref_rate: float) -> None:
    """One core per stage, stages run alone: read, detect, align, net (batch 256, with and without flip).
    Their sum per face, spread over every core with nothing lost, bounds any pipeline on this detector;
    `ref_rate`: the reference's faces/s from the end-to-end run, whose first photos these are."""
    from agegender.data.face import align_face, load_detector
    from agegender.data.image import read_image
    from agegender.model.age import DEFAULT_DECODE
    from agegender.model.loading import load_engine

    detector, engine = load_detector(thresh=0.8, threads=1), load_engine(engine="onnx", threads=1)
    t = {"read": 0.0, "detect": 0.0, "align": 0.0}
    crops = []
    for p in paths:
        t0 = time.perf_counter()
        rgb = read_image(p)
        t1 = time.perf_counter()
        faces = detector.detect(rgb)
        t2 = time.perf_counter()
        crops += [align_face(rgb, f.landmarks) for f in faces]
        t3 = time.perf_counter()
        for k, dt in (("read", t1 - t0), ("detect", t2 - t1), ("align", t3 - t2)):
            t[k] += dt
    batch = np.stack(crops)
    for flip in (True, False):
        engine.predict_faces(batch[:256], 256, DEFAULT_DECODE, flip)
        t0 = time.perf_counter()
        engine.predict_faces(batch, 256, DEFAULT_DECODE, flip)
        t["net, flip" if flip else "net, no flip"] = time.perf_counter() - t0
    n, cores = len(crops), os.cpu_count() or 1
    print(f"\nthe ceiling on {len(paths)} photos ({n} faces): each stage alone on one core, ms per face")
    print("  " + "   ".join(f"{k} {1000 * v / n:.2f}" for k, v in t.items()))
    print(f"  reference, as run above (its own threads): {ref_rate:.1f} faces/s")
    for flip in (True, False):
        per_face = (t["read"] + t["detect"] + t["align"] + t["net, flip" if flip else "net, no flip"]) / n
        best = cores / per_face
        print(f"  {'with' if flip else 'without'} flip: {1000 * per_face:.2f} core-ms per face; every one of {cores} "
              f"cores busy, nothing lost: {best:.0f} faces/s = {best / ref_rate:.2f}x the reference", flush=True)


def cli_seconds(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), *args], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=3000, help="200x200 UTKFace photos for the end-to-end figures")
    p.add_argument("--rec", default="dataset/utkface/val.rec", help="packed .rec for the eval figures")
    p.add_argument("--chunks", type=int, default=3, help="the end-to-end photos are run in this many chunks, every "
                   "pipeline on each in turn (the machine's speed drifts)")
    p.add_argument("--ceiling-photos", type=int, default=1000, help="photos for the per-stage ceiling")
    args = p.parse_args()

    from agegender.model.engine import BUNDLED_MODEL
    from agegender.model.loading import load_engine

    engines = {"onnx": load_engine(engine="onnx"), "mxnet": load_engine(engine="mxnet")}
    module = module_forward(BUNDLED_MODEL, 0)
    print(f"bundled model; CPU cores: {os.cpu_count()}\n")
    print("bare forward, faces/s")
    print(f"{'batch':>6}{'onnx engine':>14}{'mxnet engine':>14}{'plain Module':>14}")
    for batch in (1, 32, 256):
        n = 300 if batch == 1 else 3000
        print(f"{batch:>6}{rate(engines['onnx'].forward, batch, n):>14.0f}"
              f"{rate(engines['mxnet'].forward, batch, n):>14.0f}{rate(module, batch, n):>14.0f}", flush=True)

    if os.path.isfile(args.rec):
        from agegender.model.evaluation import predict_rec

        print(f"\neval.py's loop on {args.rec} (batch 256), faces/s")
        for name, eng in engines.items():
            predict_rec(eng, args.rec, 256, progress=False)
            t = time.perf_counter()
            n = len(predict_rec(eng, args.rec, 256, progress=False).age)
            print(f"  {name:<6}{n / (time.perf_counter() - t):>8.0f}  ({n} faces)", flush=True)

    lst = os.path.splitext(args.rec)[0] + ".lst"
    if os.path.isfile(lst):
        settings_accuracy(lst)

    utk = os.path.join(SHARED, "data", "utkface")
    if not os.path.isdir(utk):
        print(f"\n({utk} absent: end-to-end figures skipped)")
        return
    names = sorted(os.listdir(utk))
    paths = [os.path.join(utk, n) for n in names[:: max(1, len(names) // args.photos)][:args.photos]]
    size = -(-len(paths) // max(1, args.chunks))
    chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
    print(f"\nend to end on {len(paths)} UTKFace 200x200 photos, start-up excluded: in {len(chunks)} chunks, "
          "every pipeline on each chunk in turn (the order rotating), so that the machine's drift is shared")
    warm = paths[:16]
    runs = [("reference (InsightFace ckpt, 1 face/forward)", reference(warm))] if \
        os.path.isfile(INSIGHTFACE + "-0000.params") else []
    runs += [(f"infer.py pipeline, --engine {e}", pipeline(e, warm)) for e in ("mxnet", "onnx")]
    # the speed settings a user can choose for folders of face crops (README: what they cost in accuracy)
    runs += [(f"infer.py pipeline, onnx, {label}", pipeline("onnx", warm, **st)) for label, st in SETTINGS.items() if st]
    totals = {label: [0, 0.0, {}] for label, _ in runs}
    per_chunk: dict = {label: [] for label, _ in runs}
    for k, part in enumerate(chunks):
        for label, run in runs[k % len(runs):] + runs[:k % len(runs)]:
            faces, secs, t = run(part)
            total = totals[label]
            total[0] += faces
            total[1] += secs
            for stage, v in t.items():
                total[2][stage] = total[2].get(stage, 0.0) + v
            per_chunk[label].append(faces / secs)
    first = runs[0][0]
    ref_rate = totals[first][0] / totals[first][1]
    ref_secs = totals[first][1]
    print(f"{'pipeline':<52}{'faces':>6}{'s':>7}{'faces/s':>9}{'x ref':>7}{'chunks':>12}   ms per face (summed over threads)")
    for label, _ in runs:
        faces, secs, t = totals[label]
        ratios = np.array(per_chunk[label]) / np.array(per_chunk[first])
        parts = "  ".join(f"{k} {1000 * v / max(1, faces):.2f}" for k, v in t.items())
        print(f"{label:<52}{faces:>6}{secs:>7.2f}{faces / secs:>9.1f}{faces / secs / ref_rate:>7.2f}"
              f"{f'{ratios.min():.2f}-{ratios.max():.2f}':>12}   {parts}", flush=True)
    if first.startswith("reference"):
        ceiling(paths[:args.ceiling_photos], ref_rate)

    with tempfile.TemporaryDirectory() as tmp:
        for pth in paths:
            os.symlink(pth, os.path.join(tmp, os.path.basename(pth)))
        print(f"\nwhole runs (start-up included), {len(paths)} photos")
        if os.path.isfile(INSIGHTFACE + "-0000.params"):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import mxnet as mx; "
                            "from agegender.data.face import load_detector; load_detector(); "
                            "mx.model.load_checkpoint(sys.argv[2], 0)", ROOT, INSIGHTFACE], check=True,
                           stderr=subprocess.DEVNULL)
            ref_start = time.perf_counter() - t
            print(f"  reference      start-up {ref_start:5.2f} s   whole run {ref_start + ref_secs:6.2f} s "
                  f"= {len(paths) / (ref_start + ref_secs):6.1f} photos/s", flush=True)
        for engine in ("onnx", "mxnet"):
            start = cli_seconds(["--image", paths[0], "--engine", engine])
            whole = cli_seconds(["--image", tmp, "--engine", engine])
            print(f"  infer.py --engine {engine:<6} start-up (one photo) {start:5.2f} s   whole run {whole:6.2f} s "
                  f"= {len(paths) / whole:6.1f} photos/s", flush=True)


if __name__ == "__main__":
    main()
