#!/usr/bin/env python
"""Age and gender over HTTP: POST an image to /v1/analyze, get every face's box, gender and age (the JSON of
`infer.py --json`), or the annotated JPEG. Faces of concurrent requests go through the net together. See
README.md, "HTTP service"."""
from __future__ import annotations

import argparse
import socket

from agegender.model.age import AGE_DECODINGS, DEFAULT_DECODE, DEFAULT_FLIP
from agegender.cli import BATCH, COUNT, NON_NEGATIVE, NON_NEGATIVE_INT, ArgumentParser, number
from agegender.model.engine import ENGINES
from agegender.errors import UserError, run_cli
from agegender.data.image import MAX_PIXELS


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=number(int, 0, 65535), default=8000, help="port to listen on")
    p.add_argument("--model", default=None, help="a .onnx file or PREFIX,EPOCH; default: the bundled model")
    p.add_argument("--engine", choices=ENGINES, default=None, help="what runs the net (as infer.py)")
    p.add_argument("--det-model", metavar="ONNX", default=None, help="an InsightFace ONNX detector")
    p.add_argument("--max-size", type=NON_NEGATIVE_INT, default=1280, help="longest side seen by the detector")
    p.add_argument("--age-decode", choices=AGE_DECODINGS, default=DEFAULT_DECODE, help="age decoding")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=DEFAULT_FLIP,
                   help="average each face's outputs with its mirror image's")
    p.add_argument("--max-bytes", type=COUNT, default=10_000_000, help="largest request body (413 above)")
    p.add_argument("--max-pixels", type=COUNT, default=MAX_PIXELS, help="largest image, from its header (413 above)")
    p.add_argument("--batch-window-ms", type=NON_NEGATIVE, default=5.0,
                   help="how long the first waiting face waits for others to form a batch")
    p.add_argument("--batch-faces", type=BATCH, default=64, help="a batch runs as soon as this many faces wait")
    p.add_argument("--workers", type=NON_NEGATIVE_INT, default=0, help="decoding and detection threads (0 = cores + 1)")
    p.add_argument("--gpus", default="", help="GPU ids for the net, as infer.py")
    return p


def main() -> int:
    args = build_parser().parse_args()
    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as s:
        try:  # a port in use is one line now, not a log line after the model has loaded
            s.bind((args.host, args.port))
        except OSError as exc:
            raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    import uvicorn

    from agegender.serving.analyzer import FaceAnalyzer
    from agegender.serving.service import DET_FLOOR, create_app

    analyzer = FaceAnalyzer.from_options(args.model, args.engine, args.det_model, DET_FLOOR, args.max_size, args.gpus,
                                         det_threads=1, net_threads=1, age_decode=args.age_decode, flip=args.flip)
    app = create_app(analyzer, args.max_bytes, args.max_pixels, args.batch_window_ms, args.batch_faces, args.workers)
    # uvicorn handles Ctrl-C and SIGTERM: no new connections, in-flight requests finish, exit 0
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=30, log_level="info",
                access_log=False)
    return 0


if __name__ == "__main__":
    run_cli(main)
