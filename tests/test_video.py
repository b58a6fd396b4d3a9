"""infer.py --video: tracks, steady labels, JSON lines, the annotated video, speed controls, bad input and
Ctrl-C. The always-run fixture is a slow pan and zoom across the insightface wheel's t1.jpg (six people);
a second one uses the real photos of ../shared/data/photos."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT, as_in_a_terminal, run_script, shared_path
from agegender.data.demo import pan_and_zoom, wheel_image
from agegender.serving.tracking import Tracker, iou_matrix
from agegender.data.face import Face
from agegender.schema import validate


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _by_track(lines: list[dict]) -> dict[int, list[tuple[int, dict]]]:
    tracks = defaultdict(list)
    for row in lines:
        for f in row["faces"]:
            tracks[f["track"]["id"]].append((row["frame"], f))
    return tracks


@pytest.fixture(scope="module")
def t1_video(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("video") / "t1_pan.mp4")
    pan_and_zoom(wheel_image("t1.jpg"), path)
    return path


def test_one_track_per_person_spanning_the_video_with_steady_labels(t1_video, tmp_path):
    out, jl = tmp_path / "out.mp4", tmp_path / "faces.jsonl"
    proc = run_script("infer.py", "--video", t1_video, "--output", str(out), "--jsonl", str(jl), check=True)
    assert "60 frames" in proc.stdout and "6 tracks" in proc.stdout
    lines = _lines(jl)
    for row in lines:
        validate(row, "frame")
    assert [r["frame"] for r in lines] == list(range(60))
    assert lines[1]["time"] == pytest.approx(0.04)
    tracks = _by_track(lines)
    assert len(tracks) == 6  # six people, each one id while in view
    for tid, seen in tracks.items():
        assert [f for f, _ in seen] == list(range(60)), tid  # visible throughout: tracked throughout
        settled = {f["track"]["gender"] for _, f in seen if f["track"]["settled"]}
        assert len(settled) == 1, (tid, settled)  # the label holds steady
        assert all(f["track"]["gender"] for _, f in seen)  # never null once labelled (from the first frame)
        ages = [f["track"]["age"] for _, f in seen[10:]]
        assert max(ages) - min(ages) <= 4, (tid, ages)
        raw = [f["p_male"] for _, f in seen]
        assert all(isinstance(p, float) for p in raw)  # detected every frame by default
    # left to right the photo's cast is F F M M M F; at 640x360 the faces are 50-60 px wide, and the
    # bundled model is sure of the three women (the men's faces are its borderline cases)
    first = sorted(tracks, key=lambda t: tracks[t][0][1]["box"][0])
    genders = [tracks[t][-1][1]["track"]["gender"] for t in first]
    assert genders[0] == genders[1] == genders[5] == "female" and "male" in genders[2:5], genders
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 60 and cap.read()[1].shape == (360, 640, 3)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp") or ".tmp." in n]


def test_jsonl_to_stdout_leaves_only_json_there(t1_video):
    proc = run_script("infer.py", "--video", t1_video, "--jsonl", "-", "--detect-every", "4", check=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["frame"] for r in rows] == list(range(60))
    for row in rows:
        validate(row, "frame")
    assert "6 tracks" in proc.stderr and "track 1: frames 0-59" in proc.stderr


def test_detect_every_carries_tracked_boxes_between_detections(t1_video, tmp_path):
    jl = tmp_path / "faces.jsonl"
    run_script("infer.py", "--video", t1_video, "--jsonl", str(jl), "--detect-every", "3", check=True)
    lines = _lines(jl)
    tracks = _by_track(lines)
    assert len(tracks) == 6
    for seen in tracks.values():
        assert [f for f, _ in seen] == list(range(60))
        labelled = [frame for frame, f in seen if f["track"]["labelled"] > seen[frame - 1][1]["track"]["labelled"]]
        assert labelled == list(range(3, 60, 3))  # new labels on detection frames only
        assert all(f["gender"] and f["track"]["gender"] for _, f in seen)  # carried frames keep their labels
    assert [r["detected"] for r in lines] == [i % 3 == 0 for i in range(60)]


def test_real_photos_video_tracks_every_face(tmp_path):
    photo = os.path.join(shared_path("data", "photos"), "biubug6_ncnn_sample.jpg")
    video = str(tmp_path / "kids.mp4")
    pan_and_zoom(photo, video, size=(1024, 576), frames=30, zoom=0.03)
    jl = tmp_path / "faces.jsonl"
    run_script("infer.py", "--video", video, "--jsonl", str(jl), check=True)
    lines = _lines(jl)
    per_frame = [len(r["faces"]) for r in lines]
    tracks = _by_track(lines)
    steady = [t for t, seen in tracks.items() if len(seen) >= 25]
    assert len(steady) >= min(per_frame) and len(tracks) <= max(per_frame) + 2, (per_frame, len(tracks))


def test_tracker_matches_by_overlap_and_ends_lost_tracks():
    face = lambda x: Face(np.array([x, 0, x + 50, 60], np.float32), 0.9, np.zeros((5, 2), np.float32))  # noqa
    tr = Tracker(max_missed=2)
    a, b = tr.update(0, [face(0), face(200)], [(0.9, 30), (0.1, 40)])
    assert (a.id, b.id) == (1, 2)
    moved = tr.update(1, [face(205), face(4)], [(0.9, 40), (0.1, 50)])  # order swapped, boxes moved a little
    assert [t.id for t in moved] == [2, 1]
    for f in range(2, 5):
        tr.update(f, [face(4)], [(0.9, 30)])
    assert [t.id for t in tr.tracks] == [1] and [t.id for t in tr.finished] == [2]
    assert tr.update(5, [face(600)])[0].id == 3  # a new person, a new id
    np.testing.assert_allclose(iou_matrix(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]])), [[1 / 3]])


@pytest.mark.parametrize("name,data,message", [
    ("missing.mp4", None, "video not found"),
    ("empty.mp4", b"", "empty.mp4"),
    ("text.mp4", b"not a video", "text.mp4"),
    ("97", None, "camera 97 does not open"),
])
def test_bad_videos_and_cameras_are_one_line_errors(tmp_path, name, data, message):
    source = name if name.isdigit() else str(tmp_path / name)
    if data is not None:
        (tmp_path / name).write_bytes(data)
    proc = run_script("infer.py", "--video", source, "--no-progress")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith(("[", "global"))]  # OpenCV's own logs
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_unwritable_outputs_are_refused_before_reading(t1_video, tmp_path):
    proc = run_script("infer.py", "--video", t1_video, "--output", str(tmp_path / "no" / "out.mp4"))
    assert proc.returncode == 2 and "cannot write --output" in proc.stderr


def test_a_stream_that_ends_early_keeps_the_frames_done(t1_video, tmp_path):
    """An MJPG AVI cut at two thirds: its header promises 60 frames, about 40 can be read."""
    cap, avi = cv2.VideoCapture(t1_video), str(tmp_path / "full.avi")
    out = cv2.VideoWriter(avi, cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 360))
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.write(frame)
    out.release()
    cut = tmp_path / "cut.avi"
    data = open(avi, "rb").read()
    cut.write_bytes(data[: len(data) * 2 // 3])
    jl = tmp_path / "faces.jsonl"
    proc = run_script("infer.py", "--video", str(cut), "--jsonl", str(jl), "--no-progress")
    assert proc.returncode == 1 and "the stream ended early" in proc.stderr, proc.stderr
    lines = _lines(jl)
    assert 20 < len(lines) < 60 and [r["frame"] for r in lines] == list(range(len(lines)))
    assert f"the {len(lines)} frames read are written" in proc.stderr


def test_ctrl_c_closes_the_video_and_the_json_lines_cleanly(tmp_path):
    video = str(tmp_path / "long.mp4")
    pan_and_zoom(wheel_image("t1.jpg"), video, frames=400)
    out, jl = tmp_path / "out.mp4", tmp_path / "faces.jsonl"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "infer.py"), "--video", video, "--output", str(out),
                             "--jsonl", str(jl), "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_in_a_terminal)
    try:
        while not [n for n in os.listdir(tmp_path) if n.startswith(".faces.jsonl")]:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    lines = _lines(jl)
    assert 0 < len(lines) < 400 and [r["frame"] for r in lines] == list(range(len(lines)))
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened() and cap.read()[0]
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]
