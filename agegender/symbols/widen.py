"""Function-preserving widening (Net2WiderNet) of a trained network into a wider one of the same layout.

A MobileNet at width 0.5 has exactly twice the channels of one at 0.25 in every layer. Each channel of
the narrow net becomes `k` identical channels of the wide one; the layers that read them get the
narrow weight split between the copies, so the wide net computes the same function. The split is
uneven (w/k times 1 + noise, the noises of the copies summing to zero): the sum stays exact while the
copies receive different gradients, so training can make them diverge.
"""
from __future__ import annotations

import numpy as np
import mxnet as mx
from mxnet import gluon


def _widen_array(small: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator, noise: float) -> np.ndarray:
    """`small` tiled to `shape` along axes 0 (output channels) and 1 (input channels, weights only);
    along axis 1 the weight is split over the copies so their sum is the original."""
    if small.shape == shape:
        return small.copy()
    if len(small.shape) != len(shape):
        raise ValueError(f"cannot widen {small.shape} to {shape}")
    reps = []
    for s, b in zip(small.shape, shape):
        if b % s:
            raise ValueError(f"cannot widen {small.shape} to {shape}: not a whole multiple")
        reps.append(b // s)
    if any(r > 1 for r in reps[2:]):
        raise ValueError(f"cannot widen {small.shape} to {shape}: only channel axes may grow")
    big = np.tile(small, reps)
    k = reps[1] if len(shape) >= 2 else 1
    if k > 1:
        # share of each copy: 1/k, jittered, the jitters of one original weight summing to zero
        share = 1.0 + noise * rng.standard_normal((small.shape[0] * reps[0], k) + small.shape[1:])
        share -= share.mean(axis=1, keepdims=True) - 1.0
        share = share.reshape(big.shape[0], k * small.shape[1], *small.shape[2:])  # copy-major, as np.tile
        big = big * share / k
    return big.astype(small.dtype)


def widen_into(small: gluon.HybridBlock, big: gluon.HybridBlock, noise: float = 0.05, seed: int = 0) -> int:
    """Copy the initialised `small` network into the initialised `big` one of the same layout and
    k-times channels (parameters matched by their order). Returns the number of parameters widened."""
    rng = np.random.default_rng(seed)
    ps, pb = list(small.collect_params().values()), list(big.collect_params().values())
    if len(ps) != len(pb):
        raise ValueError(f"the networks differ in layout ({len(ps)} vs {len(pb)} parameters)")
    widened = 0
    for a, b in zip(ps, pb):
        src = a.data(a.list_ctx()[0]).asnumpy()
        out = _widen_array(src, tuple(b.shape), rng, noise)
        widened += out.shape != src.shape
        b.set_data(mx.nd.array(out, dtype=out.dtype))
    return widened


__all__ = ["widen_into"]
