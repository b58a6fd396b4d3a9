"""Video files and cameras: every frame through FaceAnalyzer (or its tracked boxes carried between
detections), faces tracked across frames with steady labels, an annotated video and JSON lines out.

Outputs are written to temporary files beside their names and renamed when the run ends: normally, at
the end of a stream that stops early, or on Ctrl-C / SIGTERM (the frames done so far, complete).
A camera is read by its own thread into a one-frame slot: when the camera is faster than the pipeline,
frames are dropped, never queued.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from agegender.serving.analyzer import FaceAnalyzer, face_dict
from agegender.serving.inference import COLORS_BGR
from agegender.atomic import check_writable, is_stream, replace_with, temp_beside
from agegender.errors import UserError
from agegender.serving.tracking import Track, Tracker



class CameraReader:
    """The newest frame of a camera, read on a thread of its own (older frames are dropped)."""

    def __init__(self, cap: cv2.VideoCapture):
        self.cap, self.frame, self.done, self.dropped = cap, None, False, 0
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.done:
            ok, frame = self.cap.read()
            with self._cv:
                if not ok:
                    self.done = True
                else:
                    self.dropped += self.frame is not None
                    self.frame = frame
                self._cv.notify()

    def read(self) -> tuple[bool, np.ndarray | None]:
        with self._cv:
            while self.frame is None and not self.done:
                self._cv.wait(1.0)
            frame, self.frame = self.frame, None
        return frame is not None, frame

    def close(self) -> None:
        self.done = True
        self._thread.join(timeout=2)


@dataclass
class VideoSummary:
    frames: int
    detected: int
    tracks: list[Track]
    seconds: float
    ended_early: bool
    dropped: int


def open_video(source: str) -> tuple[cv2.VideoCapture, bool]:
    """(capture, is_camera) for a file path or a camera index; UserError when it does not open."""
    camera = source.isdigit()
    if not camera and not os.path.isfile(source):
        raise UserError(f"video not found: {source}")
    cap = cv2.VideoCapture(int(source) if camera else source)
    if not cap.isOpened():
        cap.release()
        raise UserError(f"camera {source} does not open" if camera else f"cannot open video {source}: not a "
                        "video OpenCV can read")
    return cap, camera


def draw_tracks(bgr: np.ndarray, tracks: list[Track]) -> np.ndarray:
    """Box, track id, smoothed gender and age of each track, sized to the face."""
    for t in tracks:
        x1, y1, x2, y2 = (int(round(float(v))) for v in t.face.box)
        side = max(1, min(x2 - x1, y2 - y1))
        color = COLORS_BGR.get(t.gender, (128, 128, 128))
        cv2.rectangle(bgr, (x1, y1), (x2, y2), color, max(1, round(side / 50)), cv2.LINE_AA)
        text = f"#{t.id} " + (f"{t.gender[0].upper()} {round(t.age)}" if t.gender else "?")
        scale = float(np.clip(side / 80, 0.4, 2.0))
        thick = max(1, round(scale * 1.5))
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else min(bgr.shape[0] - 1, y2 + th + 4)
        cv2.rectangle(bgr, (x1, ty - th - base), (x1 + tw + 2, ty + base // 2), color, -1)
        cv2.putText(bgr, text, (x1 + 1, ty - base // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                    cv2.LINE_AA)
    return bgr


def frame_json(index: int, timestamp: float, tracks: list[Track], detected: bool = True) -> dict:
    """One JSON line (the schema's `frame`): per face the schema's face object -- this frame's box and the
    labels of the track's latest labelled frame (this one when `detected`) -- and its `track`: id, frames
    labelled, and the smoothed gender, P(male) and age (gender never null once labelled)."""
    faces = []
    for t in tracks:
        p_male, age = t.raw or t.last or (None, None)
        face = face_dict(t.face, p_male, age)
        face["track"] = {"id": t.id, "labelled": t.labelled, "settled": t.settled, "gender": t.gender_so_far,
                         "p_male": round(t.p_male, 4) if t.labelled else None,
                         "age": round(t.age, 1) if t.labelled else None}
        faces.append(face)
    return {"frame": index, "time": round(timestamp, 3), "detected": detected, "faces": faces}


def process_video(source: str, analyzer: FaceAnalyzer, output: str | None = None, jsonl: str | None = None,
                  detect_every: int = 1, max_missed: int = 15, show: bool = False,
                  progress: bool | None = None) -> VideoSummary:
    """Run a video file or a camera (`source` = its index) through detection, tracking and labelling."""
    from tqdm import tqdm

    for path, flag in ((output, "--output"), (jsonl, "--jsonl")):
        if path:
            check_writable(path, flag)
    cap, camera = open_video(source)
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if 0 < fps < 1000 else 30.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not camera else 0
    reader = CameraReader(cap) if camera else None
    tracker = Tracker(max_missed=max_missed)
    tmp_video = tmp_jsonl = None
    writer = lines = None
    frames = detected = 0
    ended_early = False
    start = time.perf_counter()
    bar = tqdm(total=total or None, unit="frame", desc="video", file=sys.stderr, dynamic_ncols=True,
               disable=None if progress is None else not progress)  # None: shown on a terminal only
    try:
        if jsonl and is_stream(jsonl):  # `-`, a FIFO, a device: written through, line by line
            lines = sys.stdout if jsonl == "-" else open(os.path.realpath(jsonl), "w", encoding="utf-8")
        elif jsonl:
            tmp_jsonl = temp_beside(jsonl)
            lines = open(tmp_jsonl, "w", encoding="utf-8")
        while True:
            ok, bgr = reader.read() if reader else cap.read()
            if not ok:
                ended_early = bool(total) and frames < total - 1
                break
            if frames == 0 and output:
                h, w = bgr.shape[:2]
                tmp_video = temp_beside(output, os.path.splitext(output)[1] or ".mp4")
                writer = cv2.VideoWriter(tmp_video, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                if not writer.isOpened():
                    raise UserError(f"cannot write video {output}: no encoder for its extension (use .mp4)")
            detecting = frames % detect_every == 0
            if detecting:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                faces, crops = analyzer.detect(rgb)
                p_male, age = analyzer.label(crops)
                seen = tracker.update(frames, faces, list(zip(p_male.tolist(), age.tolist())))
                detected += 1
            else:
                seen = tracker.carry(frames)
            if lines is not None:
                timestamp = frames / fps if not camera else time.perf_counter() - start
                lines.write(json.dumps(frame_json(frames, timestamp, seen, detecting)) + "\n")
                if tmp_jsonl is None:
                    lines.flush()
            if writer is not None or show:
                drawn = draw_tracks(bgr, seen)
                if writer is not None:
                    writer.write(drawn)
                if show:
                    cv2.imshow(f"agegender {source}", drawn)
                    if cv2.waitKey(1) & 0xFF == ord("q"):
                        break
            frames += 1
            bar.update(1)
            if frames % 10 == 0:
                bar.set_postfix(fps=f"{frames / (time.perf_counter() - start):.1f}", tracks=len(tracker.tracks))
    finally:
        # normal end, early end, Ctrl-C or SIGTERM: what was done is closed and put in place, complete
        bar.close()
        if reader is not None:
            reader.close()
        cap.release()
        if writer is not None:
            writer.release()
        if lines is not None and lines is not sys.stdout:
            lines.close()
        if show:
            with contextlib.suppress(cv2.error):
                cv2.destroyAllWindows()
        for tmp, final in ((tmp_video, output), (tmp_jsonl, jsonl)):
            if tmp and frames:
                replace_with(tmp, final)
            elif tmp:
                os.remove(tmp)
    if frames == 0:
        raise UserError(f"no frame could be read from {'camera ' if camera else ''}{source}")
    return VideoSummary(frames, detected, tracker.all_tracks(), time.perf_counter() - start, ended_early,
                        reader.dropped if reader else 0)


__all__ = ["process_video", "open_video", "frame_json", "draw_tracks", "VideoSummary", "CameraReader"]
