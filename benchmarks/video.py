#!/usr/bin/env python
"""Video speed: frames/s of `infer.py --video` (detection, tracking, labelling; no output written) on a
640x360 and a 1280x720 clip of a slow pan and zoom across t1.jpg (six faces), with --detect-every 1 and 3.

    .venv/bin/python benchmarks/video.py [--frames 150]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agegender.serving.analyzer import FaceAnalyzer  # noqa: E402
from agegender.data.demo import pan_and_zoom, wheel_image  # noqa: E402  the tests' clip: figures and tests agree
from agegender.serving.video import process_video  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=150)
    args = p.parse_args()
    analyzer = FaceAnalyzer.from_options(det_threads=0, net_threads=1)  # as infer.py --video
    print(f"CPU cores: {os.cpu_count()}; {args.frames} frames per clip, six faces, bundled model")
    print(f"{'clip':<10}{'--detect-every':>15}{'frames/s':>10}{'tracks':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in ((640, 360), (1280, 720)):
            clip = os.path.join(tmp, f"{w}x{h}.mp4")
            pan_and_zoom(wheel_image("t1.jpg"), clip, size=(w, h), frames=args.frames)
            process_video(clip, analyzer, progress=False)  # warm-up
            for every in (1, 3):
                res = process_video(clip, analyzer, detect_every=every, progress=False)
                print(f"{w}x{h:<6}{every:>15}{res.frames / res.seconds:>10.1f}{len(res.tracks):>8}", flush=True)


if __name__ == "__main__":
    main()
