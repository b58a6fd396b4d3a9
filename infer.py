#!/usr/bin/env python
"""Gender and age of every face in one or more images: RetinaFace detection, the same 5-point alignment
as create_dataset.py, and the attribute net (onnxruntime by default, or MXNet) on the faces of many images
at once. See README.md, "Inference"."""
from __future__ import annotations

import argparse
import os
import sys

from utils.age import AGE_DECODINGS, DEFAULT_DECODE
from utils.engine import ENGINES
from utils.cli import ArgumentParser, BATCH, NON_NEGATIVE_INT, PROBABILITY, NON_NEGATIVE
from utils.errors import UserError, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--image", nargs="+", required=True, metavar="PATH",
                   help="image files, folders or globs (JPEG, PNG, BMP, WebP)")
    p.add_argument("--model", default=None,
                   help="a .onnx file, or PREFIX,EPOCH (PREFIX: its newest epoch); default: the bundled model")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="what runs the net (default: onnx for a .onnx file and the bundled model, mxnet for "
                        "PREFIX,EPOCH; onnx with PREFIX,EPOCH exports it in memory)")
    p.add_argument("--det-model", metavar="ONNX", default=None,
                   help="an InsightFace ONNX detector (e.g. det_500m.onnx) instead of the bundled RetinaFace")
    p.add_argument("--det-thresh", type=PROBABILITY, default=0.8, help="minimum detector score")
    p.add_argument("--max-size", type=NON_NEGATIVE_INT, default=1280,
                   help="images are scaled down to this longest side for detection (boxes mapped back)")
    p.add_argument("--min-face", type=NON_NEGATIVE, default=0, help="ignore faces whose box is smaller (pixels)")
    p.add_argument("--age-decode", choices=AGE_DECODINGS, default=DEFAULT_DECODE,
                   help="prob: sum of P(age > k); vote: sum of the pairs' argmax; median: where P(age > k) "
                        "crosses 1/2")
    p.add_argument("--flip", action="store_true", help="average each face with its mirror image")
    p.add_argument("--gpus", default="", help="GPU ids such as 0,1 for the attribute net (empty = CPU); the "
                                              "onnx engine needs onnxruntime-gpu and uses the first")
    p.add_argument("--batch-size", type=BATCH, default=256, help="faces per forward pass")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text lines")
    p.add_argument("--output", metavar="FILE",
                   help="annotated image (several images: a folder, one annotated file per image)")
    p.add_argument("--show", action="store_true", help="also show the annotated image in a window")
    return p


def main() -> int:
    args = build_parser().parse_args()
    from utils.analyzer import FaceAnalyzer
    from utils.inference import draw, dumps_json, find_images, format_lines, save_image, to_json

    if args.show and sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or
                                                               os.environ.get("WAYLAND_DISPLAY")):
        raise UserError("--show needs a display (DISPLAY is not set); use --output FILE instead")
    paths = find_images(args.image)
    analyzer = FaceAnalyzer.from_options(args.model, args.engine, args.det_model, args.det_thresh, args.max_size,
                                         args.gpus, det_threads=1, net_threads=1, age_decode=args.age_decode, min_face=args.min_face,
                                         flip=args.flip, batch_size=args.batch_size)
    results = list(analyzer.analyze_paths(paths, keep_images=bool(args.output or args.show)))

    if args.json:
        print(dumps_json([to_json(r) for r in results]))
    else:
        for r in results:
            if len(results) > 1:
                print(f"{r.path}:")
            print("\n".join(format_lines(r)))
    if args.output:
        if len(results) == 1 and not os.path.isdir(args.output):
            save_image(args.output, draw(results[0]))
        else:
            for r in results:
                save_image(os.path.join(args.output, os.path.splitext(os.path.basename(r.path))[0] + ".jpg"), draw(r))
    if args.show:
        import cv2

        try:
            for r in results:
                cv2.imshow(os.path.basename(r.path), draw(r))
            cv2.waitKey(0)
        except cv2.error:
            raise UserError("--show cannot open a window here (no display?); use --output FILE") from None
    return 0


if __name__ == "__main__":
    run_cli(main)
