"""Whether a face can be judged at all: too small (box width), too blurred (sharpness of the aligned crop) or
turned too far (the landmarks' yaw). A flagged face is still reported, with its reasons; the thresholds were
chosen by measurement (docs/inference.md, "Quality flag"; tools/quality_report.py).
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from agegender.data.face import Face

# Below these the net's error grows fast (measured on the val splits, tools/quality_report.py):
MIN_WIDTH = 24.0       # box width in pixels of the image
MIN_SHARPNESS = 20.0   # variance of the Laplacian over the aligned crop's inner face (grey, 0-255)
MAX_YAW = 0.45         # nose offset from the eyes' midpoint along the eye line, in eye distances
REASONS = ("small", "blurred", "turned")  # in this order in every output


class Quality(NamedTuple):
    """A face's measures and the reasons it is flagged for (empty: fine)."""

    width: float
    sharpness: float
    yaw: float
    flags: tuple[str, ...]


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the aligned 112x112 RGB crop's inner face (eyes to mouth), grey levels:
    low for a blurred face, and for a tiny one upscaled to 112 px."""
    grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    h, w = grey.shape[:2]
    inner = grey[int(h * 0.3):int(h * 0.9), int(w * 0.2):int(w * 0.8)]  # the template's eyes, nose and mouth
    return float(cv2.Laplacian(inner, cv2.CV_64F).var())


def yaw(landmarks: np.ndarray) -> float:
    """How far the head is turned: the nose's offset from the eyes' midpoint along the eye line, in eye
    distances (0 frontal, about 0.5 near profile; the sign is the side)."""
    lm = np.asarray(landmarks, np.float64)
    eyes = lm[1] - lm[0]
    dist = float(np.hypot(*eyes))
    if dist < 1e-6:
        return float("inf")
    return float(np.dot(lm[2] - (lm[0] + lm[1]) / 2, eyes / dist) / dist)


def face_quality(face: Face, crop: np.ndarray) -> Quality:
    """The measures of one detected face and its aligned 112x112 RGB crop, and its flags."""
    width = float(face.box[2] - face.box[0])
    sharp = sharpness(crop)
    turn = yaw(face.landmarks)
    flags = tuple(r for r, bad in zip(REASONS, (width < MIN_WIDTH, sharp < MIN_SHARPNESS, abs(turn) > MAX_YAW)) if bad)
    return Quality(width, sharp, turn, flags)


__all__ = ["Quality", "face_quality", "sharpness", "yaw", "MIN_WIDTH", "MIN_SHARPNESS", "MAX_YAW", "REASONS"]
