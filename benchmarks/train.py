#!/usr/bin/env python
"""Training speed on this machine: ImageRecordIter images/s, the bare network's forward+backward
samples/s (the limit), and train.py's own step (data, forward, backward, update, metrics) samples/s,
for m50 at x0.25 / x0.5 / x1.0 with --version-input 1 and 0, and r50.

    .venv/bin/python benchmarks/train.py [--data-dir dataset/utkface] [--steps 20] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

from agegender.symbols import get_network  # noqa: E402
from agegender.model.age import age_gender_loss, decode  # noqa: E402
from agegender.data.iterators import Augment, record_iter  # noqa: E402
from agegender.model.metrics import AgeGenderMetric  # noqa: E402
from agegender.model.training import Fit, TrainConfig  # noqa: E402

CONFIGS = [("m50", 0.25, 1), ("m50", 0.25, 0), ("m50", 0.5, 1), ("m50", 0.5, 0), ("m50", 1.0, 1), ("m50", 1.0, 0),
           ("r50", 1.0, 1)]


def iter_speed(rec: str, batch: int, threads: int, batches: int) -> float:
    it = record_iter(rec, batch, train=True, augment=Augment(mirror=True, color=0.2), threads=threads)
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        b.data[0].wait_to_read()
    return batches * batch / (time.perf_counter() - t)


def bare_speed(name: str, mult: float, vin: int, batch: int, steps: int) -> float:
    net = get_network(name, multiplier=mult, version_input=vin)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9})
    x = mx.nd.random.uniform(0, 255, (batch, 3, 112, 112))
    y = mx.nd.array(np.c_[np.random.randint(0, 2, batch), np.random.randint(1, 90, batch)])
    for i in range(steps + 2):
        if i == 2:
            t = time.perf_counter()
        with autograd.record():
            loss = age_gender_loss(mx.nd, net(x), y)
        loss.backward()
        trainer.step(batch)
        loss.wait_to_read()
    return steps * batch / (time.perf_counter() - t)


def loop_speed(data_dir: str, name: str, mult: float, vin: int, batch: int, steps: int, threads: int) -> float:
    cfg = TrainConfig(data_dir=data_dir, prefix="/nonexistent/bench", network=name, multiplier=mult,
                      version_input=vin, batch_size=batch, lr=0.01, num_workers=threads,
                      augment=Augment(mirror=True, color=0.2))
    fit = Fit.from_config(cfg)
    it = record_iter(fit.train_rec, fit.global_batch, train=True, augment=fit.cfg.augment, threads=threads)
    metric = AgeGenderMetric()
    for i in range(steps + 2):
        if i == 2:
            t = time.perf_counter()
        b = next(it)
        _, outs = fit.train_batch(b.data[0], b.label[0])
        metric.update(*decode(outs), b.label[0].asnumpy()[:, 0], b.label[0].asnumpy()[:, 1])
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="dataset/utkface", help="folder with a packed train.rec")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--threads", type=int, default=2, help="decoding threads")
    p.add_argument("--only", default="", help="comma-separated subset, e.g. m50x0.25v1,r50")
    args = p.parse_args()
    rec = os.path.join(args.data_dir, "train.rec")
    if not os.path.isfile(rec):
        sys.exit(f"error: {rec} not found: pack one first (README, 'Packing a dataset')")
    print(f"CPU cores: {os.cpu_count()}, MXNet {mx.__version__}, batch {args.batch_size}")
    print(f"ImageRecordIter (decode + mirror + colour jitter), {args.threads} threads: "
          f"{iter_speed(rec, 128, args.threads, 40):.0f} images/s")
    print(f"{'network':<16}{'bare fwd+bwd':>14}{'train.py step':>15}{'share':>8}   (samples/s)")
    for name, mult, vin in CONFIGS:
        label = f"{name}x{mult:g}v{vin}" if name.startswith("m") else name
        if args.only and label not in args.only.split(","):
            continue
        steps = max(3, args.steps // (6 if name.startswith("r") else 1))
        bare = bare_speed(name, mult, vin, args.batch_size, steps)
        loop = loop_speed(args.data_dir, name, mult, vin, args.batch_size, steps, args.threads)
        print(f"{label:<16}{bare:>14.1f}{loop:>15.1f}{loop / bare:>8.0%}", flush=True)


if __name__ == "__main__":
    main()
