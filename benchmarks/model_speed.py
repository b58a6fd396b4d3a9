#!/usr/bin/env python
"""Does a candidate attribute net keep infer.py no slower than the reference pipeline? Paired chunks of the same
real face photos through the reference pipeline (RetinaFace + InsightFace's checkpoint, one face per forward)
and through FaceAnalyzer (what infer.py runs) with each model and flip setting, alternating, start-up excluded;
prints photos/s per run and each pipeline's ratio to the reference (median over chunks).

    .venv/bin/python benchmarks/model_speed.py --model models/agegender.onnx --model cand.onnx:noflip [--photos 600]
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from infer import SHARED, pipeline, reference  # noqa: E402  (benchmarks/infer.py)

import numpy as np  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True,
                   help="a .onnx model, optionally :noflip or :flip (default: the model's own setting); repeatable")
    p.add_argument("--photos", type=int, default=600, help="UTKFace photos from ../shared")
    p.add_argument("--chunks", type=int, default=3, help="paired rounds over the photos")
    args = p.parse_args()
    photos = sorted(glob.glob(os.path.join(SHARED, "data", "utkface", "*.jpg")))[:args.photos]
    if not photos:
        sys.exit(f"error: no UTKFace photos under {SHARED}/data/utkface")
    warm = photos[:20]
    runs = {"reference": reference(warm)}
    for spec in args.model:
        path, _, opt = spec.partition(":")
        runs[spec] = pipeline("onnx", warm, model=path, flip={"noflip": False, "flip": True}.get(opt))
    chunks = np.array_split(photos, args.chunks)
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for c in chunks:
        for name, run in runs.items():
            _, secs, _ = run(list(c))
            rates[name].append(len(c) / secs)
    ref = np.array(rates["reference"])
    print(f"{len(photos)} photos in {args.chunks} paired chunks (photos/s; ratio to the reference, median)")
    for name, r in rates.items():
        print(f"  {name:<40} {np.median(r):7.1f} photos/s   x{np.median(np.array(r) / ref):.2f}")


if __name__ == "__main__":
    main()
