"""The MXNet engine: a checkpoint (ours or InsightFace's) on one or several contexts, behind the interface
of agegender/model/engine.py. Also the split-over-contexts forward that training's validation uses."""
from __future__ import annotations

import mxnet as mx
import numpy as np

from agegender.symbols import load_model, parse_model_spec
from agegender.model.devices import contexts
from agegender.model import registry
from agegender.model.engine import Engine, read_checkpoint_calibration, short_name
from agegender.errors import UserError, short_reason


def resolve_model(spec: str | None, flag: str = "--model") -> tuple[str, int]:
    """`PREFIX,EPOCH`, a bare `PREFIX` (newest epoch), a bundled model's name, or None for the default
    bundled model (agegender/model/registry.py: its checkpoint, epoch 0): the one place a model's name
    becomes a checkpoint (load_engine, train.py --pretrained, tools/widen.py, tools/export_onnx.py). A one-line
    UserError naming `flag` when it is unknown, ambiguous or absent."""
    bundled = registry.resolve(spec, flag=flag)
    if bundled is not None:
        if not bundled.has_checkpoint:
            if not spec:
                raise UserError(f"--model is required: there is no bundled model ({bundled.prefix}-0000.params) "
                                "in this checkout; pass --model PREFIX,EPOCH")
            raise UserError(f"{flag} {spec}: the bundled model has no MXNet checkpoint here "
                            f"({short_name(bundled.prefix)}-0000.params), only its ONNX file")
        return bundled.prefix, 0
    try:
        return parse_model_spec(spec)
    except ValueError as exc:
        raise UserError(f"{flag} {spec}: {exc}") from None


def forward_split(net: mx.gluon.Block, data: mx.nd.NDArray, ctx: list[mx.Context], flip: bool = False) -> np.ndarray:
    """Outputs of `net` for a batch whose rows are split over the contexts (fewer contexts when the batch
    has fewer rows), in batch order. `flip`: the mean of the outputs for each face and its mirror image."""
    ctx = ctx[:max(1, min(len(ctx), data.shape[0]))]
    parts = mx.gluon.utils.split_and_load(data, ctx, even_split=False)
    outs = [net(x) for x in parts]
    if flip:
        outs = [(o + net(mx.nd.flip(x, axis=3))) / 2 for o, x in zip(outs, parts)]
    return np.concatenate([o.asnumpy() for o in outs])


class MxnetEngine(Engine):
    """A loaded checkpoint on the contexts of `gpus` (empty: the CPU). On the CPU the graph is partitioned
    for MKLDNN (convolution, BatchNorm and ReLU fused), which makes it 2x faster than plain hybridize."""

    kind = "mxnet"

    def __init__(self, prefix: str, epoch: int, gpus: str = "", ctx: list[mx.Context] | None = None):
        self.ctx = ctx or contexts(gpus)
        self.name = f"{short_name(prefix)},{epoch}"
        self.bundled = registry.for_path(prefix)
        try:
            self.net = load_model(prefix, epoch, self.ctx)
        except Exception as exc:  # noqa: BLE001 -- MXNet raises its own types with a C++ stack
            raise UserError(f"cannot load model {self.name}: {short_reason(exc)}") from None
        self.use_calibration(read_checkpoint_calibration(prefix, self.name))
        on_cpu = all(c.device_type == "cpu" for c in self.ctx)
        self.net.hybridize(static_alloc=True, **({"backend": "MKLDNN"} if on_cpu and _has_mkldnn() else {}))
        self.check()

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch)

    def outputs(self, batch, flip: bool = False) -> np.ndarray:
        """(N,3,112,112) numpy or NDArray -> (N,202) over the contexts (see `forward_split`)."""
        data = batch if isinstance(batch, mx.nd.NDArray) else mx.nd.array(np.asarray(batch, np.float32))
        return forward_split(self.net, data, self.ctx, flip)


def _has_mkldnn() -> bool:
    try:
        return bool(mx.runtime.Features().is_enabled("MKLDNN"))
    except Exception:  # noqa: BLE001 -- older builds without the features API
        return False


__all__ = ["MxnetEngine", "forward_split", "resolve_model"]
