"""Which MXNet contexts a `--gpus` flag means, and the kvstore that sums gradients over them."""
from __future__ import annotations

import os

import mxnet as mx

from agegender.cli import gpu_ids
from agegender.errors import UserError


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


KVSTORES = ("local", "device", "dist_sync", "dist_device_sync", "dist_async")


def kvstore(kind: str, num_contexts: int) -> mx.kvstore.KVStore | None:
    """The `--kvstore` for training: None on a single context of a single machine (Gluon's Trainer then
    updates locally); a `dist_*` kind needs the DMLC_* environment that tools/launch.py sets."""
    if kind not in KVSTORES:
        raise UserError(f"--kvstore must be one of {', '.join(KVSTORES)}; got {kind!r}")
    if kind.startswith("dist"):
        if "DMLC_ROLE" not in os.environ:
            raise UserError(f"--kvstore {kind} needs the DMLC_* environment of a parameter-server job: "
                            "start it with tools/launch.py (see README, 'Several machines')")
        return mx.kv.create(kind)
    return mx.kv.create(kind) if num_contexts > 1 else None


__all__ = ["contexts", "kvstore"]
