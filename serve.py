#!/usr/bin/env python
"""Age and gender over HTTP: POST an image to /v1/analyze, get every face's box, gender and age (the JSON of
`infer.py --json`), or the annotated JPEG. Faces of concurrent requests go through the net together. See
README.md, "HTTP service"."""
from __future__ import annotations

import argparse
import os
import socket

from agegender.model.age import DEFAULT_AGE_LEVEL, add_age_decode_argument
from agegender.cli import (AGE_LEVEL, BATCH, COUNT, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, ArgumentParser,
                           add_flip_argument, number)
from agegender.model.engine import ENGINES
from agegender.model.ensemble import DEFAULT_GENDER_ENSEMBLE
from agegender.errors import UserError, run_cli
from agegender.data.image import MAX_PIXELS
from agegender.serving.memory import MAX_FACES_PER_IMAGE, MEMORY_BUDGET, check_memory_budget


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=number(int, 0, 65535), default=8000, help="port to listen on")
    p.add_argument("--model", default=None, help="a bundled model's name (default, small, ...: docs/model.md), "
                                                 "a .onnx file or PREFIX,EPOCH; one model per process")
    p.add_argument("--engine", choices=ENGINES, default=None, help="what runs the net (as infer.py)")
    p.add_argument("--det-model", metavar="ONNX", default=None, help="an InsightFace ONNX detector")
    p.add_argument("--max-size", type=NON_NEGATIVE_INT, default=1280, help="longest side seen by the detector")
    add_age_decode_argument(p)
    p.add_argument("--age-level", type=AGE_LEVEL, default=DEFAULT_AGE_LEVEL,
                   help="the age range's level: the true age lies in the range for this share of faces")
    p.add_argument("--drop-flagged", action="store_true",
                   help="leave out the faces the quality flag marks (too small, blurred or turned), as infer.py")
    add_flip_argument(p)
    p.add_argument("--gender-ensemble", action=argparse.BooleanOptionalAction, default=DEFAULT_GENDER_ENSEMBLE,
                   help="P(male) = ours mixed with the bundled CC0 teacher gender net's at the model's "
                        "calibrated weight, as infer.py")
    p.add_argument("--max-bytes", type=COUNT, default=10_000_000, help="largest request body (413 above)")
    p.add_argument("--max-pixels", type=COUNT, default=MAX_PIXELS, help="largest image, from its header (413 above)")
    p.add_argument("--batch-window-ms", type=NON_NEGATIVE, default=5.0,
                   help="how long the first waiting face waits for others to form a batch")
    p.add_argument("--batch-faces", type=BATCH, default=64,
                   help="a batch runs as soon as this many faces wait; also the most faces in one forward pass "
                        "(the net's memory grows with it)")
    p.add_argument("--workers", type=NON_NEGATIVE_INT, default=0, help="decoding and detection threads (0 = cores + 1)")
    p.add_argument("--gpus", default="", help="GPU ids for the net, as infer.py")
    g = p.add_argument_group("who may call it, and how much (docs/service.md)")
    g.add_argument("--api-key-file", metavar="FILE", default=None,
                   help=f"requests to /v1/ need 'Authorization: Bearer KEY', KEY being this file's first line "
                        f"(or set {API_KEY_ENV})")
    g.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let browser pages from ORIGIN (e.g. https://example.org) call the API; repeatable; "
                        "none by default")
    g.add_argument("--max-queue", type=COUNT, default=32,
                   help="requests in progress at once; over it: 503 with Retry-After")
    g.add_argument("--max-connections", type=COUNT, default=256, help="open connections; over it: 503 and close")
    g.add_argument("--memory-budget", type=COUNT, default=MEMORY_BUDGET, metavar="BYTES",
                   help="decoded images and face crops held by the requests in progress together; over it: "
                        "503 with Retry-After (default: 1 GB)")
    g.add_argument("--max-faces-per-image", type=COUNT, default=MAX_FACES_PER_IMAGE, metavar="N",
                   help="faces labelled in one image: the largest are kept, the answer's faces_dropped counts "
                        "the others")
    g.add_argument("--max-header-bytes", type=COUNT, default=64 * 1024,
                   help="request line and headers (431 above)")
    g.add_argument("--read-timeout", type=POSITIVE, default=30.0,
                   help="seconds for a request's headers and body to arrive (408 after)")
    g.add_argument("--idle-timeout", type=POSITIVE, default=15.0,
                   help="seconds a connection may wait with no request in progress")
    g.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                   help="one line per request: client, method, path, status, bytes, ms, request id")
    return p


API_KEY_ENV = "AGEGENDER_API_KEY"


def read_api_key(path: str | None) -> str | None:
    """The key from --api-key-file (first line), else from the environment; None: no key needed. A key that
    is set but blank is refused, from either place: it would leave the service open without a word."""
    if path is None:
        if API_KEY_ENV not in os.environ:
            return None
        key = os.environ[API_KEY_ENV].strip()
        if not key:
            raise UserError(f"{API_KEY_ENV} is set but blank: set a key, or unset it to run without one")
        return key
    try:
        # utf-8-sig: a key file saved by Notepad starts with a byte-order mark, which is not part of the key
        with open(path, encoding="utf-8-sig") as f:
            key = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read --api-key-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not key:
        raise UserError(f"--api-key-file {path}: the first line is empty")
    return key


def main() -> int:
    args = build_parser().parse_args()
    api_key = read_api_key(args.api_key_file)
    try:
        check_memory_budget(args.memory_budget, args.max_pixels, args.max_faces_per_image)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as s:
        try:  # a port in use is one line now, not a log line after the model has loaded
            s.bind((args.host, args.port))
        except OSError as exc:
            raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    import uvicorn

    from agegender.serving.analyzer import FaceAnalyzer
    from agegender.serving.http import Limits, protocol_class
    from agegender.serving.service import DET_FLOOR, create_app

    analyzer = FaceAnalyzer.from_options(args.model, args.engine, args.det_model, DET_FLOOR, args.max_size, args.gpus,
                                         det_threads=1, net_threads=1, age_decode=args.age_decode, flip=args.flip,
                                         age_level=args.age_level, drop_flagged=args.drop_flagged,
                                         gender_ensemble=args.gender_ensemble,
                                         batch_size=args.batch_faces)  # the net's memory grows with its batch
    limits = Limits(max_header_bytes=args.max_header_bytes, read_timeout=args.read_timeout,
                    idle_timeout=args.idle_timeout, max_connections=args.max_connections)
    app = create_app(analyzer, args.max_bytes, args.max_pixels, args.batch_window_ms, args.batch_faces, args.workers,
                     max_queue=args.max_queue, api_key=api_key, cors_origins=tuple(args.cors_origin),
                     access_log=args.access_log, limits=limits, memory_budget=args.memory_budget,
                     max_faces_per_image=args.max_faces_per_image)
    # uvicorn handles Ctrl-C and SIGTERM: no new connections, in-flight requests finish, exit 0
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=30, log_level="info",
                access_log=False, http=protocol_class(limits), timeout_keep_alive=int(max(1, args.idle_timeout)),
                log_config=log_config())
    return 0


def log_config() -> dict:
    """uvicorn's logging, with the service's own loggers (access lines, connection limits) beside it."""
    from uvicorn.config import LOGGING_CONFIG

    conf = {**LOGGING_CONFIG, "loggers": dict(LOGGING_CONFIG["loggers"])}
    conf["formatters"] = {**conf["formatters"], "plain": {"format": "%(levelname)s:     %(message)s"}}
    conf["handlers"] = {**conf["handlers"], "service": {"formatter": "plain", "class": "logging.StreamHandler",
                                                        "stream": "ext://sys.stdout"}}
    for name in ("agegender.serve", "agegender.access"):
        conf["loggers"][name] = {"handlers": ["service"], "level": "INFO", "propagate": False}
    # a malformed multipart body is answered 400 and access-logged: the parser's own warning adds nothing
    conf["loggers"]["python_multipart"] = {"handlers": ["service"], "level": "ERROR", "propagate": False}
    return conf


if __name__ == "__main__":
    run_cli(main)
