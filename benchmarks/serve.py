#!/usr/bin/env python
"""Load test of serve.py on 127.0.0.1 only: a bounded number of requests from concurrent clients (and a
time cap), real 200x200 face photos from ../shared/data/utkface (t1.jpg, six faces, mixed in); prints
requests/s, faces/s, latency percentiles and errors, and infer.py's pipeline on the same images.

    .venv/bin/python benchmarks/serve.py [--requests 1500] [--clients 16] [--cap 120]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")

from utils.data.demo import wheel_image  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--cap", type=float, default=120.0, help="stop sending after this many seconds")
    p.add_argument("--t1-every", type=int, default=50, help="every N-th request posts t1.jpg (6 faces)")
    p.add_argument("--server-args", default="", help="extra serve.py flags, e.g. '--workers 3'")
    args = p.parse_args()
    utk = os.path.join(SHARED, "data", "utkface")
    names = sorted(os.listdir(utk)) if os.path.isdir(utk) else []
    paths = [os.path.join(utk, n) for n in names[:: max(1, len(names) // args.requests)][:args.requests]] or \
        [wheel_image("t1.jpg")] * args.requests
    bodies = [open(pth, "rb").read() for pth in paths]
    t1 = open(wheel_image("t1.jpg"), "rb").read()

    rates = [pipeline_rate(paths)]  # before and after the load test: this machine's speed drifts
    port = free_port()
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "serve.py"), "--port", str(port),
                               *args.server_args.split()], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    local = threading.local()
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        start = time.perf_counter()

        def post(i: int):
            if time.perf_counter() - start > args.cap:
                return None
            body = t1 if args.t1_every and i % args.t1_every == args.t1_every - 1 else bodies[i % len(bodies)]
            t = time.perf_counter()
            try:
                if not hasattr(local, "conn"):  # one keep-alive connection per client, as real clients do
                    local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                local.conn.request("POST", "/v1/analyze", body=body)
                r = local.conn.getresponse()
                faces = len(json.loads(r.read())["faces"]) if r.status == 200 else 0
                return body is t1, time.perf_counter() - t, faces, r.status != 200
            except Exception:  # noqa: BLE001 -- counted as an error
                local.__dict__.pop("conn", None)
                return body is t1, time.perf_counter() - t, 0, True

        with ThreadPoolExecutor(args.clients) as pool:
            post(0)  # warm-up
            start = time.perf_counter()
            results = [r for r in pool.map(post, range(args.requests)) if r is not None]
        wall = time.perf_counter() - start
        with open(f"/proc/{server.pid}/stat") as f:  # the server's CPU seconds (utime + stime)
            server_cpu = sum(int(v) for v in f.read().split()[13:15]) / os.sysconf("SC_CLK_TCK")
        client_cpu = time.process_time()
    finally:
        server.terminate()
        server.wait(30)
    lat = np.array([r[1] for r in results]) * 1000
    single = np.array([r[1] for r in results if not r[0]]) * 1000
    faces = sum(r[2] for r in results)
    errors = sum(r[3] for r in results)
    print(f"serve.py, {args.clients} concurrent clients, {len(results)} requests in {wall:.1f} s (CPU cores: "
          f"{os.cpu_count()})")
    print(f"  requests/s {len(results) / wall:.1f}   faces/s {faces / wall:.1f}   errors {errors}")
    print(f"  CPU seconds: server {server_cpu:.1f} (start-up included), this load generator {client_cpu:.1f}")
    print(f"  latency ms, all requests:       p50 {np.percentile(lat, 50):.0f}  p95 {np.percentile(lat, 95):.0f}  "
          f"p99 {np.percentile(lat, 99):.0f}")
    print(f"  latency ms, single-face photos: p50 {np.percentile(single, 50):.0f}  p95 {np.percentile(single, 95):.0f}"
          f"  p99 {np.percentile(single, 99):.0f}")

    rates.append(pipeline_rate(paths))
    rate = sum(rates) / 2
    print(f"infer.py's pipeline on the same {len(paths)} photos: {rates[0]:.1f} faces/s before, {rates[1]:.1f} "
          f"after; the service reaches {faces / wall / rate:.0%} of their mean")


def pipeline_rate(paths: list[str]) -> float:
    """infer.py's pipeline (FaceAnalyzer, as infer.py sets it up) on `paths`: faces/s."""
    from utils.serving.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer.from_options(det_threads=1, net_threads=1)  # as infer.py
    list(analyzer.analyze_paths(paths[:8]))
    t = time.perf_counter()
    n = sum(len(r.faces) for r in analyzer.analyze_paths(paths))
    return n / (time.perf_counter() - t)

if __name__ == "__main__":
    main()
