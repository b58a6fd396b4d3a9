#!/usr/bin/env python
"""Load test of serve.py on 127.0.0.1 only: rounds of a bounded number of requests from concurrent clients
(each round with a time cap), real 200x200 face photos from ../shared/data/utkface with t1.jpg (six faces)
mixed in; prints requests/s, faces/s, latency percentiles, errors and the share shed (503 over --max-queue;
a shed client waits the Retry-After it is given, at most 1 s, as a polite client does), and infer.py's pipeline on the same
sequence of images, measured before each round and after the last (this machine's speed drifts by 10-40 %
within minutes, so each round is compared with the pipeline runs on either side of it).

    .venv/bin/python benchmarks/serve.py [--requests 1500] [--rounds 3] [--clients 16] [--cap 120]
    .venv/bin/python benchmarks/serve.py --clients 64 --server-args "--max-queue 16"   # load shedding
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
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

from benchmarks.infer import pipeline  # noqa: E402 -- infer.py's pipeline, as the infer benchmark runs it
from agegender.data.demo import wheel_image  # noqa: E402
from agegender.model.launch import free_port  # noqa: E402


def image_mix(requests: int, t1_every: int) -> list[str]:
    """The photos posted, in order: UTKFace photos spread over the folder, t1.jpg as every `t1_every`-th."""
    utk = os.path.join(SHARED, "data", "utkface")
    names = sorted(os.listdir(utk)) if os.path.isdir(utk) else []
    photos = [os.path.join(utk, n) for n in names[:: max(1, len(names) // requests)][:requests]] or \
        [wheel_image("t1.jpg")]
    t1 = wheel_image("t1.jpg")
    return [t1 if t1_every and i % t1_every == t1_every - 1 else photos[i % len(photos)] for i in range(requests)]


class Round:
    """One round of the load test: `len(bodies)` requests from `clients` keep-alive clients."""

    def __init__(self, port: int, bodies: list[bytes], single: list[bool], clients: int, cap: float):
        self.port, self.bodies, self.single, self.clients, self.cap = port, bodies, single, clients, cap
        self.local = threading.local()
        self.why: dict[str, int] = {}  # what the errors were

    def post(self, i: int) -> tuple[bool, float, int, bool, bool] | None:
        """(single-face photo?, latency s, faces returned, error?, shed?) of request `i`; None past the cap."""
        if time.perf_counter() - self.start > self.cap:
            return None
        t = time.perf_counter()
        try:
            if not hasattr(self.local, "conn"):  # one keep-alive connection per client, as real clients do
                self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self.local.conn.request("POST", "/v1/analyze", body=self.bodies[i])
            r = self.local.conn.getresponse()
            body = r.read()  # always: the connection is reused
            faces = len(json.loads(body)["faces"]) if r.status == 200 else 0
            latency = time.perf_counter() - t
            if r.status not in (200, 503):
                self.why[f"HTTP {r.status}"] = self.why.get(f"HTTP {r.status}", 0) + 1
            if r.status == 503:
                time.sleep(min(1.0, float(r.getheader("Retry-After") or 1)))
            return self.single[i], latency, faces, r.status not in (200, 503), r.status == 503
        except Exception as exc:  # noqa: BLE001 -- counted as an error
            self.why[type(exc).__name__] = self.why.get(type(exc).__name__, 0) + 1
            self.local.__dict__.pop("conn", None)
            return self.single[i], time.perf_counter() - t, 0, True, False

    def run(self) -> tuple[list[tuple], float]:
        """The results of the requests sent, and the round's wall time (the errors' kinds in `why`)."""
        self.start = time.perf_counter()
        with ThreadPoolExecutor(self.clients) as pool:
            results = [r for r in pool.map(self.post, range(len(self.bodies))) if r is not None]
        return results, time.perf_counter() - self.start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1500, help="requests per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--cap", type=float, default=120.0, help="a round stops sending after this many seconds")
    p.add_argument("--t1-every", type=int, default=50, help="every N-th request posts t1.jpg (6 faces)")
    p.add_argument("--server-args", default="", help="extra serve.py flags, e.g. '--workers 3'")
    args = p.parse_args()
    paths = image_mix(args.requests, args.t1_every)
    t1 = wheel_image("t1.jpg")
    bodies = [open(pth, "rb").read() for pth in paths]
    single = [pth != t1 for pth in paths]

    run_pipeline = pipeline("onnx", paths[:100])
    port = free_port()
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "serve.py"), "--port", str(port),
                               *args.server_args.split()], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rates, rounds, client_cpu, why = [], [], 0.0, {}
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        Round(port, bodies[:100], single, args.clients, args.cap).run()  # warm-up
        cpu0 = server_cpu(server.pid)
        for _ in range(args.rounds):
            rates.append(pipeline_rate(run_pipeline, paths))
            c = time.process_time()
            one_round = Round(port, bodies, single, args.clients, args.cap)
            rounds.append(one_round.run())
            for kind, count in one_round.why.items():
                why[kind] = why.get(kind, 0) + count
            client_cpu += time.process_time() - c
        rates.append(pipeline_rate(run_pipeline, paths))
        cpu = server_cpu(server.pid) - cpu0
    finally:
        server.terminate()
        server.wait(30)

    sent = [r for res, _ in rounds for r in res]
    results = [r for r in sent if not r[4]]  # the accepted (and the failed); shed requests apart
    shed = len(sent) - len(results)
    wall = sum(w for _, w in rounds)
    lat = np.array([r[1] for r in results]) * 1000
    one = np.array([r[1] for r in results if r[0]]) * 1000
    faces = sum(r[2] for r in results)
    print(f"serve.py {args.server_args}".rstrip() + f", {args.clients} concurrent clients, {args.rounds} rounds, "
          f"{len(sent)} requests in {wall:.1f} s (CPU cores: {os.cpu_count()})")
    print(f"  requests/s {len(results) / wall:.1f}   faces/s {faces / wall:.1f}   errors {sum(r[3] for r in results)}"
          f"   shed (503) {shed} = {shed / max(1, len(sent)):.1%}" + (f"   errors: {why}" if why else ""))
    print(f"  CPU seconds during the rounds: server {cpu:.1f}, load generator {client_cpu:.1f}")
    print(f"  latency ms, accepted requests:  p50 {np.percentile(lat, 50):.0f}  p95 {np.percentile(lat, 95):.0f}  "
          f"p99 {np.percentile(lat, 99):.0f}")
    print(f"  latency ms, single-face photos: p50 {np.percentile(one, 50):.0f}  p95 {np.percentile(one, 95):.0f}"
          f"  p99 {np.percentile(one, 99):.0f}")
    print(f"infer.py's pipeline on the same {len(paths)} photos, before each round and after the last: "
          + ", ".join(f"{r:.1f}" for r in rates) + " faces/s")
    shares = []
    for i, (res, w) in enumerate(rounds):
        service = sum(r[2] for r in res) / w
        shares.append(service / ((rates[i] + rates[i + 1]) / 2))
        print(f"  round {i + 1}: service {service:.1f} faces/s = {shares[-1]:.0%} of the pipeline runs around it")
    print(f"the service reaches {faces / wall / np.mean(rates):.0%} of the pipeline overall "
          f"(rounds: {min(shares):.0%}-{max(shares):.0%})")


def pipeline_rate(run_pipeline, paths: list[str]) -> float:
    """Faces/s of infer.py's pipeline over `paths`."""
    faces, secs, _ = run_pipeline(paths)
    return faces / secs


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        return sum(int(v) for v in f.read().split()[13:15]) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
