"""Which MXNet contexts a `--gpus` flag means."""
from __future__ import annotations

import mxnet as mx

from utils.cli import gpu_ids
from utils.errors import UserError


def contexts(gpus: str) -> list[mx.Context]:
    """`0,1` -> [gpu(0), gpu(1)]; empty -> [cpu()]. Raises UserError when a GPU is asked for and absent."""
    ids_n = gpu_ids(gpus)
    if not ids_n:
        return [mx.cpu()]
    available = mx.context.num_gpus()
    missing = [g for g in ids_n if g >= available]
    if missing:
        raise UserError(f"GPU {missing[0]} is not available ({available} visible): GPUs need "
                        "requirements-gpu.txt (mxnet-cu112) and a CUDA device; leave --gpus empty for the CPU")
    return [mx.gpu(g) for g in ids_n]


__all__ = ["contexts"]
