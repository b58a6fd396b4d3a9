"""Faces followed across video frames: IoU matching of each frame's detections to where the live tracks
are predicted to be (constant velocity, Hungarian assignment), and per-track smoothing of gender and age so
a person's label holds steady."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from agegender.data.face import Face


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of `a` (N,4) with every box of `b` (M,4), x1 y1 x2 y2."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _nearness(a: np.ndarray, b: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """1 for boxes of `a` (N,4) and `b` (M,4) with one centre and size, falling to 0 at a centre distance of
    `reach` (N,) face widths, times the ratio of their areas: a similarity in IoU's range."""
    ca, cb = (a[:, :2] + a[:, 2:]) / 2, (b[:, :2] + b[:, 2:]) / 2
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    side = np.sqrt(np.clip(area_a, 1e-9, None))
    ratio = np.minimum(area_a[:, None], area_b[None]) / np.maximum(np.maximum(area_a[:, None], area_b[None]), 1e-9)
    dist = np.linalg.norm(ca[:, None] - cb[None], axis=2) / side[:, None]
    return np.clip(1 - dist / np.maximum(reach[:, None], 1e-9), 0, None) * ratio


@dataclass
class Track:
    """One person while in view. Gender is smoothed as the mean logit of P(male) over the frames where the
    face was labelled, shown once SETTLE frames are in, and with hysteresis (it changes only when the mean
    is clearly on the other side); age as the mean of the decoded ages, and the age distribution (for the
    track's age range) as the mean of its frames' P(age > k). Its box moves on between detections at the
    velocity of the last ones, so a moving face is looked for where it is now."""

    id: int
    face: Face          # as shown in the latest frame: the detection, or on a frame between detections its
                        # box moved to where the track predicts it
    first_frame: int
    last_frame: int     # the latest frame it was shown in
    missed: int = 0     # frames since its face was last detected (counted on every frame, detected or not)
    seen_frame: int = -1  # the latest frame its face was detected in
    seen: Face | None = None  # the face detected then
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # box change per frame, smoothed
    detections: int = 1   # frames its face was detected in
    labelled: int = 0
    logit_sum: float = 0.0
    age_sum: float = 0.0
    shown_male: bool | None = None
    raw: tuple | None = None  # (P(male), age, ...) of the current frame, when labelled in it
    last: tuple | None = None  # (P(male), age, ...) of the last frame it was labelled in
    probs_sum: np.ndarray | None = None  # sum of the labelled frames' P(age > k), when given

    HYSTERESIS = 1.0  # in logit units: the mean must pass P(male) 0.27 / 0.73 to flip the shown gender
    SETTLE = 5        # frames labelled before a gender is shown: one frame's guess is not a person's label

    VELOCITY_WEIGHT = 0.6  # weight of the newest displacement in the smoothed velocity

    def __post_init__(self) -> None:
        if self.seen is None:
            self.seen_frame, self.seen = self.first_frame, self.face

    def predict(self, frame: int) -> np.ndarray:
        """The box expected at `frame`: the last detected box moved on at the track's velocity."""
        return np.asarray(self.seen.box, np.float64) + self.velocity * (frame - self.seen_frame)

    def observe(self, frame: int, face: Face) -> None:
        """Its face detected at `frame`: the velocity learns the displacement since the last detection."""
        step = (np.asarray(face.box, np.float64) - self.seen.box) / max(1, frame - self.seen_frame)
        w = 1.0 if self.detections == 1 else self.VELOCITY_WEIGHT  # the first displacement is all it knows
        self.velocity = w * step + (1 - w) * self.velocity
        self.detections += 1
        self.face = self.seen = face
        self.seen_frame = self.last_frame = frame
        self.missed = 0

    def shown_at(self, frame: int) -> Face:
        """Its face as drawn at `frame` without a detection: box and landmarks moved as predicted."""
        box = self.predict(frame)
        shift = (box[:2] + box[2:] - self.seen.box[:2] - self.seen.box[2:]) / 2
        return replace(self.seen, box=box.astype(np.float32),
                       landmarks=(np.asarray(self.seen.landmarks, np.float64) + shift).astype(np.float32))

    def add_label(self, p_male: float, age: float, *extra) -> None:
        """One frame's labels; `extra` as video.py's `face_labels` gives them (age range, flags, and last
        P(age > k), summed into the track's distribution)."""
        if not (np.isfinite(p_male) and np.isfinite(age)):
            return
        p = float(np.clip(p_male, 1e-4, 1 - 1e-4))
        self.logit_sum += np.log(p / (1 - p))
        self.age_sum += age
        self.labelled += 1
        if extra and extra[-1] is not None:
            probs = np.asarray(extra[-1], np.float64)
            self.probs_sum = probs.copy() if self.probs_sum is None else self.probs_sum + probs
        mean = self.logit_sum / self.labelled
        if self.labelled < self.SETTLE:
            return
        if self.shown_male is None:
            self.shown_male = mean >= 0
        elif self.shown_male and mean < -self.HYSTERESIS or not self.shown_male and mean > self.HYSTERESIS:
            self.shown_male = not self.shown_male

    @property
    def p_male(self) -> float:
        """Smoothed P(male): the sigmoid of the mean logit."""
        return float(1 / (1 + np.exp(-self.logit_sum / self.labelled))) if self.labelled else float("nan")

    @property
    def gender(self) -> str | None:
        """The shown gender: None until SETTLE frames are labelled."""
        return None if self.shown_male is None else "male" if self.shown_male else "female"

    @property
    def settled(self) -> bool:
        return self.shown_male is not None

    @property
    def gender_so_far(self) -> str | None:
        """The shown gender once settled, before that the side of the mean so far: never None once labelled."""
        if self.shown_male is not None or not self.labelled:
            return self.gender
        return "male" if self.logit_sum >= 0 else "female"

    @property
    def age(self) -> float:
        return self.age_sum / self.labelled if self.labelled else float("nan")

    @property
    def age_probs(self) -> np.ndarray | None:
        """The smoothed age distribution: the mean P(age > k) over the labelled frames (None without)."""
        return None if self.probs_sum is None or not self.labelled else self.probs_sum / self.labelled


class Tracker:
    """Assigns each frame's faces to tracks; a track ends once `max_missed` frames have passed since its face
    was last detected, whether detection runs on every frame or every k-th (`carry` between)."""

    MAX_STEP = 0.3   # face widths a face may move in a frame, for a track whose velocity is not known yet
    MAX_STEPS = 5    # frames of such a move at most (a young track lost for long is not looked for far away)

    def __init__(self, iou_thresh: float = 0.3, max_missed: int = 15):
        self.iou_thresh, self.max_missed = iou_thresh, max_missed
        self.tracks: list[Track] = []
        self.finished: list[Track] = []
        self._next_id = 1
        self._detected_frame = -1  # the latest frame detection ran on

    def update(self, frame: int, faces: list[Face], labels: list[tuple] | None = None) -> list[Track]:
        """Match this frame's detections to where the live tracks should be now (new tracks for the
        unmatched; the tracks left over count the frames since they were seen, and end past max_missed);
        `labels` (P(male), age, ...) per face feed the smoothing. Returns the tracks seen in this frame."""
        from scipy.optimize import linear_sum_assignment

        # a face missing for more than max_missed frames before this one is not looked for (it ends below)
        live = [t for t in self.tracks if frame - t.seen_frame - 1 <= self.max_missed]
        old = np.array([t.predict(frame) for t in live], np.float64).reshape(-1, 4)
        new = np.array([f.box for f in faces], np.float64).reshape(-1, 4)
        # where it should be now, or (a small face's jittery detections make a noisy velocity) where it was
        # last seen: a track is never lost for having been predicted
        last = np.array([t.seen.box for t in live], np.float64).reshape(-1, 4)
        sim = np.maximum(iou_matrix(old, new), iou_matrix(last, new))
        # a track detected once has no velocity yet: a fast face (a pan, every K-th frame detected) may have
        # left its box, so it is also looked for nearby, at most MAX_STEP face widths a frame away
        young = [i for i, t in enumerate(live) if t.detections == 1]
        if young and len(new):
            reach = np.array([self.MAX_STEP * min(frame - live[i].seen_frame, self.MAX_STEPS) for i in young])
            sim[young] = np.maximum(sim[young], _nearness(old[young], new, reach))
        rows, cols = linear_sum_assignment(-sim) if sim.size else (np.zeros(0, int), np.zeros(0, int))
        matched: dict[int, int] = {c: r for r, c in zip(rows, cols) if sim[r, c] >= self.iou_thresh}
        seen = []
        for j, face in enumerate(faces):
            if j in matched:
                track = live[matched[j]]
                track.observe(frame, face)
            else:
                track = Track(self._next_id, face, frame, frame)
                self._next_id += 1
                self.tracks.append(track)
            track.raw = None
            if labels is not None:
                track.raw = track.last = labels[j]
                track.add_label(*labels[j])
            seen.append(track)
        seen_ids = {t.id for t in seen}
        for t in self.tracks:
            if t.id not in seen_ids:
                t.missed = frame - t.seen_frame
                t.raw = None
        # ended only where detection ran: a frame without detection is not a frame without the face
        self.finished += [t for t in self.tracks if t.missed > self.max_missed]
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        self._detected_frame = frame
        return seen

    def carry(self, frame: int) -> list[Track]:
        """A frame without detection: the tracks seen in the last detected frame, each box moved to where its
        track predicts it, without a new label."""
        live = [t for t in self.tracks if t.seen_frame == self._detected_frame]
        for t in self.tracks:
            t.raw = None
            t.missed = frame - t.seen_frame
        for t in live:
            t.face, t.last_frame = t.shown_at(frame), frame
        return live

    def all_tracks(self) -> list[Track]:
        return sorted(self.finished + self.tracks, key=lambda t: t.id)


__all__ = ["Track", "Tracker", "iou_matrix"]
