"""infer.py's output side: which files to read, and the labelled faces (utils/analyzer.py) printed as lines,
emitted as JSON, or drawn."""
from __future__ import annotations

import glob
import json
import os

import cv2
import numpy as np

from utils.analyzer import ImageResult
from utils.errors import UserError
from utils.face import Face

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


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


__all__ = ["find_images", "format_lines", "to_json", "draw", "save_image", "dumps_json", "IMAGE_EXTS"]
