#!/usr/bin/env python
"""Evaluation and inference speed on this machine.

eval: faces/s of eval.py's loop (ImageRecordIter decoding + forward + decoding) at batch 1 / 32 / 256,
against the bare network's forward on ready arrays (the limit).
infer: end-to-end faces/s of infer.py's pipeline with read, detect, align and the attribute net timed
apart, on the real photos of ../shared/data/photos and on 200x200 UTKFace images (one face each).

    .venv/bin/python benchmarks/infer.py [--model PREFIX,EPOCH] [--rec dataset/utkface/val.rec] [--utk 1000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mxnet as mx  # noqa: E402

from utils.evaluation import predict_rec  # noqa: E402
from utils.face import load_detector  # noqa: E402
from utils.inference import analyse  # noqa: E402
from utils.predict import Predictor, resolve_model  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared")
PHOTOS = ["insightface_t1.jpg", "insightface_t2.jpg", "insightface_worlds-largest-selfie.jpg"]


def forward_limit(pred: Predictor, batch: int, n: int) -> float:
    x = mx.nd.random.uniform(0, 255, (batch, 3, 112, 112))
    pred.outputs(x)
    reps = max(1, n // batch)
    t = time.perf_counter()
    for _ in range(reps):
        pred.outputs(x)
    return reps * batch / (time.perf_counter() - t)


def eval_speed(pred: Predictor, rec: str, batch: int) -> float:
    predict_rec(pred, rec, batch, progress=False)  # warm-up (and the count)
    t = time.perf_counter()
    res = predict_rec(pred, rec, batch, progress=False)
    return len(res.age) / (time.perf_counter() - t)


def infer_row(label: str, paths: list[str], detector, pred: Predictor) -> None:
    analyse(paths[:1], detector, pred, keep_images=False)  # warm-up
    timings: dict = {}
    t = time.perf_counter()
    results = analyse(paths, detector, pred, keep_images=False, timings=timings)
    total = time.perf_counter() - t
    faces = sum(len(r.faces) for r in results)
    parts = "  ".join(f"{k} {1000 * timings.get(k, 0) / max(1, faces):.2f}" for k in ("read", "detect", "align", "net"))
    print(f"{label:<34}{len(paths):>7}{faces:>7}{faces / total:>10.1f}   ms/face: {parts}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="PREFIX,EPOCH (default: the bundled model)")
    p.add_argument("--rec", default="dataset/utkface/val.rec", help="packed .rec for the eval figures")
    p.add_argument("--utk", type=int, default=1000, help="UTKFace images for the single-face infer figure")
    args = p.parse_args()
    prefix, epoch = resolve_model(args.model)
    pred = Predictor(prefix, epoch)
    print(f"model {prefix},{epoch}; CPU cores: {os.cpu_count()}")
    if os.path.isfile(args.rec):
        print(f"\neval on {args.rec}")
        print(f"{'batch':>6}{'eval.py faces/s':>18}{'bare forward':>15}{'share':>8}")
        for batch in (1, 32, 256):
            limit = forward_limit(pred, batch, 1024 if batch > 1 else 200)
            speed = eval_speed(pred, args.rec, batch)
            print(f"{batch:>6}{speed:>18.1f}{limit:>15.1f}{speed / limit:>8.0%}", flush=True)
    else:
        print(f"(no {args.rec}: eval figures skipped)")
    detector = load_detector(thresh=0.8, threads=1)  # as infer.py: one thread per image, images in parallel
    print(f"\n{'infer (bundled RetinaFace)':<34}{'images':>7}{'faces':>7}{'faces/s':>10}")
    for name in PHOTOS:
        path = os.path.join(SHARED, "data", "photos", name)
        if os.path.isfile(path):
            infer_row(name, [path], detector, pred)
    utk = os.path.join(SHARED, "data", "utkface")
    if os.path.isdir(utk):
        names = sorted(os.listdir(utk))[:: max(1, len(os.listdir(utk)) // args.utk)][:args.utk]
        infer_row("UTKFace 200x200, one face each", [os.path.join(utk, n) for n in names], detector, pred)


if __name__ == "__main__":
    main()
