"""Networks: build them by name, export them as InsightFace-compatible checkpoints, load checkpoints.

Every network takes `data` (N,3,112,112) float RGB 0-255 and returns (N,202): `[0:2]` gender logits
(index 1 = male), then pair k = `[2+2k : 4+2k]` the logits of "age > k" (index 1 = yes), k = 0..99.
Exported symbols end in `fc1_output`, exactly as InsightFace's released gender-age checkpoint, so
each side's code loads the other's files.
"""
from __future__ import annotations

import glob
import json
import os
import re
import warnings
from dataclasses import dataclass, field

os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")  # no "Subgraph backend MKLDNN is activated" on stderr

import mxnet as mx  # noqa: E402
from mxnet import gluon  # noqa: E402

from agegender.symbols.common import NUM_OUTPUTS, OUTPUT_NAME
from agegender.atomic import atomic_path
from agegender.symbols.chipnet import ChipResNet10
from agegender.symbols.mobilenet import MobileNet
from agegender.symbols.resnet import UNITS, FaceResNet


def get_network(name: str, multiplier: float = 1.0, version_input: int = 1, version_output: str = "GAP",
                use_se: bool = False, learn_output_scale: bool = False) -> gluon.HybridBlock:
    """`m50` (or any `m...`): MobileNet v1 at `multiplier`; `r18`/`r34`/`r50`/`r100`: face ResNet; `d10`: the
    ResNet-10 of dlib's CC0 age net on a 64x64 chip cut inside the graph (`symbols.chipnet`), `d10-96` on a
    96x96 one.
    `learn_output_scale`: the output BatchNorm learns its gamma (`symbols.common.GAPHead`)."""
    if version_output.upper() != "GAP":
        raise ValueError(f"only the GAP output head is implemented, got {version_output!r}")
    # a fixed prefix gives the same parameter names in every process, however many nets it built
    if re.fullmatch(r"m\d*", name):
        return MobileNet(multiplier=multiplier, version_input=version_input, learn_output_scale=learn_output_scale,
                         prefix="mobilenet_")
    m = re.fullmatch(r"d10(?:-(\d+))?", name)
    if m:
        return ChipResNet10(learn_output_scale=learn_output_scale, chip=int(m[1] or 64), prefix="chipnet_")
    m = re.fullmatch(r"r(\d+)", name)
    if m and int(m[1]) in UNITS:
        return FaceResNet(depth=int(m[1]), use_se=use_se, learn_output_scale=learn_output_scale, prefix="resnet_")
    raise ValueError(f"unknown network {name!r}: use m50 (MobileNet, see --multiplier), r18/r34/r50/r100 or d10 (d10-96: on a 96x96 chip)")


def to_symbol(net: gluon.HybridBlock) -> mx.sym.Symbol:
    """The network as a symbol whose single output is named `fc1_output`."""
    return mx.sym.identity(net(mx.sym.var("data")), name=OUTPUT_NAME)


def save_checkpoint(net: gluon.HybridBlock, prefix: str, epoch: int) -> str:
    """Write `prefix-symbol.json` and `prefix-%04d.params` (arg:/aux: names), as mx.model does, each
    under a temporary name renamed into place when complete. Returns the params path."""
    sym = to_symbol(net)
    aux_names = set(sym.list_auxiliary_states())
    arg, aux = {}, {}
    for name, param in net.collect_params().items():
        (aux if name in aux_names else arg)[name] = param.data(param.list_ctx()[0]).copyto(mx.cpu())
    return write_checkpoint(sym, arg, aux, prefix, epoch)


def write_checkpoint(sym: mx.sym.Symbol, arg: dict, aux: dict, prefix: str, epoch: int) -> str:
    """The files mx.model.save_checkpoint writes, each through a temporary name. Returns the params path."""
    if os.path.dirname(prefix):
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
    params = f"{prefix}-{epoch:04d}.params"
    with atomic_path(prefix + "-symbol.json") as tmp_sym, atomic_path(params) as tmp_params:
        sym.save(tmp_sym)
        mx.nd.save(tmp_params, {**{f"arg:{k}": v for k, v in arg.items()}, **{f"aux:{k}": v for k, v in aux.items()}})
    return params


def average_checkpoints(prefix: str | list[str], epochs: list[int]) -> tuple[mx.sym.Symbol, dict, dict]:
    """The mean of several epochs' weights of one run (stochastic weight averaging over the epochs of a
    constant learning rate), or of the same epochs of several runs from one starting point (a list of
    prefixes), BatchNorm statistics averaged likewise. Raises ValueError when the checkpoints do not hold
    the same parameters."""
    if not epochs:
        raise ValueError("no epochs to average")
    prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
    files = [(p, e) for p in prefixes for e in epochs]
    sym, arg, aux = read_checkpoint(*files[0])
    sums = [{k: v.astype("float64") for k, v in d.items()} for d in (arg, aux)]
    for run, epoch in files[1:]:
        _, *parts = read_checkpoint(run, epoch)
        for total, part in zip(sums, parts):
            if set(part) != set(total) or any(part[k].shape != total[k].shape for k in total):
                raise ValueError(f"{run}-{epoch:04d}.params does not hold the parameters of "
                                 f"{files[0][0]}-{files[0][1]:04d}.params")
            for k in total:
                total[k] += part[k].astype("float64")
    arg, aux = ({k: (v / len(files)).astype("float32") for k, v in total.items()} for total in sums)
    return sym, arg, aux


def checkpoint_epochs(prefix: str) -> list[int]:
    """Epochs with a `prefix-%04d.params` file, ascending."""
    found = (re.fullmatch(re.escape(prefix) + r"-(\d{4,})\.params", p) for p in glob.glob(glob.escape(prefix) + "-*.params"))
    return sorted(int(m[1]) for m in found if m)


def parse_model_spec(spec: str) -> tuple[str, int]:
    """`PREFIX,EPOCH` -> (prefix, epoch); a bare `PREFIX` means its newest `prefix-%04d.params`.
    Raises ValueError saying what is missing."""
    prefix, _, epoch = spec.partition(",")
    if epoch:
        try:
            epoch_n = int(epoch)
        except ValueError:
            raise ValueError(f"bad model {spec!r}: expected PREFIX,EPOCH such as models/model,10") from None
    else:
        epochs = checkpoint_epochs(prefix)
        if not epochs:
            raise ValueError(f"no checkpoint {prefix}-NNNN.params found")
        epoch_n = epochs[-1]
    for path in (f"{prefix}-symbol.json", f"{prefix}-{epoch_n:04d}.params"):
        if not os.path.isfile(path):
            raise ValueError(f"model file not found: {path}")
    return prefix, epoch_n


def read_checkpoint(prefix: str, epoch: int) -> tuple[mx.sym.Symbol, dict, dict]:
    """`mx.model.load_checkpoint`, with a ValueError naming the file and the reason when one of the two
    files is missing, truncated or not what it should be."""
    from agegender.errors import short_reason

    files = (f"{prefix}-symbol.json", f"{prefix}-{epoch:04d}.params")
    for path in files:
        if not os.path.isfile(path):
            raise ValueError(f"model file not found: {path}")
    try:
        sym = mx.sym.load(files[0])
    except Exception as exc:  # noqa: BLE001 -- MXNet raises its own types with a C++ stack
        raise ValueError(f"{files[0]} is not an MXNet symbol file: {short_reason(exc)}") from None
    try:
        saved = mx.nd.load(files[1])
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{files[1]} cannot be read (truncated, or not a .params file): {short_reason(exc)}") from None
    if not isinstance(saved, dict) or not all(k.startswith(("arg:", "aux:")) for k in saved):
        raise ValueError(f"{files[1]} is not a checkpoint's parameter file (no arg:/aux: names)")
    arg = {k[4:]: v for k, v in saved.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in saved.items() if k.startswith("aux:")}
    return sym, arg, aux


def fixed_gammas(sym: mx.sym.Symbol) -> set[str]:
    """Names of the gammas of BatchNorms with fix_gamma (MXNet's default): the op ignores their stored
    values, which InsightFace's checkpoint leaves far from 1, and treats them as 1."""
    nodes = json.loads(sym.tojson())["nodes"]
    return {nodes[n["inputs"][1][0]]["name"] for n in nodes if n["op"] == "BatchNorm"
            and n.get("attrs", {}).get("fix_gamma", "True").lower() in ("true", "1")}


@dataclass
class TransferReport:
    """What `load_weights` did: parameters copied, re-initialised for a shape mismatch, not found."""

    loaded: int = 0
    by_order: bool = False
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    gamma_differs: list[str] = field(default_factory=list)  # learned on one side, fixed on the other

    def __str__(self) -> str:
        how = " (matched by graph order: the checkpoint names its layers differently)" if self.by_order else ""
        text = f"{self.loaded} parameters loaded{how}"
        if self.mismatched:
            text += f"; {len(self.mismatched)} re-initialised, shapes differ: " + ", ".join(self.mismatched[:8])
            text += " ..." if len(self.mismatched) > 8 else ""
        if self.missing:
            text += f"; {len(self.missing)} not in the checkpoint, initialised: " + ", ".join(self.missing[:8])
            text += " ..." if len(self.missing) > 8 else ""
        if self.gamma_differs:
            text += "; BatchNorm gamma learned on one side and fixed on the other (--learn-output-scale): " + \
                ", ".join(self.gamma_differs)
        return text


def load_weights(net: gluon.HybridBlock, prefix: str, epoch: int) -> TransferReport:
    """Copy a checkpoint's weights (ours or InsightFace's) into an initialised `net`.

    Parameters are matched by name; when most names differ (a checkpoint written by other code, such
    as InsightFace's MobileNet-0.25, which is our m50 x0.25 --version-input 1 layer for layer) they are
    matched by their order in the graph. A parameter whose shape differs keeps its initial value and
    is reported. A gamma that the checkpoint holds fixed is loaded as the 1 it acts as, so a network
    whose BatchNorm learns that gamma starts from the checkpoint's function."""
    sym, arg, aux = read_checkpoint(prefix, epoch)
    theirs = sym.get_internals()[f"{OUTPUT_NAME}_output"] if f"{OUTPUT_NAME}_output" in \
        sym.get_internals().list_outputs() else sym
    ours_sym = to_symbol(net)
    params = net.collect_params()
    pairs: list[tuple[str, str | None]] = []  # (our name, their name)
    named = {**arg, **aux}
    theirs_fixed, ours_fixed = fixed_gammas(sym), fixed_gammas(ours_sym)
    for name in theirs_fixed & set(named):
        named[name] = mx.nd.ones_like(named[name])
    ours = [n for n in ours_sym.list_arguments() if n != "data"] + ours_sym.list_auxiliary_states()
    report = TransferReport()
    if sum(n in named for n in ours) >= len(ours) / 2:
        pairs = [(n, n if n in named else None) for n in ours]
    else:
        report.by_order = True
        for kind_ours, kind_theirs in ((ours_sym.list_arguments(), theirs.list_arguments()),
                                       (ours_sym.list_auxiliary_states(), theirs.list_auxiliary_states())):
            a = [n for n in kind_ours if n != "data"]
            b = [n for n in kind_theirs if n != "data" and n in named]
            pairs += [(n, b[i] if i < len(b) else None) for i, n in enumerate(a)]
    for ours_name, their_name in pairs:
        param = params[ours_name]
        if their_name is None:
            report.missing.append(ours_name)
        elif named[their_name].shape != param.shape:
            report.mismatched.append(f"{ours_name} {param.shape} vs {their_name} {named[their_name].shape}")
        else:
            param.set_data(named[their_name])
            report.loaded += 1
            if (ours_name in ours_fixed) != (their_name in theirs_fixed):
                report.gamma_differs.append(ours_name)
    return report


def load_model(prefix: str, epoch: int, ctx=None) -> gluon.SymbolBlock:
    """Load a checkpoint (ours or InsightFace's) as a Gluon block mapping data -> fc1_output (N,202)."""
    ctx = ctx or [mx.cpu()]
    sym, arg, aux = read_checkpoint(prefix, epoch)
    internals = sym.get_internals()
    if f"{OUTPUT_NAME}_output" not in internals.list_outputs():
        raise ValueError(f"{prefix}-symbol.json has no {OUTPUT_NAME}_output")
    out = internals[f"{OUTPUT_NAME}_output"]
    with warnings.catch_warnings():  # "cannot decide type for data": float32, given at the first call
        warnings.simplefilter("ignore", UserWarning)
        block = gluon.SymbolBlock(out, mx.sym.var("data"))
    try:
        block.collect_params().load_dict({**arg, **aux}, ctx=ctx, ignore_extra=True)
    except AssertionError as exc:  # MXNet reports a missing parameter by assertion
        raise ValueError(f"{prefix}-{epoch:04d}.params does not fit {prefix}-symbol.json: "
                         f"{str(exc).split('.')[0]}") from None
    return block


__all__ = ["get_network", "save_checkpoint", "write_checkpoint", "average_checkpoints", "read_checkpoint", "load_model", "load_weights", "fixed_gammas", "checkpoint_epochs", "parse_model_spec",
           "to_symbol", "TransferReport", "NUM_OUTPUTS"]
