#!/usr/bin/env python
"""Train the gender/age network on packed train.rec / val.rec. See README.md, "Training"."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from agegender.cli import ArgumentParser, number, COUNT, BATCH, NON_NEGATIVE_INT, PROBABILITY, POSITIVE, NON_NEGATIVE
from agegender.errors import UserError, run_cli


def _add(p: argparse._ActionsContainer, flag: str, **kwargs) -> None:
    """A dashed flag plus the ancestor's underscore spelling as a hidden-in-help alias."""
    names = [flag] + (["--" + flag[2:].replace("-", "_")] if "-" in flag[2:] else [])
    p.add_argument(*names, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    d = p.add_argument_group("data")
    _add(d, "--data-dir", action="append", default=None, metavar="DIR",
         help="folder with train.rec/.idx (and val.rec/.idx) from create_dataset.py (default: dataset); repeat it "
              "to train on several sources at once, each named by its folder and validated on its own")
    _add(d, "--source-weights", default="", metavar="W1,W2,...",
         help="each --data-dir's share of every batch, e.g. 1,1 for equal; default: their train sizes")
    _add(d, "--num-workers", type=COUNT, default=2, help="image decoding threads")
    _add(d, "--rand-mirror", type=int, default=1, choices=(0, 1), help="random horizontal flips")
    _add(d, "--color", type=number(float, 0, 1), default=0.0, help="colour jitter strength (brightness, contrast, saturation)")
    _add(d, "--cutoff", type=number(int, 0, 112), default=0, help="random-erasing square side in pixels (0 = off)")
    _add(d, "--rotate", type=number(float, 0, 90), default=0.0, help="random rotation of the aligned face, max degrees")
    _add(d, "--scale", type=number(float, 0, 0.5), default=0.0, help="random scale of the aligned face, max relative change")
    _add(d, "--shift", type=number(int, 0, 56), default=0, help="random shift of the aligned face, max pixels")
    _add(d, "--gray", type=PROBABILITY, default=0.0, help="share of the faces turned greyscale")
    _add(d, "--blur", type=PROBABILITY, default=0.0, help="share of the faces blurred (down- and up-scaled)")
    _add(d, "--jpeg", type=PROBABILITY, default=0.0,
         help="share of the faces JPEG-recompressed at a random quality of 15-75")
    _add(d, "--noise", type=PROBABILITY, default=0.0,
         help="share of the faces given Gaussian sensor noise (sd 3-15 grey levels)")
    _add(d, "--scan", type=PROBABILITY, default=0.0,
         help="share of the faces made to look like a scanned old print (faded warm tone, low contrast, grain)")
    _add(d, "--mixup", type=NON_NEGATIVE, default=0.0,
         help="mixup: blend each face with another of its batch by lam ~ Beta(a, a), the loss by lam (0 = off)")
    n = p.add_argument_group("network")
    _add(n, "--network", default="m50", help="m50 (MobileNet v1), r18/r34/r50/r100 (face ResNet) or d10 (dlib's CC0 "
                                         "ResNet-10 age net on a 64x64 chip; start from tools/cc0_backbone.py; "
                                         "d10-N: the same weights on an NxN chip)")
    _add(n, "--multiplier", type=POSITIVE, default=1.0, help="MobileNet width (0.25 / 0.5 for CPUs)")
    _add(n, "--version-input", type=int, default=1, choices=(0, 1), help="1: stride-1 first conv; 0: stride 2")
    _add(n, "--version-output", default="GAP", help="output head (GAP)")
    _add(n, "--use-se", action="store_true", help="squeeze-and-excitation in ResNet units")
    _add(n, "--learn-output-scale", action="store_true",
         help="the output BatchNorm learns its gamma (InsightFace's holds it at 1, which caps every logit's "
              "spread); starts from the same outputs")
    c = p.add_argument_group("checkpoints")
    _add(c, "--prefix", default="models/model", help="checkpoint prefix: PREFIX-symbol.json, PREFIX-%%04d.params")
    _add(c, "--pretrained", default="", help="PREFIX,EPOCH of a checkpoint to start from (ours or InsightFace's)")
    _add(c, "--resume", action="store_true",
         help="continue from the newest PREFIX-%%04d.params, with PREFIX-config.json's settings as the defaults "
              "(flags given still win)")
    _add(c, "--config", default="", metavar="FILE",
         help="start from a saved PREFIX-config.json's settings (flags given win; --prefix is never taken from it)")
    _add(c, "--overwrite", action="store_true",
         help="delete the run already under --prefix and start anew (without it, such a prefix is refused)")
    _add(c, "--save-every", type=COUNT, default=1, help="save a checkpoint every N epochs")
    o = p.add_argument_group("optimisation")
    _add(o, "--end-epoch", type=COUNT, default=30, help="train until this many epochs are done")
    _add(o, "--lr", type=POSITIVE, default=0.1, help="learning rate (SGD)")
    _add(o, "--lr-steps", default="", help="epochs at which the lr is multiplied by --lr-factor, e.g. 10,20")
    _add(o, "--lr-factor", type=number(float, 0, 1, lo_open=True), default=0.1, help="lr multiplier at each step")
    _add(o, "--gender-weight", type=NON_NEGATIVE, default=1.0,
         help="weight of the gender loss against the sum of the 100 age losses")
    _add(o, "--age-sigma", type=number(float, 0, 30), default=0.0,
         help="soft age targets: label noise in years (0 = hard 0/1 steps)")
    _add(o, "--interval-prior", type=PROBABILITY, default=0.0, metavar="W",
         help="age groups (FairFace) also teach the pairs inside the group, with this weight, an age spread "
              "evenly over it (0 = masked, as the label says; for sources of groups only, e.g. the open model)")
    _add(o, "--gender-smooth", type=number(float, 0, 1, hi_open=True), default=0.0, help="label smoothing of the gender targets")
    _add(o, "--teacher-gender", action="append", default=None, metavar="CSV",
         help="soft gender labels of the train split from tools/teacher_gender.py (distillation); with several "
              "--data-dir, one per source in the same order ('-' for none)")
    _add(o, "--teacher-weight", type=PROBABILITY, default=0.5,
         help="share of the teacher in each gender target: (1 - w) x label + w x teacher")
    _add(o, "--teacher-online", type=PROBABILITY, default=0.0, metavar="W",
         help="run the bundled teacher gender net on every augmented training face and give its P(male) this "
              "share of the gender target (0 = off; instead of --teacher-gender)")
    _add(o, "--age-balance", type=number(float, 0, 2), default=0.0,
         help="re-weight the age loss by 10-year band frequency ** -this (0 = off, 1 = fully balanced)")
    _add(o, "--gender-balance", type=number(float, 0, 2), default=0.0,
         help="re-weight the gender loss by 10-year band frequency ** -this, so the rare bands (children, the "
              "old) count more (0 = off, 1 = every band the same total weight)")
    _add(o, "--lr-schedule", choices=("step", "cosine"), default="step",
         help="step: x --lr-factor at --lr-steps; cosine: down to 0 at --end-epoch")
    _add(o, "--warmup-epochs", type=NON_NEGATIVE, default=0.0, help="linear lr warm-up over this many epochs")
    _add(o, "--wd", type=NON_NEGATIVE, default=5e-4, help="weight decay")
    _add(o, "--mom", type=number(float, 0, 1, hi_open=True), default=0.9, help="momentum")
    _add(o, "--batch-size", type=BATCH, default=128, help="batch size per context (global = this x contexts)")
    _add(o, "--seed", type=NON_NEGATIVE_INT, default=0, help="seed of initialisation, shuffling and augmentation")
    _add(o, "--max-steps", type=NON_NEGATIVE_INT, default=0, help="stop after this many batches (0 = no limit)")
    r = p.add_argument_group("hardware and logging")
    _add(r, "--gpus", default="", help="GPU ids such as 0,1 (empty = CPU)")
    p.add_argument("--gpu_ids", dest="gpus", help=argparse.SUPPRESS)  # the ancestor's name
    _add(r, "--kvstore", default="device", help="local, device, dist_sync, dist_device_sync")
    _add(r, "--log-interval", type=COUNT, default=20, help="log every N batches")
    _add(r, "--age-decode", choices=("prob", "vote"), default="prob", help="age decoding for the metrics")
    r.add_argument("--verbose", action="store_true", help="also show MXNet's native INFO log lines")
    return p


def _steps(text: str) -> list[int]:
    try:
        return sorted(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--lr-steps takes epochs such as 10,20; got {text!r}") from None


def _weights(text: str) -> list[float]:
    try:
        weights = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        weights = []
    if text.strip() and (not weights or not all(0 < w < 1e9 for w in weights)):
        raise UserError(f"--source-weights takes positive numbers such as 2,1; got {text!r}")
    return weights


def main() -> int:
    from agegender.model.saved_config import parse_with_saved_config

    args, config_file = parse_with_saved_config(build_parser, sys.argv[1:])
    from agegender.native_logs import set_verbose

    set_verbose(args.verbose)
    from agegender.data.iterators import Augment
    from agegender.model.training import TWO_TEACHERS, Fit, TrainConfig

    values = vars(args)
    cfg = TrainConfig(**{f.name: values[f.name] for f in dataclasses.fields(TrainConfig) if f.name in values})
    cfg.lr_steps = _steps(args.lr_steps)
    dirs = args.data_dir or ["dataset"]
    cfg.data_dir, cfg.data_dirs = dirs[0], dirs
    teachers = args.teacher_gender or []
    cfg.teacher_gender, cfg.teacher_genders = (teachers[0] if teachers else ""), teachers
    if cfg.teacher_online > 0 and any(t not in ("", "-") for t in teachers):
        raise UserError(TWO_TEACHERS)
    cfg.source_weights = _weights(args.source_weights)
    cfg.augment = Augment(mirror=bool(args.rand_mirror), color=args.color, cutoff=args.cutoff, rotate=args.rotate,
                          scale=args.scale, shift=args.shift, gray=args.gray, blur=args.blur,
                          jpeg=args.jpeg, noise=args.noise, scan=args.scan, mixup=args.mixup)
    from agegender.atomic import check_writable, dataset_files, refuse_prefix
    from agegender.model.engine import model_files
    from agegender.model.run_files import claim_prefix, write_config

    reads = [f for d in cfg.data_dirs for split in ("train", "val")
             for f in dataset_files(os.path.join(d, f"{split}.rec"))]
    own = bool(cfg.pretrained) and os.path.realpath(cfg.pretrained.partition(",")[0]) == os.path.realpath(cfg.prefix)
    if own and not cfg.resume:  # --overwrite would delete the weights before they are loaded
        raise UserError(f"--pretrained {cfg.pretrained} is this run's own --prefix {cfg.prefix}: "
                        f"{'--overwrite would delete it' if args.overwrite else 'the run would replace it'} before "
                        "it is loaded; continue that run with --resume, or train into another --prefix")
    # the bundled models are inputs of every run (a run under one's prefix would replace it, --overwrite delete
    # it first), whatever --pretrained names; --pretrained is one too unless it is the run's own (--resume)
    from agegender.model import registry

    reads += model_files(None) + [f for m in registry.available() for f in m.files()]
    if cfg.pretrained and not own:
        reads += model_files(cfg.pretrained)
    refuse_prefix("--prefix", cfg.prefix, reads + [t for t in cfg.teacher_genders if t != "-"])

    if os.path.dirname(cfg.prefix):
        try:
            os.makedirs(os.path.dirname(cfg.prefix), exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the folder of --prefix {cfg.prefix}: {exc.strerror or exc}") from None
    check_writable(f"{cfg.prefix}-symbol.json", "checkpoints under --prefix")
    claim_prefix(cfg.prefix, cfg.resume, args.overwrite)
    from agegender import __version__

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(f"{cfg.prefix}-train.log")])
    log = logging.getLogger("train")
    if config_file:
        log.info("settings from %s, flags given override them", config_file)
    log.info("train.py %s", " ".join(f"--{k.replace('_', '-')}={v}" for k, v in values.items()))
    fit = Fit.from_config(cfg)
    # only settings that set up: a run that fails to start (missing data, a bad --pretrained) must not
    # replace the config its checkpoints were trained with
    log.info("settings saved to %s", write_config(cfg.prefix, dataclasses.asdict(cfg), __version__))
    fit.run()
    return 0


if __name__ == "__main__":
    run_cli(main)
