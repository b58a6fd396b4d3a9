#!/usr/bin/env python
"""The memory attack of issue 32 against a real serve.py on 127.0.0.1: `--clients` concurrent
`POST /v1/analyze?det_thresh=0.3` of one big many-face JPEG (`--side` x `--side`, tiled from
../shared/data/photos/insightface_t2.jpg, t1.jpg without it), each sent once. Prints the answers (200 /
503 / other / no answer), the faces found and dropped, the server's resident memory before, at its peak
(sampled every 50 ms, and the kernel's high-water mark), and after the burst (at 1, 10, 30 and 60 s).

    .venv/bin/python benchmarks/serve_memory.py [--clients 32] [--side 7000] [--server-args "..."]

Target (docs/service.md, issue 32), with the default flags: peak RSS <= 2 GB, under 600 MB within a minute
of the burst, every request answered or refused.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")

from agegender.data.demo import wheel_image  # noqa: E402
from agegender.model.launch import free_port  # noqa: E402


def attack_jpeg(side: int, scale: float) -> tuple[bytes, str]:
    """A side x side JPEG tiled from a group photo scaled by `scale` (many faces, many pixels), and the
    photo's name."""
    photo = os.path.join(SHARED, "data", "photos", "insightface_t2.jpg")
    if not os.path.isfile(photo):
        photo = wheel_image("t1.jpg")
    tile = cv2.imread(photo)
    tile = cv2.resize(tile, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    reps = (side // tile.shape[0] + 1, side // tile.shape[1] + 1, 1)
    # quality 70: 5.5 MB at 7000 px, under the default --max-bytes
    ok, buf = cv2.imencode(".jpg", np.tile(tile, reps)[:side, :side], [cv2.IMWRITE_JPEG_QUALITY, 70])
    assert ok
    return buf.tobytes(), os.path.basename(photo)


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of process `pid` in MB."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--side", type=int, default=7000)
    p.add_argument("--tile-scale", type=float, default=0.5,
                   help="the group photo's scale in the tiling (0.5: t2.jpg's faces 56 px, about 1,000 found)")
    p.add_argument("--server-args", default="", help="extra serve.py flags (the defaults are the target)")
    p.add_argument("--after", type=float, default=60.0, help="seconds to watch the memory after the burst")
    args = p.parse_args()

    data, photo = attack_jpeg(args.side, args.tile_scale)
    port = free_port()
    log_path = os.path.join(tempfile.gettempdir(), f"serve_memory.{os.getpid()}.log")
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "serve.py"), "--port", str(port),
                             *shlex.split(args.server_args)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"serve.py did not start: see {log_path}")
                time.sleep(0.3)
        rss0, _ = rss_mb(proc.pid)
        print(f"image: {args.side}x{args.side} JPEG tiled from {photo} at {args.tile_scale:g}x, "
              f"{len(data) / 1e6:.1f} MB; "
              f"{args.clients} concurrent POST /v1/analyze?det_thresh=0.3; server flags: "
              f"{args.server_args or '(defaults)'}")
        peak = [rss0]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], rss_mb(proc.pid)[0])
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def post(_: int) -> tuple[str, dict | None]:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
                conn.request("POST", "/v1/analyze?det_thresh=0.3", body=data, headers={"Content-Type": "image/jpeg"})
                r = conn.getresponse()
                body = r.read()
                if r.status == 503 and not r.getheader("Retry-After"):
                    return "503 without Retry-After", None
                return str(r.status), json.loads(body) if r.status == 200 else None
            except Exception as exc:  # noqa: BLE001 -- counted: a request neither answered nor refused
                return f"no answer ({type(exc).__name__})", None

        t = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            answers = list(pool.map(post, range(args.clients)))
        burst = time.perf_counter() - t
        _, hwm = rss_mb(proc.pid)
        after = {}
        t_end = time.perf_counter()
        for mark in (1, 10, 30, 60):
            if mark > args.after:
                break
            time.sleep(max(0.0, t_end + mark - time.perf_counter()))
            after[mark] = rss_mb(proc.pid)[0]
        sampling.set()
        counts: dict[str, int] = {}
        for status, _ in answers:
            counts[status] = counts.get(status, 0) + 1
        docs = [d for _, d in answers if d]
        print(f"answers: {dict(sorted(counts.items()))} in {burst:.1f} s")
        if docs:
            print(f"faces per answer: {docs[0]['faces_total']} found, {len(docs[0]['faces'])} labelled, "
                  f"{docs[0]['faces_dropped']} dropped")
        print(f"server RSS: before {rss0:.0f} MB, peak {max(peak[0], hwm):.0f} MB (sampled {peak[0]:.0f}, "
              f"VmHWM {hwm:.0f}), after the burst " + ", ".join(f"{k} s: {v:.0f} MB" for k, v in after.items()))
        answered = all(s in ("200", "503") for s, _ in answers)
        print(f"target: peak <= 2048 MB {'met' if max(peak[0], hwm) <= 2048 else 'MISSED'}; "
              f"< 600 MB within 60 s {'met' if after and min(after.values()) < 600 else 'MISSED'}; "
              f"every request answered or refused {'met' if answered else 'MISSED'}")
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
