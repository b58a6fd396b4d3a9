#!/usr/bin/env python
"""Pack raw AFAD / MegaAge / AgeDB / UTKFace / All-Age-Faces / FairFace folders and `path,gender,age` lists into train/val
MXNet RecordIO files of 5-point-aligned 112x112 faces. See README.md, "Packing a dataset"."""
from __future__ import annotations

import argparse
import os
import sys

from agegender.cli import COUNT, DET_THRESH, NON_NEGATIVE_INT, RATIO, ArgumentParser, number
from agegender.data.image import MAX_PIXELS
from agegender.errors import UserError, run_cli
from agegender.atomic import refuse_inputs
from agegender.model.engine import model_files
from agegender.data.pack import PACKED_FILES, FaceSettings, pack_dataset, summary_table, unique_source_names
from agegender.data.sources import (parse_aaf, parse_afad, parse_agedb, parse_fairface, parse_list, parse_megaage,
                                    parse_utkface)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    src = p.add_argument_group("sources (any combination, at least one)")
    src.add_argument("--afad", metavar="DIR", help="AFAD root: DIR/<age>/<111|112>/<name>.jpg")
    src.add_argument("--megaage", metavar="DIR",
                     help="MegaAge(-Asian) root: DIR/{train,test}/ and DIR/list/{train,test}_{name,age}.txt")
    src.add_argument("--agedb", metavar="DIR", help="AgeDB folder: <id>_<Name>_<age>_<m|f>.jpg")
    src.add_argument("--utkface", metavar="DIR", help="UTKFace folder: <age>_<gender>_<race>_<date>.jpg.chip.jpg")
    src.add_argument("--aaf", metavar="DIR",
                     help="All-Age-Faces root: 'DIR/original images/<id>A<age>.jpg', 'DIR/image sets/{train_,val_}.txt'")
    src.add_argument("--fairface", metavar="DIR",
                     help="FairFace root: DIR/{train,val}/<n>.jpg, DIR/fairface_label_{train,val}.csv (age groups "
                          "kept as intervals, race kept)")
    src.add_argument("--fairface-set", choices=("train", "val"), default="train",
                     help="which FairFace CSV to pack: train (split by --val-ratio) or val (the published "
                          "benchmark split, packed whole into val.rec, never into train)")
    src.add_argument("--list", metavar="FILE", action="append", default=[],
                     help="list of `path,gender,age` lines (path relative to the list; repeatable)")
    out = p.add_argument_group("output")
    out.add_argument("--output", default="dataset", metavar="DIR",
                     help="where train/val .rec/.idx/.lst, meta.json and skipped.csv go")
    out.add_argument("--image-size", type=COUNT, default=112, help="side of the stored face (multiple of 112)")
    out.add_argument("--quality", type=number(int, 1, 100), default=95, help="JPEG quality of the stored faces (1-100)")
    face = p.add_argument_group("faces")
    face.add_argument("--align", choices=("retinaface", "none"), default="retinaface",
                      help="retinaface: detect + 5-point align; none: inputs are aligned crops, resize only")
    face.add_argument("--no-face", choices=("skip", "center"), default="skip",
                      help="what to do when no face is found: skip it, or store a centre crop")
    face.add_argument("--det-thresh", type=DET_THRESH, default=0.5, help="minimum detector score")
    face.add_argument("--det-model", metavar="ONNX", default=None,
                      help="an InsightFace ONNX detector (e.g. det_500m.onnx) instead of the bundled RetinaFace")
    face.add_argument("--det-max-size", type=NON_NEGATIVE_INT, default=640,
                      help="larger images are scaled down to this longest side for detection")
    spl = p.add_argument_group("splits")
    spl.add_argument("--val-ratio", type=RATIO, default=0.05, help="share of each source put in val (0 = all train)")
    spl.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="seed of the train/val draw")
    spl.add_argument("--megaage-split", choices=("random", "official"), default="random",
                     help="official: MegaAge's own test list becomes val")
    spl.add_argument("--aaf-split", choices=("official", "random"), default="official",
                     help="official: All-Age-Faces' train_/val_ lists are the splits; random: pooled, --val-ratio drawn")
    face.add_argument("--max-pixels", type=NON_NEGATIVE_INT, default=MAX_PIXELS,
                      help="skip images with more pixels (reason too_large, read from the header; 0 = no limit)")
    p.add_argument("--workers", type=NON_NEGATIVE_INT, default=0, help="worker processes (0 = all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main() -> int:
    args = build_parser().parse_args()
    if args.image_size % 112:
        raise UserError(f"--image-size must be a positive multiple of 112, got {args.image_size}")
    if args.det_model and not os.path.isfile(args.det_model):
        raise UserError(f"detector model not found: {args.det_model}")

    parsers = [(args.afad, parse_afad), (args.megaage, lambda d: parse_megaage(d, args.megaage_split == "official")),
               (args.agedb, parse_agedb), (args.utkface, parse_utkface),
               (args.aaf, lambda d: parse_aaf(d, args.aaf_split == "official")),
               (args.fairface, lambda d: parse_fairface(d, args.fairface_set))]
    sources = []
    try:
        for path, parse in parsers:
            if path:
                sources.append(parse(path))
        sources.extend(parse_list(f) for f in args.list)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if not sources:
        raise UserError("no source given: use --afad, --megaage, --agedb, --utkface, --aaf, --fairface or --list")
    sources = unique_source_names(sources)
    written = [os.path.join(args.output, n) for n in PACKED_FILES]
    refuse_inputs([("--output", w) for w in written],
                  list(args.list) + [s.path for parsed in sources for s in parsed.samples] + model_files() +
                  ([args.det_model] if args.det_model else []))

    settings = FaceSettings(align=args.align, no_face=args.no_face, image_size=args.image_size,
                            quality=args.quality, det_thresh=args.det_thresh, det_model=args.det_model,
                            det_max_size=args.det_max_size, max_pixels=args.max_pixels)
    try:
        result = pack_dataset(sources, args.output, settings, val_ratio=args.val_ratio, seed=args.seed,
                              workers=args.workers, progress=not args.no_progress)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(summary_table(result.counts))
    for name, c in result.counts.items():
        if c["train"] + c["val"] and c["crop_in_photo"] < 0.9:
            print(f"note: {name}'s aligned crops lie {c['crop_in_photo']:.0%} inside their photos; the rest is "
                  "black border (tight source crops), which photos at inference do not have")
    print(f"wrote {args.output}/{{train,val}}.{{rec,idx,lst}}, meta.json, skipped.csv", file=sys.stdout)
    return 0


if __name__ == "__main__":
    run_cli(main)
