#!/usr/bin/env python
"""Gender and age of every face in one or more images: RetinaFace detection, the same 5-point alignment
as create_dataset.py, and the attribute net (onnxruntime by default, or MXNet) on the faces of many images
at once. See README.md, "Inference"."""
from __future__ import annotations

import argparse
import os
import sys

from agegender.model.age import DEFAULT_AGE_LEVEL, add_age_decode_argument
from agegender.cli import (AGE_LEVEL, BATCH, COUNT, DET_THRESH, NON_NEGATIVE, NON_NEGATIVE_INT, ArgumentParser,
                           add_flip_argument)
from agegender.model.engine import ENGINES
from agegender.model.ensemble import DEFAULT_GENDER_ENSEMBLE
from agegender.atomic import refuse_inputs
from agegender.errors import MissingDependency, UserError, missing_module_message, run_cli
from agegender.data.image import MAX_PIXELS


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", nargs="+", metavar="PATH",
                      help="image files, folders or globs (JPEG, PNG, BMP, WebP, GIF, TIFF), or lists of paths: a "
                           ".txt file (one path a line) or a .parquet file (a path or image column)")
    what.add_argument("--video", metavar="PATH|N",
                      help="a video file OpenCV can read, or a camera index (0, 1, ...): faces tracked across frames")
    p.add_argument("--model", default=None,
                   help="a bundled model's name (default, small, ...: docs/model.md), a .onnx file, or "
                        "PREFIX,EPOCH (PREFIX: its newest epoch); default: the bundled model `default`")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="what runs the net (default: onnx for a .onnx file and the bundled model, mxnet for "
                        "PREFIX,EPOCH; onnx with PREFIX,EPOCH exports it in memory)")
    p.add_argument("--det-model", metavar="ONNX", default=None,
                   help="an InsightFace ONNX detector (e.g. det_500m.onnx) instead of the bundled RetinaFace")
    p.add_argument("--det-thresh", type=DET_THRESH, default=0.8, help="minimum detector score")
    p.add_argument("--max-size", type=NON_NEGATIVE_INT, default=1280,
                   help="images are scaled down to this longest side for detection (boxes mapped back)")
    p.add_argument("--min-face", type=NON_NEGATIVE, default=0, help="ignore faces whose box is smaller (pixels)")
    p.add_argument("--age-level", type=AGE_LEVEL, default=DEFAULT_AGE_LEVEL,
                   help="the age range's level: the true age lies in the range for this share of faces "
                        "(calibrated at 0.5, 0.8, 0.9 and 0.95; docs/evaluation.md)")
    p.add_argument("--drop-flagged", action="store_true",
                   help="leave out the faces the quality flag marks (box under 24 px wide, blurred, or turned "
                        "too far), as --min-face leaves out small ones; without it they are reported, flagged")
    add_age_decode_argument(p)
    add_flip_argument(p)
    p.add_argument("--gender-ensemble", action=argparse.BooleanOptionalAction, default=DEFAULT_GENDER_ENSEMBLE,
                   help="P(male) = ours mixed with the bundled CC0 teacher gender net's at the model's calibrated "
                        "weight (0.5: the plain mean), +12 %% time a face "
                        "(docs/calibration-and-ensemble.md); --no-gender-ensemble: the model alone")
    p.add_argument("--gpus", default="", help="GPU ids such as 0,1 for the attribute net (empty = CPU); the "
                                              "onnx engine needs onnxruntime-gpu and uses the first")
    p.add_argument("--batch-size", type=BATCH, default=256, help="faces per forward pass")
    p.add_argument("--max-pixels", type=NON_NEGATIVE_INT, default=MAX_PIXELS,
                   help="refuse images with more pixels (read from the header, before decoding; 0 = no limit)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of image objects (always a list; schema: agegender/schema/face.schema.json) "
                        "instead of text lines")
    p.add_argument("--jsonl", metavar="FILE",
                   help="also write JSON lines, one image object per line, flushed as each image completes "
                        "(- = stdout; the text lines then go to stderr)")
    p.add_argument("--csv", metavar="FILE",
                   help="also write a CSV, one row per face (image, face, x1, y1, x2, y2, score, gender, p_male, age, "
                        "error); images without faces and failed inputs are rows too (- = stdout)")
    p.add_argument("--parquet", metavar="OUT",
                   help="also write Parquet: one row per face (the JSON fields + image path + face index), one per "
                        "failed image; OUT is a .parquet file, or with --ray a folder of shards (docs/ray.md)")
    p.add_argument("--output", metavar="FILE",
                   help="annotated image (several images: a folder, as --output-dir)")
    p.add_argument("--output-dir", metavar="DIR",
                   help="annotated copies, one per image, written as each completes: DIR/<path relative to the "
                        "inputs' common folder>_agegender.<ext>")
    p.add_argument("--show", action="store_true", help="also show the annotated image in a window")
    r = p.add_argument_group("Ray cluster (--ray; docs/ray.md)")
    r.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray (an actor per CPU) into --parquet DIR, resumable: alone, a local Ray on this machine; "
                        "ADDRESS (host:port, or auto) joins a running cluster. --image may also name a .txt or "
                        ".parquet list of paths")
    r.add_argument("--shard-size", type=COUNT, default=100,
                   help="images per Parquet shard on average (the unit of resume and of work per Ray task)")
    r.add_argument("--overwrite", action="store_true",
                   help="delete the shards of DIR that this run does not need (default: moved to DIR/_stale/)")
    v = p.add_argument_group("video (--video)")
    v.add_argument("--detect-every", type=COUNT, default=1,
                   help="detect and label every K-th frame; tracked boxes are carried between detections")
    v.add_argument("--track-max-missed", type=NON_NEGATIVE_INT, default=15,
                   help="a track ends once its face has not been detected for more than this many frames (frames, "
                        "also with --detect-every)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it is shown on stderr over several images or a video, on a terminal only)")
    p.epilog = ("exit status: 0 every image processed; 1 some images failed (each reported as 'error: PATH: "
                "reason'); 2 usage error, or no image could be processed")
    return p


def main() -> int:
    args = build_parser().parse_args()
    from agegender.serving.analyzer import FaceAnalyzer
    from agegender.serving.inference import Outputs
    from agegender.serving.inputs import expand_inputs, list_files

    if args.show and sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or
                                                               os.environ.get("WAYLAND_DISPLAY")):
        raise UserError("--show needs a display (DISPLAY is not set); use --output FILE instead")
    if args.video is not None:
        return run_video(args)
    if args.ray:
        return run_ray(args)
    if args.overwrite:
        raise UserError("--overwrite applies to --ray's folder of shards")
    paths, problems = expand_inputs(args.image)  # the same inputs as --ray: files, folders, globs, lists
    named = (("--jsonl", args.jsonl), ("--csv", args.csv), ("--parquet", args.parquet), ("--output", args.output))
    refuse_inputs(named, list_files(args.image))  # a list of inputs is an input too
    outputs = Outputs(paths, problems, text=not args.json, json_doc=args.json, jsonl=args.jsonl, output=args.output,
                      output_dir=args.output_dir, show=args.show, csv=args.csv, parquet=args.parquet,
                      progress=False if args.no_progress else None,
                      inputs=model_inputs(args))  # checks every output before the work
    analyzer = FaceAnalyzer.from_options(args.model, args.engine, args.det_model, args.det_thresh, args.max_size,
                                         args.gpus, det_threads=1, net_threads=1, age_decode=args.age_decode,
                                         min_face=args.min_face, flip=args.flip, batch_size=args.batch_size,
                                         max_pixels=args.max_pixels, gender_ensemble=args.gender_ensemble,
                                         age_level=args.age_level, drop_flagged=args.drop_flagged)
    with outputs:
        for result in analyzer.analyze_paths(paths, keep_images=outputs.draws):
            outputs.add(result)
    return outputs.exit_status()


def model_inputs(args: argparse.Namespace) -> list[str]:
    """The model files this run reads (--model or the bundled one, --det-model, the teacher): no output
    may replace one."""
    from agegender.model.engine import model_files

    return model_files(args.model) + ([args.det_model] if args.det_model else [])  # the teacher's file included


def run_ray(args: argparse.Namespace) -> int:
    """--ray: Ray actors over the inputs into Parquet shards under --parquet DIR, then one summary line."""
    if not args.parquet:
        raise UserError("--ray writes Parquet shards: give the output folder with --parquet DIR")
    if args.json or args.jsonl or args.csv or args.output or args.output_dir or args.show:
        raise UserError("with --ray the output is --parquet DIR only (read it with pandas or DuckDB: docs/ray.md)")
    if args.gpus:
        raise UserError("with --ray the net runs on the cluster's GPUs by itself; leave out --gpus")
    try:
        from agegender.serving.ray_batch import Settings, run
    except ImportError as exc:
        raise MissingDependency(missing_module_message((exc.name or "ray").split(".")[0], "--ray")) from None
    settings = Settings(model=args.model, engine=args.engine, det_model=args.det_model, det_thresh=args.det_thresh,
                        max_size=args.max_size, min_face=args.min_face, age_decode=args.age_decode, flip=args.flip,
                        max_pixels=args.max_pixels, batch_size=args.batch_size, age_level=args.age_level,
                        drop_flagged=args.drop_flagged, gender_ensemble=args.gender_ensemble)
    summary = run(args.image, args.parquet, settings, None if args.ray == "local" else args.ray, args.shard_size,
                  overwrite=args.overwrite)
    if summary.stages:
        print(summary.stage_line(), file=sys.stderr)
    print(summary.line(), file=sys.stderr)
    if not summary.failures:
        return 0
    return 1 if summary.images else 2


def run_video(args: argparse.Namespace) -> int:
    """--video: a file or a camera, annotated video (--output) and JSON lines (--jsonl), one line of summary."""
    from agegender.serving.analyzer import FaceAnalyzer
    from agegender.serving.video import check_video_args, process_video, summary_lines

    if args.output_dir or args.json or args.csv or args.parquet or args.ray:
        raise UserError("with --video, write the annotated video with --output FILE.mp4 and the faces with --jsonl")
    check_video_args(args.video, args.output, args.jsonl, model_inputs(args))  # before the models load
    analyzer = FaceAnalyzer.from_options(args.model, args.engine, args.det_model, args.det_thresh, args.max_size,
                                         args.gpus, det_threads=0, net_threads=1, age_decode=args.age_decode,
                                         min_face=args.min_face, flip=args.flip, batch_size=args.batch_size,
                                         gender_ensemble=args.gender_ensemble, age_level=args.age_level,
                                         drop_flagged=args.drop_flagged)
    res = process_video(args.video, analyzer, args.output, args.jsonl, args.detect_every, args.track_max_missed,
                        args.show, progress=False if args.no_progress else None)
    out = sys.stderr if "-" in (args.output, args.jsonl) else sys.stdout  # stdout carries the video or lines
    print("\n".join(summary_lines(res, analyzer)), file=out)
    if res.ended_early:
        print(f"error: {args.video}: the stream ended early; the {res.frames} frames read are written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
