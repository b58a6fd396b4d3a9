"""Export a checkpoint (ours or InsightFace's) to ONNX for the onnxruntime engine.

`mx.onnx.export_model` does the conversion; two things in its graph are then mended with the `onnx`
package: the GAP head's per-channel PReLU slope is (C,), which ONNX broadcasts against the last axis of a
4-D input (onnxruntime refuses it), so it becomes (C,1,1); and the weights are listed as graph inputs,
which would keep onnxruntime from folding them as constants, so they are removed from the inputs.
The result has a dynamic batch axis: input `data` (N,3,112,112) RGB 0-255, output `fc1_output` (N,202).
"""
from __future__ import annotations

import json
import os
import platform
import tempfile

import mxnet as mx
import numpy as np
import onnx
from onnx import numpy_helper

from agegender.model.age import WIDENING_KEY
from agegender.model.engine import (DEFAULT_TEACHER_WEIGHT, FLIP_KEY, TEACHER_WEIGHT_KEY, TEMPERATURE_KEY,
                                    read_checkpoint_calibration)
from agegender.symbols.common import NUM_OUTPUTS, OUTPUT_NAME

INPUT_NAME = "data"
OUTPUT = f"{OUTPUT_NAME}_output"
TOLERANCE = 1e-4  # max abs difference allowed between the MXNet and the onnxruntime outputs


def _load(prefix: str, epoch: int) -> tuple[mx.sym.Symbol, dict]:
    from agegender.symbols import fixed_gammas, read_checkpoint

    sym, arg, aux = read_checkpoint(prefix, epoch)
    internals = sym.get_internals()
    if OUTPUT not in internals.list_outputs():
        raise ValueError(f"{prefix}-symbol.json has no {OUTPUT}")
    out = internals[OUTPUT]
    params = {**arg, **aux}
    # the exporter copies a fixed gamma as stored, not as the 1 that MXNet uses
    for gamma in fixed_gammas(out) & set(params):
        params[gamma] = mx.nd.ones_like(params[gamma])
    return out, params


def _mend(model: onnx.ModelProto) -> onnx.ModelProto:
    """PReLU slopes to (C,1,1); weights out of the graph inputs; output renamed to fc1_output with a
    (N,202) shape; the batch axis named N."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "PRelu" and node.input[1] in inits:
            slope = numpy_helper.to_array(inits[node.input[1]])
            if slope.ndim == 1:
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(slope.reshape(-1, 1, 1), node.input[1]))
    keep = [i for i in g.input if i.name not in inits]
    del g.input[:]
    g.input.extend(keep)
    old = g.output[0].name
    for node in g.node:
        node.output[:] = [OUTPUT if o == old else o for o in node.output]
    del g.output[:]
    g.output.extend([onnx.helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["N", NUM_OUTPUTS])])
    dims = g.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "N"
    return model


def metadata(prefix: str, epoch: int, license: str | None = None, provenance: str | None = None) -> dict[str, str]:
    """What a user of the .onnx file needs to know without this project's code. `license`: the weights'
    terms (default: those of the bundled model, InsightFace's checkpoint fine-tuned on UTKFace);
    `provenance`: where the weights come from (data, initialisation, teachers, the recipe's commit), left
    out when not given. The engine reads both back (Engine.license, Engine.provenance)."""
    import onnxruntime

    from agegender import WEIGHTS_TERMS, __version__

    meta = {
        "agegender_version": __version__,
        "license": license or WEIGHTS_TERMS,
        "input": "data: (N,3,112,112) float32 RGB 0-255, the face aligned by its 5 landmarks onto the ArcFace "
                 "112x112 template (InsightFace norm_crop); normalisation is inside the graph",
        "output": f"{OUTPUT}: (N,{NUM_OUTPUTS}) float32; [0:2] gender logits (index 1 = male); pair k = "
                  "[2+2k:4+2k] logits of 'age > k' (index 1 = yes), k = 0..99",
        "age_decoding": "P(age > k) = softmax of pair k, index 1; see the project's agegender/model/age.py for the decodings "
                        "(prob: sum of P(age > k); vote: sum of the pairs' argmax; median: where the "
                        "non-increasing P(age > k) crosses 1/2)",
        "gender_coding": "1 = male, 0 = female (InsightFace's)",
        "source_checkpoint": f"{os.path.basename(prefix)},{epoch}",
        "versions": json.dumps({"python": platform.python_version(), "mxnet": mx.__version__,
                                "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                                "numpy": np.__version__}),
    }
    calibration = read_checkpoint_calibration(prefix, f"{prefix},{epoch}")  # it travels with the checkpoint
    if calibration.temperature != 1.0:
        meta[TEMPERATURE_KEY] = f"{calibration.temperature:.4f}"
    if not calibration.widening.is_identity:
        meta[WIDENING_KEY] = json.dumps(calibration.widening.to_dict())
    if not calibration.flip:
        meta[FLIP_KEY] = "false"
    if calibration.teacher_weight != DEFAULT_TEACHER_WEIGHT:
        meta[TEACHER_WEIGHT_KEY] = repr(calibration.teacher_weight)  # exact, as the mxnet engine reads it
    if provenance:
        meta["provenance"] = provenance
    return meta


def export_onnx(prefix: str, epoch: int, faces: np.ndarray, license: str | None = None,
                provenance: str | None = None) -> tuple[bytes, float]:
    """The checkpoint as ONNX bytes, checked by onnx.checker and against MXNet on `faces`
    ((N,3,112,112) float32 RGB), carrying `metadata` (the AgeGender version, the weights' `license` and
    their `provenance`).
    Returns (model bytes, max abs output difference); raises ValueError when the check fails."""
    import onnxruntime as ort

    sym, params = _load(prefix, epoch)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        mx.onnx.export_model(sym, params, in_shapes=[(1, 3, 112, 112)], in_types=[np.float32],
                             onnx_file_path=path, dynamic=True, dynamic_input_shapes=[(None, 3, 112, 112)],
                             verbose=False)
        model = _mend(onnx.load(path))
    for key, value in metadata(prefix, epoch, license, provenance).items():
        model.metadata_props.add(key=key, value=value)
    from agegender import __version__

    model.producer_name = "agegender tools/export_onnx.py"
    model.producer_version = __version__
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ValueError(f"the exported graph fails onnx.checker: {str(exc).splitlines()[0]}") from None
    data = model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    theirs = sess.run(None, {INPUT_NAME: faces.astype(np.float32)})[0]
    mod = mx.mod.Module(sym, data_names=[INPUT_NAME], label_names=None)
    mod.bind(data_shapes=[(INPUT_NAME, faces.shape)], for_training=False)
    mod.set_params({k: v for k, v in params.items() if k in sym.list_arguments()},
                   {k: v for k, v in params.items() if k in sym.list_auxiliary_states()}, allow_missing=False)
    mod.forward(mx.io.DataBatch([mx.nd.array(faces)]), is_train=False)
    ours = mod.get_outputs()[0].asnumpy()
    diff = float(np.abs(ours - theirs).max())
    if not diff <= TOLERANCE:
        raise ValueError(f"onnxruntime's outputs differ from MXNet's by up to {diff:.3g} (> {TOLERANCE})")
    return data, diff


__all__ = ["export_onnx", "metadata", "INPUT_NAME", "OUTPUT", "TOLERANCE"]
