"""A checkpoint as a predictor: batches of aligned faces in, (N,202) outputs and decoded gender/age out,
over one or several contexts. Shared by eval.py and infer.py."""
from __future__ import annotations

import os

import mxnet as mx
import numpy as np

from symbols import load_model, parse_model_spec
from utils.age import decode
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED_MODEL = os.path.join(ROOT, "models", "agegender")  # the model shipped in the repository, epoch 0


def resolve_model(spec: str | None) -> tuple[str, int]:
    """`PREFIX,EPOCH`, a bare `PREFIX` (newest epoch), or None for the bundled model; UserError if absent."""
    if not spec:
        if not os.path.isfile(f"{BUNDLED_MODEL}-0000.params"):
            raise UserError(f"--model is required: there is no bundled model ({BUNDLED_MODEL}-0000.params) "
                            "in this checkout; pass --model PREFIX,EPOCH")
        return BUNDLED_MODEL, 0
    try:
        return parse_model_spec(spec)
    except ValueError as exc:
        raise UserError(f"--model {spec}: {exc}") from None


def forward_split(net: mx.gluon.Block, data: mx.nd.NDArray, ctx: list[mx.Context], flip: bool = False) -> np.ndarray:
    """Outputs of `net` for a batch whose rows are split over the contexts (fewer contexts when the batch
    has fewer rows), in batch order. `flip`: the mean of the outputs for each face and its mirror image."""
    ctx = ctx[:max(1, min(len(ctx), data.shape[0]))]
    parts = mx.gluon.utils.split_and_load(data, ctx, even_split=False)
    outs = [net(x) for x in parts]
    if flip:
        outs = [(o + net(mx.nd.flip(x, axis=3))) / 2 for o, x in zip(outs, parts)]
    return np.concatenate([o.asnumpy() for o in outs])


class Predictor:
    """A loaded checkpoint (ours or InsightFace's) on one or more contexts."""

    def __init__(self, prefix: str, epoch: int, ctx: list[mx.Context] | None = None):
        self.ctx = ctx or [mx.cpu()]
        rel = os.path.relpath(prefix)
        self.name = f"{prefix if rel.startswith('..') else rel},{epoch}"  # as typed, or short when inside cwd
        try:
            self.net = load_model(prefix, epoch, self.ctx)
        except (ValueError, OSError, mx.base.MXNetError) as exc:
            raise UserError(f"cannot load model {self.name}: {str(exc).splitlines()[0]}") from None
        self.net.hybridize(static_alloc=True)

    def outputs(self, data: mx.nd.NDArray, flip: bool = False) -> np.ndarray:
        """(N,3,112,112) RGB 0-255 -> (N,202) outputs over the contexts (see `forward_split`)."""
        return forward_split(self.net, data, self.ctx, flip)

    def predict_faces(self, faces: np.ndarray, batch_size: int = 256, age_decode: str = "prob",
                      flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Aligned faces (N,112,112,3) RGB uint8 -> (P(male), age) per face, in batches."""
        if len(faces) == 0:
            return np.zeros(0), np.zeros(0)
        outs = []
        for i in range(0, len(faces), batch_size):
            chunk = np.ascontiguousarray(faces[i:i + batch_size].transpose(0, 3, 1, 2), dtype=np.float32)
            outs.append(self.outputs(mx.nd.array(chunk), flip=flip))
        return decode(np.concatenate(outs), age_decode)


__all__ = ["Predictor", "forward_split", "resolve_model", "BUNDLED_MODEL"]
