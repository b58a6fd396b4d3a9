#!/usr/bin/env python
"""Photos/s of batch inference on N UTKFace photos (../shared), plain `infer.py --parquet` against
`infer.py --ray` on a local one-node Ray, measured in pairs (plain, then Ray, ROUNDS times over the same
photos), so that a machine shared with other work loads both alike. Each figure is the whole command: start-up
(loading models, starting Ray) included. Also Ray's rate once it is up, its stages (seconds summed over its
workers), and, with --two-node, a two-node cluster on this machine (tools/ray_two_node.sh, the cores split
between the nodes). Then what to expect per added machine (docs/ray.md).

    .venv/bin/python benchmarks/ray.py [--photos 3000] [--rounds 2] [--two-node]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
SUMMARY = re.compile(r"(\d+) processed by this run in ([\d.]+) s = ([\d.]+) photos/s, Ray start-up included "
                     r"\(([\d.]+) s, (\d+) photos done by the driver meanwhile\)")


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        sys.exit(f"error: {' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, proc.stderr


def ray_figures(stderr: str) -> dict:
    """infer.py --ray's summary figures: processed, seconds, startup, by_driver, and its stages line."""
    m = SUMMARY.search(stderr)
    if not m:
        sys.exit(f"error: no summary line in:\n{stderr[-2000:]}")
    stages = next((ln for ln in stderr.splitlines() if ln.startswith("stages: ")), "stages: ?")
    return {"processed": int(m[1]), "seconds": float(m[2]), "startup": float(m[4]), "by_driver": int(m[5]),
            "stages": stages}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=3000, help="how many UTKFace photos (sorted by name)")
    p.add_argument("--rounds", type=int, default=2, help="pairs of runs (plain, then --ray)")
    p.add_argument("--two-node", action="store_true", help="also a two-node cluster on this machine")
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
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = float("nan")
        print(f"{n} UTKFace photos, {cores} cores, load average {load:.1f} at the start; whole commands, start-up "
              f"included\n")
        ratios, plains, rays = [], [], []
        for r in range(1, args.rounds + 1):
            wall_p, _ = timed([py, "infer.py", "--image", folder, "--parquet", os.path.join(tmp, f"plain{r}.parquet")])
            wall_r, err = timed([py, "infer.py", "--image", folder, "--ray", "--parquet", os.path.join(tmp, f"ray{r}")])
            f = ray_figures(err)
            plain, ray = n / wall_p, n / wall_r
            after = (f["processed"] - f["by_driver"]) / max(1e-9, f["seconds"] - f["startup"])
            ratios.append(ray / plain)
            plains.append(plain)
            rays.append(ray)
            print(f"round {r}: plain infer.py --parquet {plain:6.1f} photos/s ({wall_p:5.1f} s);  --ray one local "
                  f"node {ray:6.1f} photos/s ({wall_r:5.1f} s: Ray start-up {f['startup']:.1f} s, {f['by_driver']} "
                  f"photos by the driver meanwhile, then {after:.1f} photos/s);  ratio {ray / plain:.2f}")
            print(f"         {f['stages']}")
        print(f"\nmedian: plain {statistics.median(plains):.1f} photos/s, --ray {statistics.median(rays):.1f} "
              f"photos/s, ratio {statistics.median(ratios):.2f} (each round's: "
              f"{', '.join(f'{x:.2f}' for x in ratios)})")

        if args.two_node:
            env = {**os.environ, "PYTHON": py, "CPUS_PER_NODE": str(max(1, cores // 2)), "PORT": "6391"}
            wall, err = timed(["bash", "tools/ray_two_node.sh", os.path.join(tmp, "ray2"), folder], env)
            f = ray_figures(err)
            up = re.search(r"up in (\d+) s", err)
            print(f"--ray, two nodes on loopback: {f['processed'] / max(1e-9, f['seconds']):.1f} photos/s once the "
                  f"cluster is up (cluster {up[1] if up else '?'} s to start, {f['by_driver']} photos by the driver "
                  f"while it joined; whole script {wall:.1f} s)\n         {f['stages']}")

    per_core = statistics.median(rays) / cores
    print(f"\nmeasured: {per_core:.1f} photos/s per core on one Ray node, start-up included")
    print(f"projected (not measured): each added machine with C cores adds about {per_core:.0f} x C photos/s "
          f"(e.g. {per_core * 16:.0f} photos/s for 16 cores) while the files are read at that rate")


if __name__ == "__main__":
    main()
