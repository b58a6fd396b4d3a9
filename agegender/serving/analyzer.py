"""Photo in, labelled faces out: the one code path from an image to gender and age per face (detector,
the same 5-point alignment as create_dataset.py, an engine, the age decoding). infer.py, eval's engine
choice, and any program of yours use it:

    from agegender import FaceAnalyzer
    analyzer = FaceAnalyzer.from_options()          # bundled RetinaFace + bundled ONNX model, no MXNet
    for face in analyzer.analyze("photo.jpg"):      # a path, bytes, a PIL image or an RGB array
        print(face.box, face.gender, face.age)
    analyzer.analyze(cv2.imread("photo.jpg"), bgr=True)   # OpenCV's BGR order only when said so
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Union

import numpy as np

from agegender.model.age import DEFAULT_AGE_LEVEL, DEFAULT_DECODE, age_range, check_level
from agegender.model.engine import Engine, Labels
from agegender.model.ensemble import DEFAULT_GENDER_ENSEMBLE, TeacherGender, ensemble_p_male
from agegender.model.loading import load_engine
from agegender.errors import UserError, short_reason
from agegender.data.face import Detector, Face, align_face, load_detector, teacher_chip
from agegender.data.image import MAX_PIXELS, MISSING, ImageError, decode_image, read_image
from agegender.data.quality import face_quality
from agegender.schema import SCHEMA_VERSION

ImageInput = Union[np.ndarray, str, Path, bytes, bytearray, memoryview, Any]  # Any: a PIL image
EXPECTED = "an RGB uint8 array (H,W,3), a path (str or pathlib.Path), encoded image bytes, or a PIL image"


def to_rgb(image: ImageInput, bgr: bool = False, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any accepted image as an RGB uint8 (H,W,3) array, converted as infer.py converts files: grey becomes
    3 channels, an alpha channel is dropped, 16-bit is scaled to 8-bit. A bare array is taken as RGB;
    `bgr=True` says it is in OpenCV's BGR order (arrays only: files, bytes and PIL images carry their own).
    TypeError / ValueError (one line) for anything else (a truncated PIL image included); FileNotFoundError
    for a missing path."""
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, bgr)
    if bgr:
        raise ValueError(f"bgr=True applies to arrays only; a {type(image).__name__} is decoded in RGB")
    try:
        if isinstance(image, (str, Path)):
            return read_image(str(image), max_pixels)
        if isinstance(image, (bytes, bytearray, memoryview)):
            return decode_image(bytes(image), max_pixels)
    except ImageError as exc:
        if exc.reason == MISSING:
            raise FileNotFoundError(f"image not found: {image}") from None
        what = image if isinstance(image, (str, Path)) else f"{len(image)} bytes"
        raise ValueError(f"cannot use the image ({what}): {exc.describe()}") from None
    if hasattr(image, "mode") and hasattr(image, "convert"):  # a PIL image, without importing Pillow for the test
        try:  # an opened file is decoded here: a truncated or damaged one fails as undecodable bytes do
            if image.mode.startswith("I;16"):
                return _array_to_rgb(np.asarray(image).astype(np.uint16), False)
            return np.asarray(image.convert("RGB"))
        except (OSError, SyntaxError, EOFError) as exc:  # what Pillow's decoders raise
            raise ValueError(f"cannot use the image (PIL {image.mode} {image.size[0]}x{image.size[1]}): "
                             f"{short_reason(exc)}") from None
    raise TypeError(f"analyze() takes {EXPECTED}, or a list of them; got {type(image).__name__}")


def _array_to_rgb(a: np.ndarray, bgr: bool) -> np.ndarray:
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)  # as OpenCV reads a 16-bit file for infer.py
    elif a.dtype != np.uint8:
        raise TypeError(f"the image array must be uint8 (or uint16), 0-255; got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if a.ndim != 3 or a.shape[2] not in (3, 4) or min(a.shape[:2]) < 1:
        raise ValueError(f"the image array must be (H,W,3) RGB, (H,W,4) RGBA or (H,W) grey; got shape {a.shape}")
    a = a[..., :3]  # alpha dropped, as for files
    return np.ascontiguousarray(a[..., ::-1] if bgr else a)


@dataclass
class FaceResult:
    """One labelled face: the detector's box, score and landmarks, P(male), the decoded age and its
    calibrated range (`age_low`..`age_high`, whole years, at the analyzer's `age_level`), the quality
    `flags` (reasons from agegender.data.quality.REASONS; empty: fine) and `index`, its number in the image
    (1 = leftmost reported face), as in every output."""

    face: Face
    p_male: float = float("nan")
    age: float = float("nan")
    age_low: float = float("nan")
    age_high: float = float("nan")
    flags: tuple[str, ...] = ()
    index: int = 1

    @property
    def ok(self) -> bool:
        """False when the model's output for this face was not finite (a broken model): no label then."""
        return bool(np.isfinite(self.p_male) and np.isfinite(self.age))

    @property
    def age_range(self) -> tuple[int, int] | None:
        """(low, high) whole years, the true age inside for the level's share of faces; None without labels."""
        if not (self.ok and np.isfinite(self.age_low) and np.isfinite(self.age_high)):
            return None
        return int(self.age_low), int(self.age_high)

    @property
    def flagged(self) -> bool:
        """Too small, blurred or turned to judge well (see `flags`)."""
        return bool(self.flags)

    @property
    def gender(self) -> str | None:
        return None if not self.ok else "male" if self.p_male >= 0.5 else "female"

    @property
    def box(self) -> np.ndarray:
        return self.face.box

    @property
    def score(self) -> float:
        return self.face.score

    @property
    def landmarks(self) -> np.ndarray:
        return self.face.landmarks

    def to_dict(self) -> dict:
        """The schema's face object (agegender/schema/face.schema.json): box, score, landmarks, gender,
        p_male, age; the labels are null, with an `error`, when the model's output was not finite."""
        return face_dict(self.face, self.p_male, self.age, self.index, self.age_range, self.flags)


NOT_FINITE = "the model's output for this face is not finite"


def face_dict(face: Face, p_male: float | None, age: float | None, index: int = 1,
              age_range: tuple[float, float] | None = None, flags: tuple[str, ...] = ()) -> dict:
    """The schema's face object for a detection and its labels (None or not finite: null labels + error):
    face (its 1-based number in the image), box, score, landmarks, gender, p_male, age, age_low, age_high,
    flags."""
    out = {"face": int(index), "box": [int(round(float(v))) for v in face.box], "score": round(float(face.score), 4),
           "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in face.landmarks]}
    if p_male is not None and age is not None and np.isfinite(p_male) and np.isfinite(age):
        low, high = age_range if age_range is not None else (None, None)
        out.update(gender="male" if p_male >= 0.5 else "female", p_male=round(float(p_male), 4),
                   age=round(float(age), 1), age_low=None if low is None else int(low),
                   age_high=None if high is None else int(high))
    else:
        out.update(gender=None, p_male=None, age=None, age_low=None, age_high=None, error=NOT_FINITE)
    out["flags"] = list(flags)
    return out


def age_text(age: float, age_range: tuple[int, int] | None) -> str:
    """`24 (19-31)`: the age and its range, as the page, the annotated image and the text lines show it."""
    return f"{round(age)}" + (f" ({age_range[0]}-{age_range[1]})" if age_range else "")


@dataclass
class ImageResult:
    path: str
    image: np.ndarray | None  # RGB, orientation applied (None unless kept for drawing)
    faces: list[FaceResult] = field(default_factory=list)
    error: str | None = None  # why the image could not be read or analysed (then no faces)

    def to_dict(self) -> dict:
        """The schema's image object: {"schema_version", "image", "faces": [face objects]}, or
        {"schema_version", "image", "error", "faces": []}."""
        if self.error:
            return {"schema_version": SCHEMA_VERSION, "image": self.path, "error": self.error, "faces": []}
        return {"schema_version": SCHEMA_VERSION, "image": self.path, "faces": [fr.to_dict() for fr in self.faces]}


class FaceCrops(NamedTuple):
    """One face's two crops when the gender ensemble is on: ours (112x112) and the teacher's chip (32x32)."""

    net: np.ndarray
    teacher: np.ndarray


def _net_crop(crop) -> np.ndarray:
    """Our net's 112x112 crop of what `crops` gave for a face."""
    return crop.net if isinstance(crop, FaceCrops) else crop


_TIMINGS_LOCK = threading.Lock()


class FaceAnalyzer:
    """A detector and an engine with the settings that turn a photo into labelled faces."""

    def __init__(self, detector: Detector, engine: Engine, age_decode: str = DEFAULT_DECODE, min_face: float = 0.0,
                 flip: bool | None = None, batch_size: int = 256, max_pixels: int = MAX_PIXELS,
                 teacher: TeacherGender | None = None, age_level: float = DEFAULT_AGE_LEVEL,
                 drop_flagged: bool = False):
        """`teacher`: the gender ensemble (P(male) = ours mixed with the teacher's at the engine's `teacher_weight`), off when None;
        `flip`: average each face's outputs with its mirror image's (None: the model's own default,
        `Engine.default_flip`); `age_level`: the share of faces whose true age the age range holds;
        `drop_flagged`: leave out the faces the quality flag marks (too small, blurred or turned), as
        `min_face` leaves out small ones."""
        self.detector, self.engine, self.teacher = detector, engine, teacher
        self.age_level, self.drop_flagged = check_level(age_level), drop_flagged
        self.age_decode, self.min_face, self.batch_size = age_decode, min_face, batch_size
        self.flip = flip if engine is None else engine.resolve_flip(flip)  # None: a detector-only Ray actor
        self.max_pixels = max_pixels
        self._lock = contextlib.nullcontext() if getattr(detector, "thread_safe", False) else threading.Lock()

    @classmethod
    def from_options(cls, model: str | None = None, engine: str | None = None, det_model: str | None = None,
                     det_thresh: float = 0.8, max_size: int = 1280, gpus: str = "", det_threads: int = 1,
                     net_threads: int = 0, gender_ensemble: bool = DEFAULT_GENDER_ENSEMBLE,
                     **settings) -> "FaceAnalyzer":
        """Load the detector (bundled RetinaFace, or an InsightFace ONNX file) and the engine
        (`agegender.model.loading.load_engine`); `gender_ensemble` also loads the bundled teacher gender
        net (`agegender.model.ensemble`); `settings` are the constructor's keywords."""
        try:
            detector = load_detector(det_model, thresh=det_thresh, max_size=max_size, threads=det_threads)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 -- insightface and onnxruntime raise their own types
            raise UserError(f"cannot load detector {det_model}: {short_reason(exc)}") from None
        teacher = TeacherGender(threads=net_threads) if gender_ensemble else None
        return cls(detector, load_engine(model, engine, gpus, net_threads), teacher=teacher, **settings)

    def find(self, rgb: np.ndarray, det_thresh: float = 0.0, min_face: float | None = None) -> list[Face]:
        """Every face at least `min_face` pixels (default: the analyzer's) on its shorter box side, scoring at
        least `det_thresh` (which raises the detector's own threshold for this call)."""
        with self._lock:
            found = self.detector.detect(rgb)
        least = self.min_face if min_face is None else min_face
        return [f for f in found if f.score >= det_thresh and min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= least]

    def keep(self, rgb: np.ndarray, faces: list[Face], max_faces: int = 0) -> tuple[list[Face], list]:
        """The `max_faces` (> 0) best-scoring of `faces` (all with 0), left to right, and their crops."""
        if max_faces > 0:
            faces = sorted(faces, key=lambda f: -f.score)[:max_faces]
        faces = sorted(faces, key=lambda f: (float(f.box[0]), float(f.box[1])))
        crops = self.crops(rgb, faces)
        if self.drop_flagged:
            keep = [not face_quality(f, _net_crop(c)).flags for f, c in zip(faces, crops)]
            faces, crops = [f for f, k in zip(faces, keep) if k], [c for c, k in zip(crops, keep) if k]
        return faces, crops

    def crops(self, rgb: np.ndarray, faces: list[Face]) -> list:
        """The aligned 112x112 crop of each face (with the ensemble on, a `FaceCrops` of it and the teacher's
        chip: pass them to `label` as they are)."""
        if self.teacher is not None:
            return [FaceCrops(align_face(rgb, f.landmarks), teacher_chip(rgb, f.landmarks)) for f in faces]
        return [align_face(rgb, f.landmarks) for f in faces]

    def detect(self, rgb: np.ndarray, det_thresh: float = 0.0, min_face: float | None = None,
               max_faces: int = 0) -> tuple[list[Face], list]:
        """The faces of `find`, `max_faces` (> 0) of them kept as `keep` does, and their crops (see `crops`)."""
        return self.keep(rgb, self.find(rgb, det_thresh, min_face), max_faces)

    def label(self, crops: list) -> tuple[np.ndarray, np.ndarray]:
        """(P(male), age) of what `detect` gave (see `labels` for the rest)."""
        out = self.labels(crops)
        return out.p_male, out.age

    def labels(self, crops: list) -> Labels:
        """The `Labels` of what `detect` gave: P(male), age, the age range at `age_level`, P(age > k); through
        the engine in batches (and the teacher's gender net, mixed in at the engine's `teacher_weight`, for `FaceCrops`)."""
        if crops and isinstance(crops[0], FaceCrops) and self.teacher is None:
            raise ValueError("FaceCrops given to an analyzer without the gender ensemble")
        net = np.stack([_net_crop(c) for c in crops]) if crops else np.zeros((0, 112, 112, 3), np.uint8)
        out = self.engine.predict_labels(net, self.batch_size, self.age_decode, self.flip, self.age_level)
        if crops and isinstance(crops[0], FaceCrops):
            teacher = self.teacher.p_male(np.stack([c.teacher for c in crops]))
            out = out._replace(p_male=ensemble_p_male(out.p_male, teacher, self.engine.teacher_weight))
        return out

    def range_of(self, probs: np.ndarray, age: float) -> tuple[int, int]:
        """The calibrated age range at `age_level` of one P(age > k) row (a video track's mean of them), shown
        with `age`."""
        low, high = age_range(np.asarray(probs)[None], self.age_level, self.engine.age_widening, np.array([age]))
        return int(low[0]), int(high[0])

    def results(self, faces: list[Face], crops: list, labels: Labels | None = None, start: int = 0) -> list[FaceResult]:
        """`FaceResult`s of faces, their crops and their `labels` rows from `start` (None: unlabelled),
        numbered from 1 in the given (left-to-right) order, with their quality flags."""
        out = []
        for k, (f, c) in enumerate(zip(faces, crops)):
            fr = FaceResult(f, flags=face_quality(f, _net_crop(c)).flags, index=k + 1)
            if labels is not None:
                i = start + k
                fr.p_male, fr.age = float(labels.p_male[i]), float(labels.age[i])
                fr.age_low, fr.age_high = float(labels.age_low[i]), float(labels.age_high[i])
            out.append(fr)
        return out

    def analyze(self, image: ImageInput | list[ImageInput], bgr: bool = False) -> list:
        """Every face of an image, left to right, with its gender and age: a list of FaceResult.

        `image`: an RGB uint8 (H,W,3) array -- a bare array is always taken as RGB; pass `bgr=True` for
        OpenCV's `cv2.imread` order -- or a path (str / pathlib.Path), encoded bytes, or a PIL image. Grey,
        RGBA and 16-bit arrays are converted as infer.py converts files. A list (or tuple) of images gives
        a list of such lists, the faces of all images labelled together in batches.
        Raises TypeError / ValueError (one line) for anything else, FileNotFoundError for a missing path."""
        if isinstance(image, (list, tuple)):
            rgbs = [to_rgb(im, bgr, self.max_pixels) for im in image]
        else:
            rgbs = [to_rgb(image, bgr, self.max_pixels)]
        found = [self.detect(rgb) for rgb in rgbs]
        labels = self.labels([c for _, crops in found for c in crops])
        out, i = [], 0
        for faces, crops in found:
            out.append(self.results(faces, crops, labels, i))
            i += len(faces)
        return out if isinstance(image, (list, tuple)) else out[0]

    # --- many images --------------------------------------------------------------------------------------
    def prepare(self, path: str) -> tuple[np.ndarray | None, list[Face], list[np.ndarray], str | None]:
        """Read, detect and align one file (the first half of `analyze_paths`, for callers that run the net
        elsewhere, as the Ray batch does): (image, faces, crops, None), or (None, [], [], why)."""
        return self._prepare(path, {})

    def _prepare(self, path: str, timings: dict) -> tuple[np.ndarray | None, list[Face], list[np.ndarray], str | None]:
        """(image, faces, crops, None), or (None, [], [], why) for a file that cannot be used."""
        t0 = time.perf_counter()
        try:
            rgb = read_image(path, self.max_pixels)
        except ImageError as exc:
            return None, [], [], exc.describe()
        except OSError as exc:  # unreadable: permissions, I/O errors
            return None, [], [], exc.strerror or str(exc)
        except MemoryError:  # one file must not cost the others' results
            return None, [], [], "out of memory while reading this image"
        except Exception as exc:  # noqa: BLE001 -- a decoder's own error types: this file's error only
            return None, [], [], f"cannot read: {short_reason(exc)}"
        t1 = time.perf_counter()
        try:
            faces, crops = self.detect(rgb)
        except MemoryError:
            return None, [], [], "out of memory while detecting faces in this image"
        except Exception as exc:  # noqa: BLE001 -- one image the detector cannot handle costs that image only
            return None, [], [], f"detection failed: {short_reason(exc)}"
        t2 = time.perf_counter()
        with _TIMINGS_LOCK:  # summed over threads: CPU-side seconds; alignment is inside detect's share
            timings["read"] = timings.get("read", 0.0) + t1 - t0
            timings["detect+align"] = timings.get("detect+align", 0.0) + t2 - t1
        return rgb, faces, crops, None

    def _label_group(self, group: list[tuple[ImageResult, list[np.ndarray]]], timings: dict) -> list[ImageResult]:
        t0 = time.perf_counter()
        labels = self.labels([c for _, crops in group for c in crops])
        i = 0
        for res, crops in group:
            res.faces = self.results([fr.face for fr in res.faces], crops, labels, i)
            i += len(crops)
        with _TIMINGS_LOCK:
            timings["net"] = timings.get("net", 0.0) + time.perf_counter() - t0
        return [res for res, _ in group]

    def analyze_paths(self, paths: Iterable[str], keep_images: bool = False, timings: dict | None = None,
                      threads: int = 0) -> Iterator[ImageResult]:
        """Results of many image files, in input order, as they complete; a file that cannot be read or
        analysed gives a result with `error` set and the run goes on. Images are read, detected and
        aligned on `threads` threads (0 = one per core), a bounded number ahead; their faces go to the
        engine in batches of `batch_size` on its own thread while the next images are detected.
        `keep_images`: keep each decoded image (for drawing). `timings` accumulates seconds per stage."""
        t = timings if timings is not None else {}
        threads = threads or os.cpu_count() or 1
        todo = iter(paths)
        ahead: deque = deque()
        inflight: deque = deque()
        group: list[tuple[ImageResult, list[np.ndarray]]] = []
        waiting = 0
        with ThreadPoolExecutor(max_workers=threads) as pool, ThreadPoolExecutor(max_workers=1) as net:
            def refill() -> None:
                while len(ahead) < 2 * threads:
                    path = next(todo, None)
                    if path is None:
                        return
                    ahead.append((path, pool.submit(self._prepare, path, t)))

            refill()
            while ahead:
                path, fut = ahead.popleft()
                rgb, faces, crops, error = fut.result()
                refill()
                group.append((ImageResult(path, rgb if keep_images else None, [FaceResult(f) for f in faces], error),
                              crops))
                waiting += len(crops)
                if waiting >= self.batch_size:
                    inflight.append(net.submit(self._label_group, group, t))
                    group, waiting = [], 0
                while inflight and inflight[0].done():
                    yield from inflight.popleft().result()
            if group:
                inflight.append(net.submit(self._label_group, group, t))
            while inflight:
                yield from inflight.popleft().result()


__all__ = ["FaceAnalyzer", "FaceCrops", "FaceResult", "ImageResult", "face_dict", "age_text", "to_rgb", "NOT_FINITE", "EXPECTED"]
