"""Faces followed across video frames: IoU matching of each frame's detections to the live tracks
(Hungarian assignment), and per-track smoothing of gender and age so a person's label holds steady."""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class Track:
    """One person while in view. Gender is smoothed as the mean logit of P(male) over the frames where the
    face was labelled, shown once SETTLE frames are in, and with hysteresis (it changes only when the mean
    is clearly on the other side); age as the mean of the decoded ages, and the age distribution (for the
    track's age range) as the mean of its frames' P(age > k)."""

    id: int
    face: Face
    first_frame: int
    last_frame: int
    missed: int = 0
    labelled: int = 0
    logit_sum: float = 0.0
    age_sum: float = 0.0
    shown_male: bool | None = None
    raw: tuple | None = None  # (P(male), age, ...) of the current frame, when labelled in it
    last: tuple | None = None  # (P(male), age, ...) of the last frame it was labelled in
    probs_sum: np.ndarray | None = None  # sum of the labelled frames' P(age > k), when given

    HYSTERESIS = 1.0  # in logit units: the mean must pass P(male) 0.27 / 0.73 to flip the shown gender
    SETTLE = 5        # frames labelled before a gender is shown: one frame's guess is not a person's label

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
    """Assigns each frame's faces to tracks; a track ends after `max_missed` frames without its face."""

    def __init__(self, iou_thresh: float = 0.3, max_missed: int = 15):
        self.iou_thresh, self.max_missed = iou_thresh, max_missed
        self.tracks: list[Track] = []
        self.finished: list[Track] = []
        self._next_id = 1

    def update(self, frame: int, faces: list[Face], labels: list[tuple] | None = None) -> list[Track]:
        """Match this frame's detections to the live tracks (new tracks for the unmatched, missed counts
        for the tracks left over); `labels` (P(male), age, ...) per face feed the smoothing. Returns the tracks
        seen in this frame."""
        from scipy.optimize import linear_sum_assignment

        old = np.array([t.face.box for t in self.tracks], np.float64).reshape(-1, 4)
        new = np.array([f.box for f in faces], np.float64).reshape(-1, 4)
        iou = iou_matrix(old, new)
        rows, cols = linear_sum_assignment(-iou) if iou.size else (np.zeros(0, int), np.zeros(0, int))
        matched: dict[int, int] = {c: r for r, c in zip(rows, cols) if iou[r, c] >= self.iou_thresh}
        seen = []
        for j, face in enumerate(faces):
            if j in matched:
                track = self.tracks[matched[j]]
                track.face, track.last_frame, track.missed = face, frame, 0
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
                t.missed += 1
                t.raw = None
        self.finished += [t for t in self.tracks if t.missed > self.max_missed]
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return seen

    def carry(self, frame: int) -> list[Track]:
        """A frame without detection: the live tracks that were seen in the last detected frame keep their
        boxes, without a new label."""
        live = [t for t in self.tracks if t.missed == 0]
        for t in self.tracks:
            t.raw = None
        for t in live:
            t.last_frame = frame
        return live

    def all_tracks(self) -> list[Track]:
        return sorted(self.finished + self.tracks, key=lambda t: t.id)


__all__ = ["Track", "Tracker", "iou_matrix"]
