"""Networks: build them by name, export them as InsightFace-compatible checkpoints, load checkpoints.

Every network takes `data` (N,3,112,112) float RGB 0-255 and returns (N,202): `[0:2]` gender logits
(index 1 = male), then pair k = `[2+2k : 4+2k]` the logits of "age > k" (index 1 = yes), k = 0..99.
Exported symbols end in `fc1_output`, exactly as InsightFace's released gender-age checkpoint, so
each side's code loads the other's files.
"""
from __future__ import annotations

import re

import mxnet as mx
from mxnet import gluon

from symbols.common import NUM_OUTPUTS, OUTPUT_NAME
from symbols.mobilenet import MobileNet
from symbols.resnet import UNITS, FaceResNet


def get_network(name: str, multiplier: float = 1.0, version_input: int = 1, version_output: str = "GAP",
                use_se: bool = False) -> gluon.HybridBlock:
    """`m50` (or any `m...`): MobileNet v1 at `multiplier`; `r18`/`r34`/`r50`/`r100`: face ResNet."""
    if version_output.upper() != "GAP":
        raise ValueError(f"only the GAP output head is implemented, got {version_output!r}")
    if re.fullmatch(r"m\d*", name):
        return MobileNet(multiplier=multiplier, version_input=version_input)
    m = re.fullmatch(r"r(\d+)", name)
    if m and int(m[1]) in UNITS:
        return FaceResNet(depth=int(m[1]), use_se=use_se)
    raise ValueError(f"unknown network {name!r}: use m50 (MobileNet, see --multiplier) or r18/r34/r50/r100")


def to_symbol(net: gluon.HybridBlock) -> mx.sym.Symbol:
    """The network as a symbol whose single output is named `fc1_output`."""
    return mx.sym.identity(net(mx.sym.var("data")), name=OUTPUT_NAME)


def save_checkpoint(net: gluon.HybridBlock, prefix: str, epoch: int) -> None:
    """Write `prefix-symbol.json` and `prefix-%04d.params` (arg:/aux: names), as mx.model does."""
    sym = to_symbol(net)
    aux_names = set(sym.list_auxiliary_states())
    arg, aux = {}, {}
    for name, param in net.collect_params().items():
        (aux if name in aux_names else arg)[name] = param.data(param.list_ctx()[0]).copyto(mx.cpu())
    mx.model.save_checkpoint(prefix, epoch, sym, arg, aux)


def load_model(prefix: str, epoch: int, ctx=None) -> gluon.SymbolBlock:
    """Load a checkpoint (ours or InsightFace's) as a Gluon block mapping data -> fc1_output (N,202)."""
    ctx = ctx or [mx.cpu()]
    sym, arg, aux = mx.model.load_checkpoint(prefix, epoch)
    internals = sym.get_internals()
    if f"{OUTPUT_NAME}_output" not in internals.list_outputs():
        raise ValueError(f"{prefix}-symbol.json has no {OUTPUT_NAME}_output")
    out = internals[f"{OUTPUT_NAME}_output"]
    block = gluon.SymbolBlock(out, mx.sym.var("data"))
    try:
        block.collect_params().load_dict({**arg, **aux}, ctx=ctx, ignore_extra=True)
    except AssertionError as exc:  # MXNet reports a missing parameter by assertion
        raise ValueError(f"{prefix}-{epoch:04d}.params does not fit {prefix}-symbol.json: "
                         f"{str(exc).split('.')[0]}") from None
    return block


__all__ = ["get_network", "save_checkpoint", "load_model", "to_symbol", "NUM_OUTPUTS"]
