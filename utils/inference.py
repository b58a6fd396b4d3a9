"""infer.py's logic: every face of each image found, aligned exactly as create_dataset.py aligns them,
run through the attribute net as one batch, then printed, drawn or emitted as JSON."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from utils.errors import UserError
from utils.face import Detector, Face, align_face
from utils.image import ImageError, read_image
from utils.predict import Predictor

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class FaceResult:
    face: Face
    p_male: float = float("nan")
    age: float = float("nan")

    @property
    def gender(self) -> str:
        return "male" if self.p_male >= 0.5 else "female"


@dataclass
class ImageResult:
    path: str
    image: np.ndarray | None  # RGB, orientation applied (None unless kept for drawing)
    faces: list[FaceResult] = field(default_factory=list)


def find_images(specs: list[str]) -> list[str]:
    """Paths from files, folders (their images, sorted) and globs; UserError for what matches nothing."""
    paths: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(os.path.join(spec, n) for n in os.listdir(spec) if n.lower().endswith(IMAGE_EXTS))
            if not found:
                raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) in folder {spec}")
            paths += found
        elif os.path.isfile(spec):
            paths.append(spec)
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
            if not found:
                raise UserError(f"no file matches {spec}")
            paths += found
        else:
            raise UserError(f"image not found: {spec}")
    return paths


def load_image(path: str) -> np.ndarray:
    """RGB uint8 (EXIF orientation applied, grey/RGBA/16-bit converted); UserError when unreadable."""
    try:
        return read_image(path)
    except ImageError as exc:
        raise UserError(f"cannot read {path}: {exc.reason.replace('_', ' ')}") from None


def detect_faces(detector: Detector, rgb: np.ndarray, min_face: float = 0.0) -> list[Face]:
    """Every face at least `min_face` pixels on its shorter box side, left to right."""
    faces = [f for f in detector.detect(rgb) if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= min_face]
    return sorted(faces, key=lambda f: (float(f.box[0]), float(f.box[1])))


_TIMINGS_LOCK = threading.Lock()


def _prepare(path: str, detector: Detector, min_face: float, lock: threading.Lock | None,
             timings: dict) -> tuple[np.ndarray, list[Face], list[np.ndarray]]:
    t0 = time.perf_counter()
    rgb = load_image(path)
    t1 = time.perf_counter()
    with lock or contextlib.nullcontext():
        faces = detect_faces(detector, rgb, min_face)
    t2 = time.perf_counter()
    crops = [align_face(rgb, f.landmarks) for f in faces]
    t3 = time.perf_counter()
    with _TIMINGS_LOCK:  # summed over threads: CPU-side seconds
        for key, dt in (("read", t1 - t0), ("detect", t2 - t1), ("align", t3 - t2)):
            timings[key] = timings.get(key, 0.0) + dt
    return rgb, faces, crops


def analyse(paths: list[str], detector: Detector, predictor: Predictor, min_face: float = 0.0,
            age_decode: str = "prob", batch_size: int = 256, timings: dict | None = None,
            keep_images: bool = True, threads: int = 0) -> list[ImageResult]:
    """Detect and align the faces of every image (`threads` images at a time; 0 = one per core) and run
    the faces of all images through the net in batches of `batch_size`; each full batch goes to the net
    while the next images are still being detected. `keep_images`: keep each decoded image for drawing.
    `timings` (if given) accumulates seconds spent in read, detect, align and net."""
    t = timings if timings is not None else {}
    lock = None if getattr(detector, "thread_safe", False) else threading.Lock()
    threads = threads or os.cpu_count() or 1
    results, pending, batches = [], [], []

    def run_net(crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        out = predictor.predict_faces(np.stack(crops), batch_size=batch_size, age_decode=age_decode)
        with _TIMINGS_LOCK:
            t["net"] = t.get("net", 0.0) + time.perf_counter() - t0
        return out

    with ThreadPoolExecutor(max_workers=min(threads, max(1, len(paths)))) as pool, \
            ThreadPoolExecutor(max_workers=1) as net:
        # map keeps the input order; a bad image raises here, as UserError, before any output
        for path, (rgb, faces, face_crops) in zip(paths, pool.map(
                lambda p: _prepare(p, detector, min_face, lock, t), paths)):
            results.append(ImageResult(path, rgb if keep_images else None, [FaceResult(f) for f in faces]))
            pending += face_crops
            if len(pending) >= batch_size:
                batches.append(net.submit(run_net, pending[:batch_size]))
                pending = pending[batch_size:]
        if pending:
            batches.append(net.submit(run_net, pending))
        outs = [b.result() for b in batches]
    p_male = np.concatenate([o[0] for o in outs]) if outs else np.zeros(0)
    age = np.concatenate([o[1] for o in outs]) if outs else np.zeros(0)
    i = 0
    for res in results:
        for fr in res.faces:
            fr.p_male, fr.age = float(p_male[i]), float(age[i])
            i += 1
    return results


def _box(face: Face) -> list[int]:
    return [int(round(float(v))) for v in face.box]


def format_lines(res: ImageResult) -> list[str]:
    """`face 1, box (160, 32, 204, 84), gender: male, age: 30` per face, or the no-face line."""
    if not res.faces:
        return [f"no face found in {res.path}"]
    return [f"face {i}, box ({', '.join(map(str, _box(fr.face)))}), gender: {fr.gender}, age: {round(fr.age)}"
            for i, fr in enumerate(res.faces, 1)]


def to_json(res: ImageResult) -> dict:
    """{"image", "faces": [{"box", "score", "landmarks", "gender", "gender_prob", "age"}]} for one image;
    gender_prob is the probability of the gender given."""
    return {"image": res.path, "faces": [
        {"box": _box(fr.face), "score": round(float(fr.face.score), 4),
         "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in fr.face.landmarks],
         "gender": fr.gender, "gender_prob": round(max(fr.p_male, 1 - fr.p_male), 4), "age": round(fr.age, 1)}
        for fr in res.faces]}


def dumps_json(docs: list[dict]) -> str:
    """The document for one image (a list of them for several), one face per line."""
    def one(doc: dict) -> str:
        faces = ",\n  ".join(json.dumps(f) for f in doc["faces"])
        return f'{{"image": {json.dumps(doc["image"])}, "faces": [' + (f"\n  {faces}\n" if faces else "") + "]}"
    return one(docs[0]) if len(docs) == 1 else "[\n" + ",\n".join(one(d) for d in docs) + "\n]"


COLORS_BGR = {"male": (235, 140, 30), "female": (60, 60, 230)}


def draw(res: ImageResult) -> np.ndarray:
    """A BGR copy of the image with boxes, landmarks and `M 30` / `F 31` labels sized to each face."""
    img = cv2.cvtColor(res.image, cv2.COLOR_RGB2BGR)
    h, w = img.shape[:2]
    for fr in res.faces:
        x1, y1, x2, y2 = _box(fr.face)
        side = max(1, min(x2 - x1, y2 - y1))
        color = COLORS_BGR[fr.gender]
        thick = max(1, round(side / 50))
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        for x, y in fr.face.landmarks:
            cv2.circle(img, (int(round(float(x))), int(round(float(y)))), max(1, round(side / 35)), (0, 220, 255), -1,
                       cv2.LINE_AA)
        text = f"{fr.gender[0].upper()} {round(fr.age)}"
        scale = float(np.clip(side / 70, 0.4, 3.0))  # legible on 20 px faces and on 500 px ones
        tthick = max(1, round(scale * 1.5))
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, tthick)
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else min(h - 1, y2 + th + 4)  # above the box, else below
        tx = min(max(0, x1), max(0, w - tw - 2))
        cv2.rectangle(img, (tx, ty - th - base), (tx + tw + 2, ty + base // 2), color, -1)
        cv2.putText(img, text, (tx + 1, ty - base // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), tthick,
                    cv2.LINE_AA)
    return img


def save_image(path: str, bgr: np.ndarray) -> None:
    """Write an annotated image (format from the extension) through a temporary name."""
    ext = os.path.splitext(path)[1].lower() or ".jpg"
    if ext not in IMAGE_EXTS:
        raise UserError(f"--output must end in one of {', '.join(IMAGE_EXTS)}: {path}")
    ok, buf = cv2.imencode(ext, bgr)
    if not ok:
        raise UserError(f"cannot encode {path}")
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    from utils.atomic import write_atomic

    write_atomic(path, buf.tobytes())


__all__ = ["find_images", "load_image", "detect_faces", "analyse", "format_lines", "to_json", "draw", "save_image",
           "dumps_json", "FaceResult", "ImageResult", "IMAGE_EXTS"]
