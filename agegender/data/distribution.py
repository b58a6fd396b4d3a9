"""Age/gender distribution of a packed set or a label list: loading, statistics and the histogram plot."""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

from agegender.data.recordio import iter_records
from agegender.data.sources import parse_list

GENDER_NAMES = {1: "male", 0: "female", -1: "unknown"}
GENDER_COLORS = {1: "#1f77b4", 0: "#d62728", -1: "#7f7f7f"}


@dataclass
class Labels:
    """Parallel arrays of one set's labels."""

    gender: np.ndarray  # int: 1 male, 0 female, -1 unknown
    age: np.ndarray     # float years
    source: list[str]   # source name per sample


def _meta_beside(path: str) -> dict | None:
    meta = os.path.join(os.path.dirname(os.path.abspath(path)), "meta.json")
    if not os.path.isfile(meta):
        return None
    try:
        with open(meta, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _source_of_path(meta: dict | None):
    """A function mapping a source path to its source name by the roots listed in meta.json."""
    roots = [] if not meta else sorted(((os.path.join(s["root"], ""), s["name"]) for s in meta.get("sources", [])),
                                       key=lambda r: -len(r[0]))

    def find(path: str) -> str:
        for root, name in roots:
            if path.startswith(root):
                return name
        return "all"
    return find


def load_labels(path: str) -> Labels:
    """Labels of a `.rec` (with source names from the meta.json beside it), an im2rec `.lst`, or a
    `path,gender,age` list file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    meta = _meta_beside(path)
    genders, ages, sources = [], [], []
    ext = os.path.splitext(path)[1].lower()
    if ext == ".rec":
        names = {s["id"]: s["name"] for s in meta.get("sources", [])} if meta else {}
        for rec in iter_records(path, with_images=False):
            genders.append(rec.gender)
            ages.append(rec.age)
            sources.append(names.get(rec.source_id, f"source {rec.source_id}"))
    elif ext == ".lst":
        find = _source_of_path(meta)
        with open(path, encoding="utf-8") as f:
            for no, line in enumerate(f, 1):
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 4:
                    raise ValueError(f"{path}:{no}: not an im2rec line `index\\tgender\\tage\\tpath`")
                genders.append(int(float(parts[1])))
                ages.append(float(parts[2]))
                sources.append(find(parts[-1]))
    else:
        parsed = parse_list(path)
        for s in parsed.samples:
            genders.append(s.gender)
            ages.append(s.age)
            sources.append(parsed.name)
    return Labels(np.asarray(genders, dtype=np.int64), np.asarray(ages, dtype=np.float64), sources)


def summarize(labels: Labels) -> str:
    """Count, mean and median age, share per gender and per source, as printable lines."""
    n = len(labels.age)
    if n == 0:
        return "count: 0"
    lines = [f"count: {n}", f"age mean: {labels.age.mean():.2f}", f"age median: {np.median(labels.age):.1f}",
             f"age range: {labels.age.min():g}-{labels.age.max():g}"]
    g = Counter(labels.gender.tolist())
    lines.append("gender: " + ", ".join(f"{GENDER_NAMES[k]} {g.get(k, 0)} ({g.get(k, 0) / n:.1%})"
                                        for k in (1, 0, -1)))
    s = Counter(labels.source)
    if len(s) > 1:
        lines.append("sources: " + ", ".join(f"{k} {v} ({v / n:.1%})" for k, v in sorted(s.items())))
    return "\n".join(lines)


def plot_histogram(labels: Labels, out_png: str, title: str = "") -> None:
    """Save the age histogram (1-year bins, stacked by gender), one panel per source."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agegender.atomic import save_figure

    names = sorted(set(labels.source)) or ["all"]
    top = int(max(100, np.ceil(labels.age.max()) if len(labels.age) else 100)) + 1
    bins = np.arange(0, top + 1)
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 2.8 * len(names) + 0.6), squeeze=False,
                             sharex=True)
    src = np.asarray(labels.source)
    for ax, name in zip(axes[:, 0], names):
        sel = src == name if len(src) else np.zeros(0, bool)
        bottom = np.zeros(len(bins) - 1)
        for g in (1, 0, -1):
            ages = labels.age[sel & (labels.gender == g)]
            if ages.size == 0:
                continue
            h, _ = np.histogram(np.floor(ages), bins=bins)
            ax.bar(bins[:-1], h, width=1.0, bottom=bottom, align="edge", color=GENDER_COLORS[g],
                   label=f"{GENDER_NAMES[g]} ({ages.size})", linewidth=0)
            bottom += h
        n = int(sel.sum())
        mean = labels.age[sel].mean() if n else float("nan")
        ax.set_title(f"{name}: {n} faces, mean age {mean:.1f}", fontsize=10, loc="left")
        ax.set_ylabel("faces")
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xlabel("age (years, 1-year bins)")
    axes[-1, 0].set_xlim(0, top)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, out_png, dpi=100)
    plt.close(fig)
