#!/usr/bin/env python
"""Export a checkpoint (ours or InsightFace's) to ONNX for the onnxruntime engine (`--engine onnx`):

    python tools/export_onnx.py models/agegender,0 models/agegender.onnx
    python tools/export_onnx.py ../shared/weights/insightface-genderage/model,0 insightface-genderage.onnx
    python tools/export_onnx.py models/agegender-open,0 models/agegender-open.onnx --license "CC-BY-4.0: ..." \
        --provenance '{"data": "FairFace train", "init": "random", "commit": "..."}'

Input `data` (N,3,112,112) RGB 0-255, output `fc1_output` (N,202), the MXNet layout; the contract is in the
model's metadata, with the weights' terms and provenance (`license`, `provenance`: docs/model.md). A bundled
model's name (`default`, `small`, ...) exports its checkpoint. The result is checked with onnx.checker and
against MXNet's outputs on real aligned faces before it is written (through a temporary file).
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
    p.add_argument("model", help="PREFIX,EPOCH (or PREFIX for its newest epoch), or a bundled model's name")
    p.add_argument("output", help="the .onnx file to write")
    p.add_argument("--license", metavar="TEXT",
                   help="the weights' terms, written into the model's metadata (default: a bundled model's, by name or path, "
                        "registered terms; else the default model's, research and non-commercial use only)")
    p.add_argument("--provenance", metavar="TEXT",
                   help="where the weights come from (data, initialisation, teachers, the recipe's commit), written "
                        "into the metadata as `provenance`; text, or a JSON object (checked, stored compact)")
    args = p.parse_args()
    if not args.output.endswith(".onnx"):
        raise UserError(f"the output must be a .onnx file: {args.output}")
    for flag, text in (("--license", args.license), ("--provenance", args.provenance)):
        if text is not None and not text.strip():
            raise UserError(f"{flag} is empty: state the weights' {flag[2:]}, or leave the flag out")
    provenance = args.provenance and compact_json(args.provenance)

    from agegender.model import registry
    from agegender.model.mxnet_engine import resolve_model
    from agegender.model.onnx_export import TOLERANCE, export_onnx
    from agegender.atomic import refuse_inputs, write_atomic
    from agegender.data.demo import aligned_demo_faces
    from agegender.model.engine import model_files

    refuse_inputs([("output", args.output)], model_files(args.model))
    prefix, epoch = resolve_model(args.model, "model")  # a name that is unknown or absent: one line
    # a bundled model's export states its registered terms by default, by name or by path (models/agegender-open,0)
    bundled = registry.for_path(prefix)
    license = args.license or (bundled.terms if bundled else None)
    try:
        data, diff = export_onnx(prefix, epoch, aligned_demo_faces(), license, provenance)
    except Exception as exc:  # noqa: BLE001 -- MXNet, onnx and onnxruntime each raise their own types
        raise UserError(f"cannot export {args.model}: {short_reason(exc)}") from None
    write_atomic(args.output, data)
    print(f"wrote {args.output} ({len(data) / 1e6:.2f} MB): outputs equal to MXNet's on 7 real faces "
          f"(max abs difference {diff:.2e}, tolerance {TOLERANCE:g})")
    return 0


def compact_json(text: str) -> str:
    """--provenance as stored: a JSON object (text starting with `{`) checked and written compact, so that a
    reader can parse it; any other text as given."""
    import json

    if not text.lstrip().startswith("{"):
        return text
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise UserError(f"--provenance starts with '{{' but is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UserError("--provenance: a JSON provenance must be an object")
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    run_cli(main)
