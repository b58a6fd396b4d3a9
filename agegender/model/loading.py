"""`--model` / `--engine` / `--gpus` to a loaded engine: onnxruntime for a .onnx file and a bundled model,
MXNet for a checkpoint. Kept apart from both engines so that neither imports the other."""
from __future__ import annotations

import os

from agegender.errors import UserError, require, short_reason
from agegender.model import registry
from agegender.model.engine import ENGINES, Calibration, Engine, OnnxEngine, short_name


def model_calibration(model: str | None = None) -> Calibration:
    """What the model `--model` names says of its own use (gender temperature, age range widening, flip
    default, the ensemble's teacher weight), read from its files without loading the net's weights into an
    engine: Ray's shard key records it, so that a model calibrated anew is not answered from old shards."""
    from agegender.model.engine import read_checkpoint_calibration, stored_calibration

    bundled = registry.resolve(model)
    if bundled is not None and os.path.exists(bundled.calibration):
        return read_checkpoint_calibration(bundled.prefix, bundled.name)
    path = bundled.onnx if bundled is not None else model
    if path.lower().endswith(".onnx"):
        import onnxruntime as ort

        try:
            meta = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_modelmeta()
        except Exception as exc:  # noqa: BLE001 -- onnxruntime raises its own types for bad files
            raise UserError(f"cannot load model {path}: {short_reason(exc)}") from None
        return stored_calibration(dict(meta.custom_metadata_map), path)
    return read_checkpoint_calibration(model.partition(",")[0], model)


def load_engine(model: str | None = None, engine: str | None = None, gpus: str = "", threads: int = 0) -> Engine:
    """The attribute net for `--model` / `--engine` / `--gpus`.

    `model`: a bundled model's name (`default`, `small`, ...: agegender/model/registry.py), a `.onnx` file,
    `PREFIX,EPOCH` (or `PREFIX`, its newest epoch), or None for the `default` bundled model.
    `engine`: `onnx`, `mxnet`, or None: `onnx` for a .onnx file and for a bundled model, `mxnet` for a
    checkpoint. `--engine onnx` with a checkpoint exports it in memory first (needs MXNet)."""
    if engine not in (None, *ENGINES):
        raise UserError(f"--engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    bundled = registry.resolve(model)  # a name that is unknown, absent or ambiguous is refused here
    if bundled is not None:
        loaded = _bundled(bundled, model, engine, gpus, threads)
        loaded.bundled = bundled  # also when exported in memory: the engine says which model and its terms
        return loaded
    is_onnx = model.lower().endswith(".onnx")
    if (engine or ("onnx" if is_onnx else "mxnet")) == "onnx":
        return OnnxEngine(model, threads, gpus) if is_onnx else _exported(model, threads, gpus)
    if is_onnx:
        raise UserError(f"--engine mxnet runs a PREFIX,EPOCH checkpoint, not {model}; use --engine onnx")
    require("mxnet", f"--engine mxnet (--model {model})")
    from agegender.model.mxnet_engine import MxnetEngine, resolve_model

    return MxnetEngine(*resolve_model(model), gpus=gpus)


def _bundled(bundled: registry.BundledModel, model: str | None, engine: str | None, gpus: str,
             threads: int) -> Engine:
    """A bundled model: its .onnx by onnxruntime (exported in memory when only its checkpoint is there),
    or its checkpoint by MXNet with `--engine mxnet`."""
    if engine != "mxnet" and bundled.has_onnx:
        return OnnxEngine(bundled.onnx, threads, gpus)
    if not bundled.available:  # only the default can be absent here: a named one is refused by resolve
        raise UserError(f"--model is required: there is no bundled model ({bundled.onnx}) in this "
                        "checkout; pass --model FILE.onnx or PREFIX,EPOCH")
    if engine == "mxnet":
        if not bundled.has_checkpoint:  # the advice that fits here, not in resolve_model (train, widen, export)
            raise UserError(f"--model {model or registry.DEFAULT}: the bundled model has no MXNet checkpoint here "
                            f"({short_name(bundled.prefix)}-0000.params); use --engine onnx")
        require("mxnet", f"--engine mxnet{f' (--model {model})' if model else ''}")
        from agegender.model.mxnet_engine import MxnetEngine, resolve_model

        return MxnetEngine(*resolve_model(model), gpus=gpus)
    return _exported(model, threads, gpus)


def _exported(model: str | None, threads: int, gpus: str) -> Engine:
    """`--engine onnx` for a checkpoint: exported (and checked) in memory, then run by onnxruntime."""
    require("mxnet", f"a PREFIX,EPOCH checkpoint ({model or 'the bundled MXNet model'}; a .onnx file does not)")
    from agegender.model.onnx_export import export_onnx
    from agegender.data.demo import aligned_demo_faces
    from agegender.model.mxnet_engine import resolve_model

    prefix, epoch = resolve_model(model)
    # the metadata's `license` is what Engine.license reads first: a bundled model (by name or by path)
    # states its registered terms, as tools/export_onnx.py writes them
    bundled = registry.for_path(prefix)
    try:
        data, _ = export_onnx(prefix, epoch, aligned_demo_faces(), bundled.terms if bundled else None)
    except Exception as exc:  # noqa: BLE001 -- MXNet, onnx and onnxruntime each raise their own types
        raise UserError(f"cannot export {prefix},{epoch} to ONNX: {short_reason(exc)}") from None
    engine = OnnxEngine(f"{short_name(prefix)},{epoch} (exported to ONNX)", threads, gpus, model=data)
    engine.bundled = bundled
    return engine


__all__ = ["load_engine", "model_calibration"]
