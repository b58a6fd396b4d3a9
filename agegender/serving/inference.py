"""infer.py's output side: which files to read, and the labelled faces (agegender/serving/analyzer.py) printed as lines,
emitted as JSON, or drawn."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import time

import cv2
import numpy as np

from agegender.serving.analyzer import ImageResult
from agegender.atomic import check_writable, is_stream, named, open_output, refuse_inputs, write_atomic
from agegender.errors import UserError
from agegender.data.face import Face

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
WRITABLE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")  # what annotated copies can be


def find_images(specs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Image paths from files, folders (their image files, sorted; sub-folders are not entered, even one
    named `old.jpg`) and globs, and the (spec, reason) of each spec that gives no image."""
    paths: list[str] = []
    problems: list[tuple[str, str]] = []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(p for p in (os.path.join(spec, n) for n in os.listdir(spec))
                           if p.lower().endswith(IMAGE_EXTS) and os.path.isfile(p))
            paths += found
            if not found:
                problems.append((spec, f"no images ({', '.join(IMAGE_EXTS)}) in this folder"))
        elif os.path.isfile(spec):
            paths.append(spec)
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
            paths += found
            if not found:
                problems.append((spec, "no file matches"))
        else:
            problems.append((spec, "not found"))
    return paths, problems


def output_paths(paths: list[str], out_dir: str, suffix: str = "_agegender") -> dict[str, str]:
    """Where each input's annotated copy goes under `out_dir`: its path relative to the inputs' common
    folder, with `suffix` before the extension (`a/photo.jpg` -> `OUT/a/photo_agegender.jpg`). Distinct
    inputs get distinct outputs, and no output is an input."""
    if not paths:
        return {}
    real = [os.path.realpath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(r) for r in real])
    out: dict[str, str] = {}
    taken: set[str] = set()
    for path, r in zip(paths, real):
        if path in out:  # the same file named twice: one copy
            continue
        stem, ext = os.path.splitext(os.path.relpath(r, root))
        # the extension keeps its case (x.jpg and x.JPG are two files); one OpenCV cannot write (GIF) keeps
        # its name and becomes a JPEG: x.gif.jpg
        ext = ext if ext.lower() in WRITABLE_EXTS else ext + ".jpg"
        target, n = os.path.join(out_dir, f"{stem}{suffix}{ext}"), 1
        while os.path.realpath(target) in taken:  # two inputs that still meet (a.gif.jpg and a.gif): numbered
            n += 1
            target = os.path.join(out_dir, f"{stem}{suffix}-{n}{ext}")
        taken.add(os.path.realpath(target))
        out[path] = target
    inputs = set(real)
    clash = [p for p, o in out.items() if os.path.realpath(o) in inputs]
    if clash:
        raise UserError(f"the annotated copy of {clash[0]} would replace an input image; choose another --output-dir")
    refuse_inputs([("--output-dir", o) for o in out.values()], paths)  # hard links too
    return out


def _box(face: Face) -> list[int]:
    return [int(round(float(v))) for v in face.box]


def format_lines(res: ImageResult) -> list[str]:
    """`face 1, box (160, 32, 204, 84), gender: male, age: 30` per face, or the no-face line."""
    if not res.faces:
        return [f"no face found in {res.path}"]
    return [f"face {i}, box ({', '.join(map(str, _box(fr.face)))}), " +
            (f"gender: {fr.gender}, age: {round(fr.age)}" if fr.ok else f"error: {NOT_FINITE}")
            for i, fr in enumerate(res.faces, 1)]


NOT_FINITE = "the model's output for this face is not finite"


def to_json(res: ImageResult) -> dict:
    """{"image", "faces": [{"box", "score", "landmarks", "gender", "gender_prob", "age"}]} for one image;
    gender_prob is the probability of the gender given. An image that failed has "error" and no faces;
    a face whose output was not finite has null labels and an "error"."""
    if res.error:
        return {"image": res.path, "error": res.error, "faces": []}
    faces = []
    for fr in res.faces:
        face = {"box": _box(fr.face), "score": round(float(fr.face.score), 4),
                "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in fr.face.landmarks]}
        if fr.ok:
            face.update(gender=fr.gender, gender_prob=round(max(fr.p_male, 1 - fr.p_male), 4), age=round(fr.age, 1))
        else:
            face.update(gender=None, gender_prob=None, age=None, error=NOT_FINITE)
        faces.append(face)
    return {"image": res.path, "faces": faces}


def dumps_json(docs: list[dict]) -> str:
    """The document for one image (a list of them for several), one face per line."""
    def one(doc: dict) -> str:
        faces = ",\n  ".join(json.dumps(f) for f in doc["faces"])
        error = f', "error": {json.dumps(doc["error"])}' if "error" in doc else ""
        return f'{{"image": {json.dumps(doc["image"])}{error}, "faces": [' + (f"\n  {faces}\n" if faces else "") + "]}"
    return one(docs[0]) if len(docs) == 1 else "[\n" + ",\n".join(one(d) for d in docs) + "\n]"


COLORS_BGR = {"male": (235, 140, 30), "female": (60, 60, 230)}


def draw(res: ImageResult) -> np.ndarray:
    """A BGR copy of the image with boxes, landmarks and `M 30` / `F 31` labels sized to each face."""
    img = cv2.cvtColor(res.image, cv2.COLOR_RGB2BGR)
    h, w = img.shape[:2]
    for fr in res.faces:
        x1, y1, x2, y2 = _box(fr.face)
        side = max(1, min(x2 - x1, y2 - y1))
        color = COLORS_BGR.get(fr.gender, (128, 128, 128))
        thick = max(1, round(side / 50))
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        for x, y in fr.face.landmarks:
            cv2.circle(img, (int(round(float(x))), int(round(float(y)))), max(1, round(side / 35)), (0, 220, 255), -1,
                       cv2.LINE_AA)
        text = f"{fr.gender[0].upper()} {round(fr.age)}" if fr.ok else "?"
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
    """Write an annotated image (format from the extension; JPEG for a device or `-`) atomically."""
    ext = os.path.splitext(path)[1].lower()
    try:
        ok, buf = cv2.imencode(ext if ext in WRITABLE_EXTS else ".jpg", bgr)
    except cv2.error:
        ok = False
    if not ok:
        raise OSError(f"cannot encode {path}")
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, buf.tobytes())


class Outputs:
    """Where infer.py's results go, image by image as they complete: text lines (stdout), one JSON document
    (stdout, at the end), JSON lines (`--jsonl`, flushed per image), annotated copies (`--output FILE`, or
    one per image under `--output-dir`, each written atomically as it completes); `error: PATH: reason` on
    stderr for each image that fails; a summary line and the exit status at the end. Every output is
    checked before the work starts."""

    def __init__(self, paths: list[str], problems: list[tuple[str, str]] = (), text: bool = True,
                 json_doc: bool = False, jsonl: str | None = None, output: str | None = None,
                 output_dir: str | None = None, show: bool = False):
        self.text, self.json_doc, self.show = text, json_doc, show
        self.problems = list(problems)
        self.multi = len(paths) + len(self.problems) > 1
        self.single: str | None = None
        self.targets: dict[str, str] = {}
        if output and output_dir:
            raise UserError("give either --output or --output-dir, not both")
        single = output if output and not os.path.isdir(output) else None
        refuse_inputs([("--jsonl", jsonl), ("--output", single)], paths)
        if jsonl and single and jsonl != "-" and os.path.realpath(jsonl) == os.path.realpath(single):
            raise UserError(f"--jsonl and --output are the same file: {jsonl}")
        if output and len(paths) == 1 and not os.path.isdir(output):
            if os.path.splitext(output)[1].lower() not in WRITABLE_EXTS and not is_stream(output):
                raise UserError(f"--output must end in one of {', '.join(WRITABLE_EXTS)}: {output}")
            check_writable(output, "--output")
            self.single = output
        elif output or output_dir:
            folder = output_dir or output
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise UserError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
            check_writable(os.path.join(folder, "x.jpg"), "into output folder")
            self.targets = output_paths(paths, folder)
        self.jsonl = None
        self.jsonl_path = jsonl
        if jsonl:
            check_writable(jsonl, "--jsonl")
        self._stack = contextlib.ExitStack()
        self.draws = bool(self.single or self.targets or show)
        self.docs: list[dict] = []
        self.shown: list[ImageResult] = []
        self.images = self.faces = self.failures = 0
        self.start = time.perf_counter()
        self.complete = False

    def __enter__(self) -> "Outputs":
        if self.jsonl_path:  # streamed into a temporary file, renamed when the run ends
            self.jsonl = self._stack.enter_context(open_output(self.jsonl_path))
        for spec, reason in self.problems:  # inputs that gave no file: reported first, the run goes on
            self.failed(spec, reason)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.complete = exc_type is None
        # every completed image is in the JSON lines, also after Ctrl-C; a failed write keeps the old file
        self._stack.__exit__(exc_type, exc, tb)
        if self.complete and self.json_doc:
            print(dumps_json(self.docs) if self.docs else "[]", flush=True)
        if self.multi or not self.complete:
            state = "" if self.complete else ", interrupted" if issubclass(exc_type, KeyboardInterrupt) else \
                ", stopped by an error"
            print(f"summary: {self.images} images, {self.faces} faces, {self.failures} failed, "
                  f"{time.perf_counter() - self.start:.1f} s{state}", file=sys.stderr, flush=True)
        if self.complete and self.show:
            self._show()

    def _emit(self, doc: dict) -> None:
        if self.json_doc:
            self.docs.append(doc)
        if self.jsonl is not None:
            try:
                self.jsonl.write(json.dumps(doc) + "\n")
                self.jsonl.flush()
            except OSError as exc:  # a full disk: the one-line error names the output
                raise named(exc, "standard output" if self.jsonl_path == "-" else self.jsonl_path) from None

    def failed(self, path: str, reason: str) -> None:
        """An input that could not be processed: reported, counted, and the run goes on."""
        self.failures += 1
        print(f"error: {path}: {reason}", file=sys.stderr, flush=True)
        self._emit({"image": path, "error": reason, "faces": []})

    def add(self, res: ImageResult) -> None:
        if res.error:
            self.failed(res.path, res.error)
            return
        self.images += 1
        self.faces += len(res.faces)
        broken = sum(not fr.ok for fr in res.faces)
        if broken:  # reported on its own: the image's faces (and boxes) are still emitted
            self.failures += 1
            print(f"error: {res.path}: {NOT_FINITE.replace('this face', f'{broken} face(s)')}", file=sys.stderr)
        if self.text:
            print("\n".join(([f"{res.path}:"] if self.multi else []) + format_lines(res)), flush=True)
        self._emit(to_json(res))
        target = self.single or self.targets.get(res.path)
        if target and res.image is not None:
            try:
                save_image(target, draw(res))
            except OSError as exc:
                self.failed(res.path, f"cannot write the annotated copy {target}: {exc.strerror or exc}")
        if self.show:
            self.shown.append(res)
        else:
            res.image = None  # memory stays bounded over thousands of photos

    def _show(self) -> None:
        try:
            for r in self.shown:
                cv2.imshow(os.path.basename(r.path), draw(r))
            cv2.waitKey(0)
        except cv2.error:
            raise UserError("--show cannot open a window here (no display?); use --output FILE") from None

    def exit_status(self) -> int:
        """0: every image processed; 1: some failed; 2: none could be processed."""
        if not self.failures:
            return 0
        return 1 if self.images else 2


__all__ = ["Outputs", "find_images", "output_paths", "NOT_FINITE", "format_lines", "to_json", "draw", "save_image", "dumps_json", "IMAGE_EXTS"]
