#!/usr/bin/env python
"""Export a checkpoint (ours or InsightFace's) to ONNX for the onnxruntime engine (`--engine onnx`):

    python tools/export_onnx.py models/agegender,0 models/agegender.onnx
    python tools/export_onnx.py ../shared/weights/insightface-genderage/model,0 insightface-genderage.onnx

Input `data` (N,3,112,112) RGB 0-255, output `fc1_output` (N,202), the MXNet layout; the contract is in the
model's metadata. The result is checked with onnx.checker and against MXNet's outputs on real aligned
faces before it is written (through a temporary file).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.cli import ArgumentParser  # noqa: E402
from agegender.errors import UserError, run_cli, short_reason  # noqa: E402


def main() -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="PREFIX,EPOCH (or PREFIX for its newest epoch)")
    p.add_argument("output", help="the .onnx file to write")
    p.add_argument("--license", metavar="TEXT",
                   help="the weights' terms, written into the model's metadata (default: the bundled model's, "
                        "research and non-commercial use only)")
    args = p.parse_args()
    if not args.output.endswith(".onnx"):
        raise UserError(f"the output must be a .onnx file: {args.output}")

    from agegender.symbols import parse_model_spec
    from agegender.symbols.onnx_export import TOLERANCE, export_onnx
    from agegender.atomic import refuse_inputs, write_atomic
    from agegender.data.demo import aligned_demo_faces
    from agegender.model.engine import model_files

    refuse_inputs([("output", args.output)], model_files(args.model))
    try:
        prefix, epoch = parse_model_spec(args.model)
        data, diff = export_onnx(prefix, epoch, aligned_demo_faces(), args.license)
    except Exception as exc:  # noqa: BLE001 -- MXNet, onnx and onnxruntime each raise their own types
        raise UserError(f"cannot export {args.model}: {short_reason(exc)}") from None
    write_atomic(args.output, data)
    print(f"wrote {args.output} ({len(data) / 1e6:.2f} MB): outputs equal to MXNet's on 7 real faces "
          f"(max abs difference {diff:.2e}, tolerance {TOLERANCE:g})")
    return 0


if __name__ == "__main__":
    run_cli(main)
