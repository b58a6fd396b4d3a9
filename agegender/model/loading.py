"""`--model` / `--engine` / `--gpus` to a loaded engine: onnxruntime for a .onnx file and the bundled model,
MXNet for a checkpoint. Kept apart from both engines so that neither imports the other."""
from __future__ import annotations

import os

from agegender.errors import UserError, require, short_reason
from agegender.model.engine import BUNDLED_MODEL, BUNDLED_ONNX, ENGINES, Engine, OnnxEngine, short_name


def load_engine(model: str | None = None, engine: str | None = None, gpus: str = "", threads: int = 0) -> Engine:
    """The attribute net for `--model` / `--engine` / `--gpus`.

    `model`: a `.onnx` file, `PREFIX,EPOCH` (or `PREFIX`, its newest epoch), or None for the bundled model.
    `engine`: `onnx`, `mxnet`, or None: `onnx` for a .onnx file and for the bundled model, `mxnet` for a
    checkpoint. `--engine onnx` with a checkpoint exports it in memory first (needs MXNet)."""
    if engine not in (None, *ENGINES):
        raise UserError(f"--engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    is_onnx = bool(model) and model.lower().endswith(".onnx")
    if engine is None:
        engine = "onnx" if (is_onnx or not model) else "mxnet"
    if engine == "onnx":
        if is_onnx:
            return OnnxEngine(model, threads, gpus)
        if not model:
            if os.path.isfile(BUNDLED_ONNX):
                return OnnxEngine(BUNDLED_ONNX, threads, gpus)
            if not os.path.isfile(f"{BUNDLED_MODEL}-0000.params"):
                raise UserError(f"--model is required: there is no bundled model ({BUNDLED_ONNX}) in this "
                                "checkout; pass --model FILE.onnx or PREFIX,EPOCH")
        return _exported(model, threads, gpus)
    if is_onnx:
        raise UserError(f"--engine mxnet runs a PREFIX,EPOCH checkpoint, not {model}; use --engine onnx")
    require("mxnet", f"--engine mxnet{f' (--model {model})' if model else ''}")
    from agegender.model.mxnet_engine import MxnetEngine, resolve_model

    return MxnetEngine(*resolve_model(model), gpus=gpus)


def _exported(model: str | None, threads: int, gpus: str) -> Engine:
    """`--engine onnx` for a checkpoint: exported (and checked) in memory, then run by onnxruntime."""
    require("mxnet", f"a PREFIX,EPOCH checkpoint ({model or 'the bundled MXNet model'}; a .onnx file does not)")
    from agegender.symbols.onnx_export import export_onnx
    from agegender.data.demo import aligned_demo_faces
    from agegender.model.mxnet_engine import resolve_model

    prefix, epoch = resolve_model(model)
    try:
        data, _ = export_onnx(prefix, epoch, aligned_demo_faces())
    except Exception as exc:  # noqa: BLE001 -- MXNet, onnx and onnxruntime each raise their own types
        raise UserError(f"cannot export {prefix},{epoch} to ONNX: {short_reason(exc)}") from None
    return OnnxEngine(f"{short_name(prefix)},{epoch} (exported to ONNX)", threads, gpus, model=data)


__all__ = ["load_engine"]
