#!/usr/bin/env python
"""Widen a MobileNet checkpoint function-preservingly (Net2WiderNet), e.g. InsightFace's MobileNet-0.25
into an x0.5 network that starts from exactly its outputs, to fine-tune with train.py --pretrained:

    python tools/widen.py ../shared/weights/insightface-genderage/model,0 models/wide/model --multiplier 0.5
    python train.py --network m50 --multiplier 0.5 --pretrained models/wide/model,0 ...
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.cli import ArgumentParser, number, NON_NEGATIVE_INT, POSITIVE  # noqa: E402
from agegender.errors import UserError, run_cli  # noqa: E402


def main() -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="PREFIX,EPOCH of the narrow checkpoint (ours or InsightFace's), or a bundled "
                                      "model's name")
    p.add_argument("output", help="prefix of the widened checkpoint (written as OUTPUT-0000.params)")
    p.add_argument("--network", default="m50", help="network of both checkpoints")
    p.add_argument("--from-multiplier", type=POSITIVE, default=0.25, help="width of the source")
    p.add_argument("--multiplier", type=POSITIVE, default=0.5, help="width of the result (a whole multiple)")
    p.add_argument("--version-input", type=int, default=1, choices=(0, 1))
    p.add_argument("--noise", type=number(float, 0, 0.5), default=0.05, help="relative jitter of the split weights")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    args = p.parse_args()

    import mxnet as mx
    import numpy as np

    from agegender.symbols import get_network, load_weights, save_checkpoint
    from agegender.symbols.widen import widen_into

    from agegender.atomic import refuse_inputs
    from agegender.model.engine import model_files
    from agegender.model.mxnet_engine import resolve_model

    refuse_inputs([("output", f"{args.output}-symbol.json"), ("output", f"{args.output}-0000.params")],
                  model_files(args.source))
    prefix, epoch = resolve_model(args.source, "source")  # a bundled model's name: its checkpoint
    nets = []
    for width in (args.from_multiplier, args.multiplier):
        net = get_network(args.network, multiplier=width, version_input=args.version_input)
        net.initialize()
        net(mx.nd.zeros((1, 3, 112, 112)))
        nets.append(net)
    report = load_weights(nets[0], prefix, epoch)
    if report.mismatched or report.missing:
        raise UserError(f"{args.source} is not a {args.network} x{args.from_multiplier} checkpoint ({report})")
    try:
        n = widen_into(nets[0], nets[1], noise=args.noise, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    x = mx.nd.array(np.random.default_rng(0).uniform(0, 255, (8, 3, 112, 112)))
    a, b = (net(x).asnumpy() for net in nets)
    diff = float(np.abs(a - b).max())
    if not diff < 1e-3 * max(1.0, float(np.abs(a).max())):
        raise UserError(f"widening changed the outputs (max abs diff {diff:.3g}); not written")
    path = save_checkpoint(nets[1], args.output, 0)
    print(f"{args.source} (x{args.from_multiplier}) -> {path} (x{args.multiplier}): {n} parameters widened, "
          f"max abs output difference {diff:.2e}")
    return 0


if __name__ == "__main__":
    run_cli(main)
