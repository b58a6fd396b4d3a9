"""Photo in, labelled faces out: the one code path from an image to gender and age per face (detector,
the same 5-point alignment as create_dataset.py, an engine, the age decoding). infer.py, eval's engine
choice, and any program of yours use it:

    from agegender.serving.analyzer import FaceAnalyzer
    analyzer = FaceAnalyzer.from_options()          # bundled RetinaFace + bundled ONNX model, no MXNet
    for face in analyzer.analyze(rgb):              # rgb: (H,W,3) uint8, RGB order
        print(face.box, face.gender, face.age)
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from agegender.model.age import DEFAULT_DECODE, DEFAULT_FLIP
from agegender.model.engine import Engine
from agegender.model.ensemble import TeacherGender, ensemble_p_male
from agegender.model.loading import load_engine
from agegender.errors import UserError, short_reason
from agegender.data.face import Detector, Face, align_face, load_detector, teacher_chip
from agegender.data.image import MAX_PIXELS, ImageError, read_image


@dataclass
class FaceResult:
    """One labelled face: the detector's box, score and landmarks, P(male) and the decoded age."""

    face: Face
    p_male: float = float("nan")
    age: float = float("nan")

    @property
    def ok(self) -> bool:
        """False when the model's output for this face was not finite (a broken model): no label then."""
        return bool(np.isfinite(self.p_male) and np.isfinite(self.age))

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


@dataclass
class ImageResult:
    path: str
    image: np.ndarray | None  # RGB, orientation applied (None unless kept for drawing)
    faces: list[FaceResult] = field(default_factory=list)
    error: str | None = None  # why the image could not be read or analysed (then no faces)


class FaceCrops(NamedTuple):
    """One face's two crops when the gender ensemble is on: ours (112x112) and the teacher's chip (32x32)."""

    net: np.ndarray
    teacher: np.ndarray


_TIMINGS_LOCK = threading.Lock()


class FaceAnalyzer:
    """A detector and an engine with the settings that turn a photo into labelled faces."""

    def __init__(self, detector: Detector, engine: Engine, age_decode: str = DEFAULT_DECODE, min_face: float = 0.0,
                 flip: bool = DEFAULT_FLIP, batch_size: int = 256, max_pixels: int = MAX_PIXELS,
                 teacher: TeacherGender | None = None):
        """`teacher`: the gender ensemble (P(male) = the mean of ours and the teacher's), off when None."""
        self.detector, self.engine, self.teacher = detector, engine, teacher
        self.age_decode, self.min_face, self.flip, self.batch_size = age_decode, min_face, flip, batch_size
        self.max_pixels = max_pixels
        self._lock = contextlib.nullcontext() if getattr(detector, "thread_safe", False) else threading.Lock()

    @classmethod
    def from_options(cls, model: str | None = None, engine: str | None = None, det_model: str | None = None,
                     det_thresh: float = 0.8, max_size: int = 1280, gpus: str = "", det_threads: int = 1,
                     net_threads: int = 0, gender_ensemble: bool = False, **settings) -> "FaceAnalyzer":
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

    def detect(self, rgb: np.ndarray, det_thresh: float = 0.0, min_face: float | None = None,
               max_faces: int = 0) -> tuple[list[Face], list[np.ndarray]]:
        """Every face at least `min_face` pixels (default: the analyzer's) on its shorter box side, left to
        right, and its aligned 112x112 crop (with the ensemble on, a `FaceCrops` of it and the teacher's
        chip: pass them to `label` as they are). `det_thresh` raises the detector's own threshold for this call;
        `max_faces` (> 0) keeps that many, the highest scores."""
        with self._lock:
            found = self.detector.detect(rgb)
        least = self.min_face if min_face is None else min_face
        faces = [f for f in found if f.score >= det_thresh and min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= least]
        if max_faces > 0:
            faces = sorted(faces, key=lambda f: -f.score)[:max_faces]
        faces.sort(key=lambda f: (float(f.box[0]), float(f.box[1])))
        if self.teacher is not None:
            return faces, [FaceCrops(align_face(rgb, f.landmarks), teacher_chip(rgb, f.landmarks)) for f in faces]
        return faces, [align_face(rgb, f.landmarks) for f in faces]

    def label(self, crops: list) -> tuple[np.ndarray, np.ndarray]:
        """(P(male), age) of what `detect` gave, through the engine in batches (and the teacher's gender
        net, averaged in, for `FaceCrops`)."""
        if not crops:
            return np.zeros(0), np.zeros(0)
        if not isinstance(crops[0], FaceCrops):
            return self.engine.predict_faces(np.stack(crops), self.batch_size, self.age_decode, self.flip)
        if self.teacher is None:
            raise ValueError("FaceCrops given to an analyzer without the gender ensemble")
        p_male, age = self.engine.predict_faces(np.stack([c.net for c in crops]), self.batch_size,
                                                self.age_decode, self.flip)
        return ensemble_p_male(p_male, self.teacher.p_male(np.stack([c.teacher for c in crops]))), age

    def analyze(self, rgb: np.ndarray) -> list[FaceResult]:
        """Every face of one RGB image, left to right, with its gender and age."""
        faces, crops = self.detect(rgb)
        p_male, age = self.label(crops)
        return [FaceResult(f, float(p), float(a)) for f, p, a in zip(faces, p_male, age)]

    # --- many images --------------------------------------------------------------------------------------
    def _prepare(self, path: str, timings: dict) -> tuple[np.ndarray | None, list[Face], list[np.ndarray], str | None]:
        """(image, faces, crops, None), or (None, [], [], why) for a file that cannot be used."""
        t0 = time.perf_counter()
        try:
            rgb = read_image(path, self.max_pixels)
        except ImageError as exc:
            return None, [], [], exc.describe()
        except OSError as exc:  # unreadable: permissions, I/O errors
            return None, [], [], exc.strerror or str(exc)
        t1 = time.perf_counter()
        try:
            faces, crops = self.detect(rgb)
        except Exception as exc:  # noqa: BLE001 -- one image the detector cannot handle costs that image only
            return None, [], [], f"detection failed: {short_reason(exc)}"
        t2 = time.perf_counter()
        with _TIMINGS_LOCK:  # summed over threads: CPU-side seconds; alignment is inside detect's share
            timings["read"] = timings.get("read", 0.0) + t1 - t0
            timings["detect+align"] = timings.get("detect+align", 0.0) + t2 - t1
        return rgb, faces, crops, None

    def _label_group(self, group: list[tuple[ImageResult, list[np.ndarray]]], timings: dict) -> list[ImageResult]:
        t0 = time.perf_counter()
        p_male, age = self.label([c for _, crops in group for c in crops])
        i = 0
        for res, _ in group:
            for fr in res.faces:
                fr.p_male, fr.age = float(p_male[i]), float(age[i])
                i += 1
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


__all__ = ["FaceAnalyzer", "FaceCrops", "FaceResult", "ImageResult"]
