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

from agegender.serving.analyzer import NOT_FINITE, ImageResult, age_text
from agegender.atomic import (check_writable, is_stream, named, open_output, refuse_inputs, refuse_same_outputs,
                              write_atomic)
from agegender.errors import UserError
from agegender.schema import CSV_COLUMNS
from agegender.data.face import Face

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
WRITABLE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")  # what annotated copies can be


def find_images(specs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Image paths from files, folders (their image files, sorted; sub-folders are not entered, even one
    named `old.jpg`) and globs, and the (spec, reason) of each spec that gives no image. A file reached
    twice (a folder and an overlapping glob, a link and its target) is analysed once, where first named."""
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
    seen: set[str] = set()
    unique = []
    for path in paths:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append(path)
    return unique, problems


def output_paths(paths: list[str], out_dir: str, suffix: str = "_agegender",
                 others: list[str] = ()) -> dict[str, str]:
    """Where each input's annotated copy goes under `out_dir`: its path relative to the inputs' common
    folder, with `suffix` before the extension (`a/photo.jpg` -> `OUT/a/photo_agegender.jpg`). Distinct
    inputs get distinct outputs, and no output is an input (an image, or one of the `others`: the model's
    files)."""
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
    refuse_inputs([("--output-dir", o) for o in out.values()], paths + list(others))  # hard links too
    return out


def _box(face: Face) -> list[int]:
    return [int(round(float(v))) for v in face.box]


def format_lines(res: ImageResult) -> list[str]:
    """`face 1, box (160, 32, 204, 84), gender: male, age: 30 (25-36)` per face (a flagged face ends with
    `, low quality: small, blurred`), or the no-face line."""
    if not res.faces:
        return [f"no face found in {res.path}"]
    return [f"face {fr.index}, box ({', '.join(map(str, _box(fr.face)))}), " +
            (f"gender: {fr.gender}, age: {age_text(fr.age, fr.age_range)}" if fr.ok else f"error: {NOT_FINITE}") +
            (f", low quality: {', '.join(fr.flags)}" if fr.flags else "")
            for fr in res.faces]


def to_json(res: ImageResult) -> dict:
    """The schema's image object (`ImageResult.to_dict`): {"schema_version", "image", "faces": [{"face", "box",
    "score", "landmarks", "gender", "p_male", "age", "age_low", "age_high", "flags"}]}; a failed image has
    "error" and no faces."""
    return res.to_dict()


def dumps_json(docs: list[dict]) -> str:
    """`--json`: always a list of image objects, whatever the number of inputs, one face per line."""
    def one(doc: dict) -> str:
        faces = ",\n  ".join(json.dumps(f) for f in doc["faces"])
        error = f', "error": {json.dumps(doc["error"])}' if "error" in doc else ""
        return (f'{{"schema_version": {doc["schema_version"]}, "image": {json.dumps(doc["image"])}{error}, "faces": ['
                + (f"\n  {faces}\n" if faces else "") + "]}")
    return "[\n" + ",\n".join(one(d) for d in docs) + "\n]" if docs else "[]"


def csv_rows(doc: dict) -> list[dict]:
    """`--csv` rows of one image object: one per face; an image without faces, or a failed input, is one
    row with empty face columns (and its `error`)."""
    base = {"schema_version": doc["schema_version"], "image": doc["image"], "error": doc.get("error", "")}
    if not doc["faces"]:
        return [base]
    blank = lambda v: "" if v is None else v  # noqa: E731 -- null labels are empty cells
    return [{**base, "face": f["face"], **dict(zip(("x1", "y1", "x2", "y2"), f["box"])), "score": f["score"],
             **{k: blank(f[k]) for k in ("gender", "p_male", "age", "age_low", "age_high")},
             "flags": ";".join(f["flags"]), "error": f.get("error", base["error"])}
            for f in doc["faces"]]


# a text cell that a spreadsheet would run as a formula begins with one of these (OWASP, "CSV Injection")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A text cell that begins like a formula (a photo named `=HYPERLINK(...).jpg`, `@SUM(1+1).jpg`), with
    a single quote in front, so that Excel and LibreOffice show it as text; numbers (a box at x = -3) are
    left as they are."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def csv_text(rows: list[dict]) -> str:
    """The CSV document: a header of the schema's CSV_COLUMNS, then the rows (text cells through
    `csv_cell`), lines ending in LF. A cell holding a CR or a LF (a file name may) is quoted, so it cannot
    start a row of its own."""
    import csv
    import io

    buf = io.StringIO()
    # Python's writer quotes only the characters of its line terminator: with CR LF both are quoted; each
    # line then ends in LF as before
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, restval="", lineterminator="\r\n")
    lines = []
    for row in [dict(zip(CSV_COLUMNS, CSV_COLUMNS))] + rows:
        buf.seek(0)
        buf.truncate()
        writer.writerow({k: csv_cell(v) for k, v in row.items()})
        lines.append(buf.getvalue()[:-2])
    return "\n".join(lines) + "\n"


COLORS_BGR = {"male": (235, 140, 30), "female": (60, 60, 230)}
FLAGGED_BGR = (150, 150, 150)  # a flagged face: grey, dashed box, its label ends in "?"


def _dashed_rectangle(img: np.ndarray, p1: tuple[int, int], p2: tuple[int, int], color, thick: int) -> None:
    (x1, y1), (x2, y2) = p1, p2
    dash = max(2, 3 * thick)
    for x in range(x1, x2, 2 * dash):
        cv2.line(img, (x, y1), (min(x + dash, x2), y1), color, thick, cv2.LINE_AA)
        cv2.line(img, (x, y2), (min(x + dash, x2), y2), color, thick, cv2.LINE_AA)
    for y in range(y1, y2, 2 * dash):
        cv2.line(img, (x1, y), (x1, min(y + dash, y2)), color, thick, cv2.LINE_AA)
        cv2.line(img, (x2, y), (x2, min(y + dash, y2)), color, thick, cv2.LINE_AA)


def label_text(fr) -> str:
    """`M 24 (19-31)` on the annotated image; a flagged face's ends in `?`; `?` alone without labels."""
    if not fr.ok:
        return "?"
    return f"{fr.gender[0].upper()} {age_text(fr.age, fr.age_range)}" + ("?" if fr.flags else "")


def draw(res: ImageResult) -> np.ndarray:
    """A BGR copy of the image with boxes, landmarks and `M 24 (19-31)` / `F 31 (26-37)` labels sized to each
    face; a flagged face in grey with a dashed box, its label ending in `?`."""
    img = cv2.cvtColor(res.image, cv2.COLOR_RGB2BGR)
    for fr in res.faces:
        x1, y1, x2, y2 = _box(fr.face)
        side = max(1, min(x2 - x1, y2 - y1))
        color = FLAGGED_BGR if fr.flags else COLORS_BGR.get(fr.gender, (128, 128, 128))
        thick = max(1, round(side / 50))
        if fr.flags:
            _dashed_rectangle(img, (x1, y1), (x2, y2), color, thick)
        else:
            cv2.rectangle(img, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        for x, y in fr.face.landmarks:
            cv2.circle(img, (int(round(float(x))), int(round(float(y)))), max(1, round(side / 35)), (0, 220, 255), -1,
                       cv2.LINE_AA)
        # legible on 20 px faces and on 500 px ones; ranges make labels longer
        draw_label(img, label_text(fr), (x1, y1, x2, y2), color, float(np.clip(side / 110, 0.4, 3.0)))
    return img


def draw_label(img: np.ndarray, text: str, box: tuple[int, int, int, int], color: tuple[int, int, int],
               scale: float) -> tuple[int, int, int, int]:
    """White `text` on a `color` band above `box` (below it where the top edge is near, inside the frame
    always: a face at an edge keeps its whole label; a label wider than the frame is drawn smaller).
    Returns the band as x1, y1, x2, y2."""
    h, w = img.shape[:2]
    while True:
        thick = max(1, round(scale * 1.5))
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        if (tw + 2 < w and th + base + base // 2 < h) or scale <= 0.3:
            break
        scale *= 0.8
    x1, y1, x2, y2 = box
    ty = y1 - 4 if y1 - th - base - 4 >= 0 else y2 + th + 4  # the text's baseline: above the box, else below
    ty = int(min(max(ty, th + base), h - 1 - base // 2))
    tx = int(min(max(0, x1), max(0, w - tw - 2)))
    band = (tx, ty - th - base, tx + tw + 2, ty + base // 2)
    cv2.rectangle(img, band[:2], band[2:], color, -1)
    cv2.putText(img, text, (tx + 1, ty - base // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                cv2.LINE_AA)
    return band


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
    """Where infer.py's results go, image by image as they complete: text lines, one JSON list (`--json`,
    stdout, at the end), JSON lines (`--jsonl`, flushed per image), a CSV (`--csv`, one row per face, written
    at the end through the project's writer), Parquet (`--parquet`, one row per face in row groups as images
    complete, renamed into place at the end; agegender/serving/batch.py), annotated copies (`--output FILE`, or one per image under
    `--output-dir`, each written atomically as it completes); `error: PATH: reason` on stderr for each input
    that fails; a summary line and the exit status at the end. When JSON or CSV goes to stdout, every human
    line goes to stderr. A progress bar (stderr) runs over several images when stderr is a terminal. Every
    output is checked before the work starts, and none may be an image of `paths` or one of `inputs` (the
    model's files: agegender.model.engine.model_files)."""

    def __init__(self, paths: list[str], problems: list[tuple[str, str]] = (), text: bool = True,
                 json_doc: bool = False, jsonl: str | None = None, output: str | None = None,
                 output_dir: str | None = None, show: bool = False, csv: str | None = None,
                 progress: bool | None = None, parquet: str | None = None, inputs: list[str] = ()):
        self.text, self.json_doc, self.show = text, json_doc, show
        self.problems = list(problems)
        self.total = len(paths) + len(self.problems)
        self.multi = self.total > 1
        self.single: str | None = None
        self.targets: dict[str, str] = {}
        if output and output_dir:
            raise UserError("give either --output or --output-dir, not both")
        streams = [name for name, where in (("--jsonl", jsonl), ("--csv", csv), ("--output", output)) if where == "-"]
        if len(streams) + json_doc > 1:
            raise UserError(f"only one output can go to stdout: {', '.join(streams + ['--json'] * json_doc)}")
        # machine-readable output on stdout: the human lines go to stderr so the stream stays parseable
        self.human = sys.stderr if streams or json_doc else sys.stdout
        single = output if output and not os.path.isdir(output) else None
        named_outputs = [(flag, where) for flag, where in (("--jsonl", jsonl), ("--csv", csv), ("--output", single),
                                                           ("--parquet", parquet)) if where and where != "-"]
        refuse_inputs(named_outputs, list(paths) + list(inputs))
        refuse_same_outputs(named_outputs)
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
            self.targets = output_paths(paths, folder, others=list(inputs))
        self.csv = csv
        if csv:
            check_writable(csv, "--csv")
        self.csv_rows: list[dict] = []
        self.jsonl = None
        self.jsonl_path = jsonl
        if jsonl:
            check_writable(jsonl, "--jsonl")
        self.parquet_path, self.parquet = parquet, None
        if parquet:
            from agegender.serving.batch import check_target  # pyarrow only when asked for

            check_target(parquet)
        self._stack = contextlib.ExitStack()
        self.draws = bool(self.single or self.targets or show)
        self.docs: list[dict] = []
        self.shown: list[ImageResult] = []
        self.labelled: set[str] = set()
        self.failed_inputs: set[str] = set()
        self.faces = 0
        self.start = time.perf_counter()
        self.complete = False
        self.bar = None
        if self.multi and progress is not False:
            from tqdm import tqdm

            # disable=None: shown only when stderr is a terminal, so pipes and CI logs get no \r bars
            self.bar = tqdm(total=self.total, unit="image", file=sys.stderr, dynamic_ncols=True, leave=False,
                            disable=None if progress is None else False)

    def __enter__(self) -> "Outputs":
        try:
            if self.jsonl_path:  # streamed into a temporary file, renamed when the run ends
                self.jsonl = self._stack.enter_context(open_output(self.jsonl_path))
            if self.parquet_path:  # opened here, not in __init__: a model that fails to load leaves no temp file
                from agegender.serving.batch import ParquetSink

                # as the JSON lines: in place when complete or interrupted, dropped when the run fails
                self.parquet = self._stack.enter_context(ParquetSink(self.parquet_path))
        except BaseException:
            self._stack.close()  # no temporary file left behind by an output that did open
            raise
        for spec, reason in self.problems:  # inputs that gave no file: reported first, the run goes on
            self.failed(spec, reason)
        return self

    def _say(self, line: str, stream) -> None:
        """A human line that does not tear the progress bar."""
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line, file=stream)
        else:
            print(line, file=stream, flush=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.complete = exc_type is None
        if self.bar is not None:
            self.bar.close()
        # every completed image is in the JSON lines and the Parquet, also after Ctrl-C; a failed run keeps the
        # old files
        self._stack.__exit__(exc_type, exc, tb)
        if self.csv and (self.complete or self.csv_rows):
            write_atomic(self.csv, csv_text(self.csv_rows))  # the rows done so far, also after Ctrl-C
        if self.complete and self.json_doc:
            print(dumps_json(self.docs), flush=True)
        if self.multi or not self.complete:
            state = "" if self.complete else ", interrupted" if issubclass(exc_type, KeyboardInterrupt) else \
                ", stopped by an error"
            print(f"summary: {self.summary()}, {time.perf_counter() - self.start:.1f} s{state}",
                  file=sys.stderr, flush=True)
        if self.complete and self.show:
            self._show()

    def summary(self) -> str:
        """`3 images: 1 labelled (6 faces), 2 failed` (+ `, 1 not done` when interrupted): the parts add up."""
        labelled, failed = len(self.labelled - self.failed_inputs), len(self.failed_inputs)
        rest = self.total - labelled - failed
        return (f"{self.total} image{'s' * (self.total != 1)}: {labelled} labelled ({self.faces} faces), "
                f"{failed} failed" + (f", {rest} not done" if rest > 0 else ""))

    def _emit(self, doc: dict) -> None:
        if self.json_doc:
            self.docs.append(doc)
        if self.jsonl is not None:
            try:
                self.jsonl.write(json.dumps(doc) + "\n")
                self.jsonl.flush()
            except OSError as exc:  # a full disk: the one-line error names the output
                raise named(exc, "standard output" if self.jsonl_path == "-" else self.jsonl_path) from None
        if self.csv:
            self.csv_rows += csv_rows(doc)
        if self.parquet is not None:
            self.parquet.add(doc)

    def failed(self, path: str, reason: str, emit: bool = True) -> None:
        """An input that could not be processed: reported, counted, and the run goes on."""
        self.failed_inputs.add(path)
        self._say(f"error: {path}: {reason}", sys.stderr)
        if emit:
            self._emit(ImageResult(path, None, error=reason).to_dict())

    def add(self, res: ImageResult) -> None:
        if self.bar is not None:
            self.bar.update(1)
        if res.error:
            self.failed(res.path, res.error)
            return
        self.labelled.add(res.path)
        self.faces += len(res.faces)
        broken = sum(not fr.ok for fr in res.faces)
        if broken:  # reported on its own: the image's faces (and boxes) are still emitted
            self.failed(res.path, NOT_FINITE.replace("this face", f"{broken} face(s)"), emit=False)
        if self.text:
            self._say("\n".join(([f"{res.path}:"] if self.multi else []) + format_lines(res)), self.human)
        self._emit(to_json(res))
        target = self.single or self.targets.get(res.path)
        if target and res.image is not None:
            try:
                save_image(target, draw(res))
            except OSError as exc:
                self.failed(res.path, f"cannot write the annotated copy {target}: {exc.strerror or exc}", emit=False)
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
        if not self.failed_inputs:
            return 0
        return 1 if self.labelled else 2


__all__ = ["label_text", "Outputs", "find_images", "output_paths", "NOT_FINITE", "format_lines", "to_json", "draw", "draw_label",
           "save_image", "dumps_json", "IMAGE_EXTS", "csv_rows", "csv_text", "csv_cell", "FORMULA_STARTS"]
