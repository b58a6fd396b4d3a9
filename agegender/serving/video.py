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

from agegender.model.engine import Labels
from agegender.schema import SCHEMA_VERSION
from agegender.serving.analyzer import FaceAnalyzer, FaceResult, age_text, face_dict
from agegender.serving.inference import COLORS_BGR, FLAGGED_BGR, draw_label
from agegender.atomic import atomic_path, check_writable, named, open_output, refuse_inputs, refuse_same_outputs
from agegender.errors import UserError, short_reason
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


def summary_lines(res: VideoSummary, analyzer: FaceAnalyzer | None = None) -> list[str]:
    """The run in one line, then one line per track -- every track the count counts: a gender once it has
    settled, else the side it leans to so far and how few frames were labelled; the age with the range of
    the track's smoothed distribution (`track_range`, given the analyzer)."""
    rate = res.frames / res.seconds if res.seconds > 0 else 0.0
    lines = [f"{res.frames} frames ({res.detected} detected) in {res.seconds:.1f} s = {rate:.1f} frames/s; "
             f"{len(res.tracks)} tracks"]
    for t in res.tracks:
        age = age_text(t.age, track_range(t, analyzer)) if t.labelled else ""
        if t.settled:
            label = f"gender: {t.gender}, age: {age}"
        elif t.labelled:
            label = (f"gender: not settled ({t.labelled} labelled frame{'s' if t.labelled > 1 else ''}, "
                     f"{t.gender_so_far} so far), age: {age}")
        else:
            label = "no label (the model's output was not finite)"
        lines.append(f"track {t.id}: frames {t.first_frame}-{t.last_frame}, {label}")
    return lines


def open_video(source: str) -> tuple[cv2.VideoCapture, bool]:
    """(capture, is_camera) for a file path or a camera index; UserError when it does not open."""
    camera = source.isdigit()
    if not camera and not os.path.isfile(source):
        raise UserError(f"video not found: {source}")
    try:
        cap = cv2.VideoCapture(int(source) if camera else source)
    except (cv2.error, OverflowError) as exc:
        raise UserError(f"{'camera' if camera else 'video'} {source} does not open: {short_reason(exc)}") from None
    if not cap.isOpened():
        cap.release()
        raise UserError(f"camera {source} does not open" if camera else f"cannot open video {source}: not a "
                        "video OpenCV can read")
    return cap, camera


def face_labels(results: list[FaceResult], labels: Labels) -> list[tuple]:
    """What a track takes from each labelled face of a frame: (P(male), age, (age_low, age_high), flags,
    P(age > k)); the last feeds the track's smoothed age range."""
    # a copy: a row view would keep the whole batch's array alive for as long as the track keeps the row
    return [(fr.p_male, fr.age, fr.age_range, fr.flags, labels.age_probs[i].copy()) for i, fr in enumerate(results)]


def track_range(t: Track, analyzer: FaceAnalyzer | None) -> tuple[int, int] | None:
    """The range of the track's smoothed age distribution at the analyzer's level (None before a label)."""
    probs = t.age_probs
    if analyzer is None or probs is None:
        return None
    return analyzer.range_of(probs, t.age)


def draw_tracks(bgr: np.ndarray, tracks: list[Track], analyzer: FaceAnalyzer | None = None) -> np.ndarray:
    """Box, track id, smoothed gender, age and age range of each track, sized to the face; a face flagged in
    its latest labelled frame in grey, its label ending in `?`."""
    for t in tracks:
        x1, y1, x2, y2 = (int(round(float(v))) for v in t.face.box)
        side = max(1, min(x2 - x1, y2 - y1))
        latest = t.raw or t.last
        flagged = bool(latest and len(latest) > 3 and latest[3])
        color = FLAGGED_BGR if flagged else COLORS_BGR.get(t.gender, (128, 128, 128))
        cv2.rectangle(bgr, (x1, y1), (x2, y2), color, max(1, round(side / 50)), cv2.LINE_AA)
        text = f"#{t.id} " + (f"{t.gender[0].upper()} {age_text(t.age, track_range(t, analyzer))}" + "?" * flagged
                              if t.gender else "?")
        draw_label(bgr, text, (x1, y1, x2, y2), color, float(np.clip(side / 80, 0.4, 2.0)))
    return bgr


def frame_json(index: int, timestamp: float, tracks: list[Track], detected: bool = True,
               analyzer: FaceAnalyzer | None = None) -> dict:
    """One JSON line (the schema's `frame`): per face (numbered from 1, left to right) the schema's face
    object -- this frame's box (between detections, where the track predicts it) and the labels of the
    track's latest labelled frame (this one when `detected`) -- and its `track`: id, frames labelled, and the
    smoothed gender, P(male), age and age range (the range of the track's mean P(age > k), at `analyzer`'s
    level; gender never null once labelled)."""
    faces = []
    for k, t in enumerate(sorted(tracks, key=lambda t: (float(t.face.box[0]), float(t.face.box[1]))), 1):
        p_male, age, age_range, flags = ((t.raw or t.last or ()) + (None,) * 4)[:4]
        face = face_dict(t.face, p_male, age, k, age_range, flags or ())
        smooth = track_range(t, analyzer) if t.labelled else None
        face["track"] = {"id": t.id, "labelled": t.labelled, "settled": t.settled, "gender": t.gender_so_far,
                         "p_male": round(t.p_male, 4) if t.labelled else None,
                         "age": round(t.age, 1) if t.labelled else None,
                         "age_low": smooth[0] if smooth else None, "age_high": smooth[1] if smooth else None}
        faces.append(face)
    return {"schema_version": SCHEMA_VERSION, "frame": index, "time": round(timestamp, 3), "detected": detected,
            "faces": faces}


MAX_CAMERA_INDEX = 1023  # OpenCV takes an int; a larger "index" is a typo, not a camera


def check_video_args(source: str, output: str | None, jsonl: str | None, inputs: list[str] = ()) -> None:
    """Before any work: a camera index in range, no output that is the input video, one of `inputs` (the
    model's files) or the other output, every output writable (UserError in one line otherwise)."""
    if source.isdigit() and int(source) > MAX_CAMERA_INDEX:
        raise UserError(f"camera index {source} is out of range (0-{MAX_CAMERA_INDEX}); for a file, give its path")
    refuse_inputs([("--output", output), ("--jsonl", jsonl)], ([] if source.isdigit() else [source]) + list(inputs))
    refuse_same_outputs([("--output", output), ("--jsonl", jsonl)])
    if output == "-" and jsonl == "-":
        raise UserError("--output - and --jsonl - would both go to standard output; name a file for one")
    for path, flag in ((output, "--output"), (jsonl, "--jsonl")):
        if path:
            check_writable(path, flag)


def process_video(source: str, analyzer: FaceAnalyzer, output: str | None = None, jsonl: str | None = None,
                  detect_every: int = 1, max_missed: int = 15, show: bool = False,
                  progress: bool | None = None) -> VideoSummary:
    """Run a video file or a camera (`source` = its index) through detection, tracking and labelling."""
    check_video_args(source, output, jsonl)
    try:
        from tqdm import tqdm
    except ImportError:  # the progress bar is optional
        tqdm = None
    cap, camera = open_video(source)
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if 0 < fps < 1000 else 30.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not camera else 0
    reader = CameraReader(cap) if camera else None
    tracker = Tracker(max_missed=max_missed)
    writer = None
    frames = detected = 0
    ended_early = False
    start = time.perf_counter()
    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=total or None, unit="frame", desc="video", file=sys.stderr, dynamic_ncols=True,
               disable=not show_bar) if tqdm is not None else None
    try:
        # normal end, early end, Ctrl-C or SIGTERM: what was done is closed and put in place, complete; the
        # video goes through a temporary file (also for `-`, FIFOs and devices: an MP4 writer must seek)
        with contextlib.ExitStack() as outs:
            tmp_video = outs.enter_context(atomic_path(output, os.path.splitext(output)[1] or ".mp4",
                                                       keep_on_interrupt=True)) if output else None
            lines = outs.enter_context(open_output(jsonl)) if jsonl else None
            try:
                while True:
                    ok, bgr = reader.read() if reader else cap.read()
                    if not ok:
                        ended_early = bool(total) and frames < total - 1
                        break
                    if frames == 0 and output:
                        h, w = bgr.shape[:2]
                        writer = cv2.VideoWriter(tmp_video, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                        if not writer.isOpened():
                            raise UserError(f"cannot write video {output}: no encoder for its extension (use .mp4)")
                    detecting = frames % detect_every == 0
                    if detecting:
                        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                        faces, crops = analyzer.detect(rgb)
                        labels = analyzer.labels(crops)
                        seen = tracker.update(frames, faces, face_labels(analyzer.results(faces, crops, labels),
                                                                         labels))
                        detected += 1
                    else:
                        seen = tracker.carry(frames)
                    if lines is not None:
                        timestamp = frames / fps if not camera else time.perf_counter() - start
                        try:
                            lines.write(json.dumps(frame_json(frames, timestamp, seen, detecting, analyzer)) + "\n")
                        except OSError as exc:  # a full disk: the one-line error names the output
                            raise named(exc, jsonl) from None
                    if writer is not None or show:
                        drawn = draw_tracks(bgr, seen, analyzer)
                        if writer is not None:
                            writer.write(drawn)
                        if show:
                            cv2.imshow(f"agegender {source}", drawn)
                            if cv2.waitKey(1) & 0xFF == ord("q"):
                                break
                    frames += 1
                    if bar is not None:
                        bar.update(1)
                        if frames % 10 == 0:
                            bar.set_postfix(fps=f"{frames / (time.perf_counter() - start):.1f}",
                                            tracks=len(tracker.tracks))
            finally:
                if writer is not None:
                    writer.release()  # the file is complete before it is put in place
            if frames == 0:  # nothing to put in place: the temporary files go, the old outputs stay
                raise UserError(f"no frame could be read from {'camera ' if camera else ''}{source}")
    finally:
        if bar is not None:
            bar.close()
        if reader is not None:
            reader.close()
        cap.release()
        if show:
            with contextlib.suppress(cv2.error):
                cv2.destroyAllWindows()
    return VideoSummary(frames, detected, tracker.all_tracks(), time.perf_counter() - start, ended_early,
                        reader.dropped if reader else 0)


__all__ = ["process_video", "check_video_args", "MAX_CAMERA_INDEX", "open_video", "frame_json", "draw_tracks", "summary_lines", "VideoSummary", "CameraReader"]
