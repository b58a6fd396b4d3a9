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


# --- a clip built by hand: two people cross (the one behind unseen while they overlap), one leaves and
# comes back elsewhere, and a fourth steps into the spot the one who left stood on ---------------------
W, H = 640, 360


def _box(cx: float, cy: float, side: float = 60) -> np.ndarray:
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def _crossing_clip(frames: int = 60) -> list[list[tuple[str, np.ndarray]]]:
    """(person, box) detected in each frame. A walks right and B left along one row at 10 px a frame; B,
    behind, is not detected while they overlap. C stands at (320, 260) for frames 0-14, is away for 30
    frames and comes back at (520, 260); D steps into C's old spot at frame 35."""
    clip = []
    for f in range(frames):
        a, b = 40 + 10 * f, 600 - 10 * f
        seen = [("A", _box(a, 100))]
        if abs(a - b) > 50:
            seen.append(("B", _box(b, 110)))
        if f < 15:
            seen.append(("C", _box(320, 260)))
        elif f >= 45:
            seen.append(("C", _box(520, 260)))
        if f >= 35:
            seen.append(("D", _box(322, 262)))
        clip.append(seen)
    return clip


LABELS = {"A": (0.05, 30.0), "B": (0.95, 50.0), "C": (0.10, 20.0), "D": (0.90, 60.0)}


def _run_tracker(clip, detect_every: int, max_missed: int = 15):
    """As process_video runs the tracker: detection on every k-th frame, boxes carried between. Returns
    the tracker and, per frame, (track id, box shown) and the person detected in that box."""
    tr = Tracker(max_missed=max_missed)
    shown = []
    for f, seen in enumerate(clip):
        if f % detect_every == 0:
            faces = [Face(box, 0.9, np.zeros((5, 2), np.float32)) for _, box in seen]
            tracks = tr.update(f, faces, [LABELS[p] for p, _ in seen])
            shown.append([(t.id, p, t.face.box.copy()) for t, (p, _) in zip(tracks, seen)])
        else:
            shown.append([(t.id, None, t.face.box.copy()) for t in tr.carry(f)])
    return tr, shown


@pytest.mark.parametrize("every", [1, 2, 3, 5])
def test_crossing_and_returning_people_keep_their_own_tracks_at_every_detect_every(every):
    clip = _crossing_clip()
    tr, shown = _run_tracker(clip, every)
    people: dict[int, set[str]] = defaultdict(set)
    for frame in shown:
        for tid, person, _ in frame:
            if person:
                people[tid].add(person)
    assert all(len(p) == 1 for p in people.values()), people  # no track handed to another person
    ids = defaultdict(set)
    for tid, p in people.items():
        ids[p.pop()].add(tid)
    # A and B keep theirs through the crossing (B unseen for a few frames); C, away for 30 frames (more than
    # --track-max-missed 15, in frames whatever --detect-every), comes back as a new track; D gets its own
    assert {p: len(t) for p, t in ids.items()} == {"A": 1, "B": 1, "C": 2, "D": 1}, ids
    c_first = tr.all_tracks()[[t.id for t in tr.all_tracks()].index(min(ids["C"]))]
    assert c_first.last_frame <= 14 + every - 1 and c_first.gender_so_far == "female" and round(c_first.age) == 20
    for t in tr.all_tracks():
        if t.settled:  # the smoothed label is one person's
            assert t.gender == ("male" if LABELS[next(p for p, ids_ in ids.items() if t.id in ids_)][0] > 0.5
                                else "female")
    # between detections the boxes move with the faces: once A's speed is known (its second detection), its
    # shown box is never more than 2 px off
    truth_a = {f: dict(seen)["A"] for f, seen in enumerate(clip)}
    a_id = next(iter(ids["A"]))
    for f, frame in enumerate(shown[every:], every):
        box = next(b for tid, _, b in frame if tid == a_id)
        assert np.abs(box - truth_a[f]).max() <= 2, (f, box, truth_a[f])


@pytest.mark.parametrize("every", [1, 3, 5])
def test_track_max_missed_counts_frames_whatever_detect_every(every):
    """A face away for 20 frames keeps its track with max_missed 25 and loses it with 15, at every K."""
    clip = [[("C", _box(320, 260))] if f < 10 or f >= 30 else [] for f in range(45)]
    for max_missed, tracks in ((25, 1), (15, 2)):
        tr, _ = _run_tracker(clip, every, max_missed)
        assert len(tr.all_tracks()) == tracks, (every, max_missed)


def test_the_summary_lists_every_track_it_counts(tmp_path):
    from agegender.serving.video import VideoSummary, summary_lines

    tr, _ = _run_tracker(_crossing_clip(), 3)
    tr.update(60, [Face(_box(100, 300), 0.9, np.zeros((5, 2), np.float32))], [(0.7, 40.0)])  # one frame only
    res = VideoSummary(61, 21, tr.all_tracks(), 2.0, False, 0)
    lines = summary_lines(res)
    assert lines[0].endswith(f"{len(res.tracks)} tracks") and len(lines) == 1 + len(res.tracks) == 7, lines
    assert lines[-1] == "track 6: frames 60-60, gender: not settled (1 labelled frame, male so far), age: 40"


def _rendered_crossing(path: str, frames: int = 45) -> dict[str, list]:
    """The same story on real faces (three of t1.jpg's, pasted on grey at 800x480, 25 frames/s): A walks
    right along the top and B left along the bottom at 14 px a frame (fast: half a face between two
    detections at --detect-every 3); C stands in the middle and is away for frames 12-37. Returns each
    person's centre per frame (None while away)."""
    t1 = cv2.imread(wheel_image("t1.jpg"))
    patches = {}
    for name, (x1, y1, x2, y2) in {"A": (59, 259, 165, 399), "B": (466, 269, 576, 417),
                                   "C": (1133, 273, 1224, 398)}.items():
        mx, my = (x2 - x1) // 2, (y2 - y1) // 3
        patch = t1[max(0, y1 - my):y2 + my, max(0, x1 - mx):x2 + mx]
        patches[name] = cv2.resize(patch, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (800, 480))
    centres: dict[str, list] = {"A": [], "B": [], "C": []}
    for f in range(frames):
        frame = np.full((480, 800, 3), 128, np.uint8)
        where = {"A": (80 + 14 * f, 90), "B": (720 - 14 * f, 390), "C": (400, 240) if not 12 <= f < 38 else None}
        for name, centre in where.items():
            centres[name].append(centre)
            if centre is None:
                continue
            p = patches[name]
            x0, y0 = centre[0] - p.shape[1] // 2, centre[1] - p.shape[0] // 2
            frame[y0:y0 + p.shape[0], x0:x0 + p.shape[1]] = p
        out.write(frame)
    out.release()
    return centres


@pytest.mark.parametrize("every", [1, 3])
def test_rendered_crossing_clip_keeps_one_track_per_person(tmp_path, every):
    video, jl = str(tmp_path / "crossing.mp4"), tmp_path / "faces.jsonl"
    centres = _rendered_crossing(video)
    proc = run_script("infer.py", "--video", video, "--jsonl", str(jl), "--detect-every", str(every), check=True)
    people: dict[int, set[str]] = defaultdict(set)
    for row in _lines(jl):
        for f in row["faces"]:
            x1, y1, x2, y2 = f["box"]
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            near = [n for n, c in centres.items() if c[row["frame"]] and np.hypot(cx - c[row["frame"]][0],
                                                                                  cy - c[row["frame"]][1]) < 40]
            assert len(near) == 1, (row["frame"], f["box"])  # every box shown is on a face
            people[f["track"]["id"]].add(near[0])
    assert all(len(p) == 1 for p in people.values()), people
    count = {n: sum(1 for p in people.values() if n in p) for n in centres}
    assert count == {"A": 1, "B": 1, "C": 2}, people  # C was away 26 frames (> 15): a new track
    summary = proc.stdout.strip().splitlines()
    assert summary[0].endswith("4 tracks") and len(summary) == 5, summary


def _white(bgr: np.ndarray) -> int:
    return int((bgr.min(axis=2) > 200).sum())


def test_labels_stay_whole_inside_the_frame_at_every_edge():
    """A face at an edge or corner of a frame (video) or a photo (the annotated image) keeps its whole label:
    as many white text pixels as the same label in the middle, and its band inside the picture."""
    from agegender.serving.analyzer import FaceResult, ImageResult
    from agegender.serving.inference import draw, draw_label
    from agegender.serving.video import draw_tracks
    from agegender.serving.tracking import Track

    w, h, side = 320, 200, 60
    where = {"middle": (130, 70), "top-right": (w - 30, -10), "right": (w - 20, 70), "left": (-30, 70),
             "bottom-left": (-20, h - 40), "top-left": (-20, -20), "bottom": (130, h - 30)}

    def video(x, y):
        t = Track(7, Face(np.array([x, y, x + side, y + side], np.float32), 0.9, np.zeros((5, 2), np.float32)), 0, 0)
        for _ in range(5):
            t.add_label(0.9, 41.0)
        return draw_tracks(np.zeros((h, w, 3), np.uint8), [t])

    def photo(x, y):
        face = Face(np.array([x, y, x + side, y + side], np.float32), 0.9, np.full((5, 2), -50, np.float32))
        return draw(ImageResult("p.jpg", np.zeros((h, w, 3), np.uint8), [FaceResult(face, 0.9, 41.0)]))

    for render in (video, photo):
        whole = _white(render(*where["middle"]))
        assert whole > 50
        for name, (x, y) in where.items():
            assert _white(render(x, y)) >= 0.97 * whole, (render.__name__, name)
    band = draw_label(np.zeros((h, w, 3), np.uint8), "#12 F 41 (35-48)", (w - 10, h - 5, w + 50, h + 55),
                      (0, 0, 255), 2.0)  # wider than a small frame allows at this scale: drawn smaller
    assert 0 <= band[0] and band[2] <= w and 0 <= band[1] and band[3] <= h, band


def test_a_track_keeps_a_copy_of_its_face_s_age_distribution_not_a_view_of_the_batch():
    """face_labels hands each track its own row of P(age > k): a view would pin the whole batch's array
    (every face of the frame, or of several requests) in Track.raw / last for the track's life."""
    from agegender.model.engine import Labels
    from agegender.serving.analyzer import FaceResult
    from agegender.serving.video import face_labels

    probs = np.linspace(1, 0, 3 * 100).reshape(3, 100)
    labels = Labels(np.full(3, 0.5), np.full(3, 30.0), np.full(3, 25.0), np.full(3, 35.0), probs)
    face = Face(np.array([0, 0, 10, 10], np.float32), 0.9, np.zeros((5, 2), np.float32))
    rows = face_labels([FaceResult(face, 0.5, 30.0, 25.0, 35.0) for _ in range(3)], labels)
    for i, row in enumerate(rows):
        assert np.array_equal(row[4], probs[i]) and not np.shares_memory(row[4], probs) and row[4].base is None
