#!/usr/bin/env python
"""Photos/s of batch inference on N UTKFace photos (../shared), in one run: plain `infer.py --parquet`,
`infer.py --ray` on a local one-node Ray, and on a two-node cluster on this machine (tools/ray_two_node.sh,
the cores split between the nodes); start-up (loading models, starting or joining Ray) shown apart from the
processing rate. Then what to expect per added machine: measured per core here, projected for more
machines (docs/ray.md).

    .venv/bin/python benchmarks/ray.py [--photos 3000]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
SUMMARY = re.compile(r"processed by this run in ([\d.]+) s = ([\d.]+) photos/s \(\+([\d.]+) s Ray start-up\)")


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        sys.exit(f"error: {' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, proc.stderr


def ray_figures(stderr: str) -> tuple[float, float, float]:
    """(processing seconds, photos/s, Ray start-up seconds) from infer.py --ray's summary line."""
    m = SUMMARY.search(stderr)
    if not m:
        sys.exit(f"error: no summary line in:\n{stderr[-2000:]}")
    return float(m[1]), float(m[2]), float(m[3])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=3000, help="how many UTKFace photos (sorted by name)")
    args = p.parse_args()
    utk = os.path.join(SHARED, "data", "utkface")
    if not os.path.isdir(utk):
        sys.exit(f"error: {utk} not found (../shared is absent on this machine)")
    names = sorted(n for n in os.listdir(utk) if n.lower().endswith(".jpg"))[:args.photos]
    py = sys.executable
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "photos")
        os.makedirs(folder)
        for n in names:
            os.symlink(os.path.join(utk, n), os.path.join(folder, n))
        n = len(names)
        print(f"{n} UTKFace photos, {cores} cores; start-up is loading models (and starting or joining Ray)\n")

        one, _ = timed([py, "infer.py", "--image", os.path.join(folder, names[0]), "--parquet",
                        os.path.join(tmp, "one.parquet")])
        wall, _ = timed([py, "infer.py", "--image", folder, "--parquet", os.path.join(tmp, "plain.parquet")])
        plain = n / max(1e-9, wall - one)
        print(f"plain infer.py --parquet       {plain:7.1f} photos/s   start-up {one:5.1f} s   whole run {wall:6.1f} s")

        wall, err = timed([py, "infer.py", "--image", folder, "--ray", "--parquet", os.path.join(tmp, "ray1")])
        secs, local, startup = ray_figures(err)
        print(f"--ray, one local node          {local:7.1f} photos/s   start-up {wall - secs:5.1f} s "
              f"(Ray {startup:.1f} s)   whole run {wall:6.1f} s")

        env = {**os.environ, "PYTHON": py, "CPUS_PER_NODE": str(max(1, cores // 2)), "PORT": "6391"}
        wall, err = timed(["bash", "tools/ray_two_node.sh", os.path.join(tmp, "ray2"), folder], env)
        secs, two, _ = ray_figures(err)
        up = re.search(r"up in (\d+) s", err)
        print(f"--ray, two nodes on loopback   {two:7.1f} photos/s   start-up {wall - secs:5.1f} s "
              f"(cluster {up[1] if up else '?'} s)   whole run {wall:6.1f} s")

    per_core = local / cores
    print(f"\nmeasured: {per_core:.1f} photos/s per core on one Ray node (detection, the largest stage, is spread "
          f"over every core; the two loopback nodes share this machine's {cores} cores, so they show Ray's "
          f"overhead across nodes ({two / local:.2f}x of one node), not more capacity)")
    print(f"projected (not measured): each added machine with C cores adds about {per_core:.0f} x C photos/s "
          f"(e.g. {per_core * 16:.0f} photos/s for 16 cores) while the files are read at that rate; one GPU runs "
          f"the net for many CPU machines' detections")


if __name__ == "__main__":
    main()
