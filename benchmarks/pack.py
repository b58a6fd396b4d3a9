#!/usr/bin/env python
"""Packing speed on real UTKFace faces (../shared/data/utkface) with RetinaFace alignment.

Prints the detector's own faces/s on one core (the limit: times the number of cores), the whole
per-face pipeline (read, decode, detect, align, encode) on one core, and create_dataset's
end-to-end faces/s with all cores.

    .venv/bin/python benchmarks/pack.py [--faces 2000] [--workers 0]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.data.face import load_detector  # noqa: E402
from agegender.data.image import read_image  # noqa: E402
from agegender.data.pack import FaceSettings, face_jpeg, pack_dataset  # noqa: E402
from agegender.data.sources import parse_utkface  # noqa: E402

DEFAULT_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "shared", "data", "utkface")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=DEFAULT_SRC, help="UTKFace folder")
    p.add_argument("--faces", type=int, default=2000, help="how many faces to pack")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0 = all cores)")
    args = p.parse_args()
    if not os.path.isdir(args.src):
        sys.exit(f"error: UTKFace folder not found: {args.src}")
    cores = os.cpu_count() or 1
    workers = args.workers or cores

    parsed = parse_utkface(args.src)
    step = max(1, len(parsed.samples) // args.faces)
    parsed.samples = parsed.samples[::step][:args.faces]
    parsed.skips = []
    paths = [s.path for s in parsed.samples]
    n_one = min(300, len(paths))

    settings = FaceSettings()
    det = load_detector(thresh=settings.det_thresh, max_size=settings.det_max_size, threads=1)
    images = [read_image(path) for path in paths[:n_one]]
    det.detect(images[0])
    t = time.perf_counter()
    for img in images:
        det.detect(img)
    det_fps = n_one / (time.perf_counter() - t)

    t = time.perf_counter()
    for path in paths[:n_one]:
        try:
            face_jpeg(path, settings, det)
        except Exception:  # a skipped face costs the same work
            pass
    pipe_fps = n_one / (time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        result = pack_dataset([parsed], out, settings, val_ratio=0.05, seed=0, workers=workers, progress=False)
        wall = time.perf_counter() - t
    c = result.counts[parsed.name]
    packed = c["train"] + c["val"]

    print(f"machine: {cores} cores; {len(paths)} UTKFace faces (200x200), RetinaFace-mnet0.25 alignment")
    print(f"detector alone, 1 core:             {det_fps:7.1f} faces/s   (limit x {cores} cores: {det_fps * cores:.0f})")
    print(f"read+detect+align+encode, 1 core:   {pipe_fps:7.1f} faces/s")
    print(f"create_dataset end to end, {workers} workers: {len(paths) / wall:7.1f} faces/s "
          f"({packed} packed, {sum(c['skipped'].values())} skipped, {wall:.1f} s incl. worker start-up)")


if __name__ == "__main__":
    main()
