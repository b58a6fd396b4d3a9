"""The files of a training run under its prefix P: the checkpoint format is agegender/symbols/'s business and which
checkpoints a run keeps is agegender/model/checkpoints.py's; here are the metrics history (`P-metrics.csv`),
its curves (`P-curves.png`), the optimizer state's file format (`P-%04d.states`, without pickle), the name
of the unfinished epoch's files (`P-interrupted-%04d.*`), and the rule that a prefix holding a run is never
overwritten by accident."""
from __future__ import annotations

import csv
import glob
import io
import json
import os

import mxnet as mx

from agegender.atomic import atomic_path, save_figure, write_atomic
from agegender.errors import UserError, read_text, short_reason

CSV_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "train_mae", "train_cs5",
              "val_loss", "val_acc", "val_mae", "val_cs3", "val_cs5", "time_s"]


def interrupted_prefix(prefix: str) -> str:
    return f"{prefix}-interrupted"


def run_files(prefix: str) -> list[str]:
    """The files a training run wrote under `prefix` (its log excepted)."""
    pats = ["-[0-9][0-9][0-9][0-9]*.params", "-[0-9][0-9][0-9][0-9]*.states", "-symbol.json", "-metrics.csv",
            "-curves.png", "-best-*", "-interrupted-*"]
    return sorted({p for pat in pats for p in glob.glob(glob.escape(prefix) + pat)})


def claim_prefix(prefix: str, resume: bool, overwrite: bool) -> None:
    """A new run may not silently replace an earlier one under the same prefix: refuse, unless `resume`
    (continue it) or `overwrite` (its files are deleted first)."""
    found = run_files(prefix)
    if not found or resume:
        return
    if not overwrite:
        names = ", ".join(os.path.basename(f) for f in found[:3]) + (" ..." if len(found) > 3 else "")
        raise UserError(f"--prefix {prefix} already holds a training run ({names}): continue it with --resume, "
                        "choose a new --prefix, or pass --overwrite to replace it")
    for f in found:
        os.remove(f)


CONFIG_KIND = "agegender train.py config"


def config_path(prefix: str) -> str:
    return f"{prefix}-config.json"


def write_config(prefix: str, config: dict, version: str) -> str:
    """The run's settings (`dataclasses.asdict` of its TrainConfig) as `P-config.json`, which `--resume` and
    `--config` read back as their defaults; returns its path."""
    path = config_path(prefix)
    doc = {"kind": CONFIG_KIND, "version": version, "config": config}
    write_atomic(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return path


def read_config(path: str, flag: str) -> dict:
    """The settings `write_config` wrote to `path`; UserError in one line, naming `flag`, for a file that is
    missing, not JSON or not a train.py config."""
    if not os.path.isfile(path):
        raise UserError(f"{flag}: no such config file: {path}")
    # --resume reads the run's own file unasked: say how to go on without it
    way_out = "; delete it to resume with the flags as given" if flag == "--resume" else ""
    try:
        doc = json.loads(read_text(path, f"{flag} config"))
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError included; RecursionError: deep nesting
        raise UserError(f"{flag}: {path} is not JSON ({short_reason(exc)}){way_out}") from None
    if not isinstance(doc, dict) or doc.get("kind") != CONFIG_KIND or not isinstance(doc.get("config"), dict):
        raise UserError(f"{flag}: {path} is not a train.py config (PREFIX-config.json, written by train.py)"
                        f"{way_out}")
    return doc["config"]


def history_path(prefix: str) -> str:
    return f"{prefix}-metrics.csv"


def curves_path(prefix: str) -> str:
    return f"{prefix}-curves.png"


def read_history(path: str, before: int | None = None) -> list[dict]:
    """Rows of a metrics CSV (numbers as floats), those with epoch <= `before` when given; ValueError
    (naming the file and line) for a file that is not one."""
    if not os.path.isfile(path):
        return []
    rows, line = [], 1
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "epoch" not in (reader.fieldnames or []):
                raise ValueError(f"{path} is not a metrics history (no epoch column)")
            for r in reader:
                line = reader.line_num
                rows.append({k: float(v) if v not in ("", None) else float("nan") for k, v in r.items()
                             if k is not None})
    except (ValueError, TypeError, UnicodeDecodeError, csv.Error) as exc:
        if str(exc).startswith(path):
            raise
        raise ValueError(f"{path} line {line} is not a metrics row ({short_reason(exc)})") from None
    return [r for r in rows if before is None or r["epoch"] <= before]


def source_names(rows: list[dict]) -> list[str]:
    """The sources with val columns of their own (`NAME_val_acc`, ...) in a history, in first-seen order."""
    names: list[str] = []
    for r in rows:
        for k in r:
            if k.endswith("_val_acc") and k[:-len("_val_acc")] not in names:
                names.append(k[:-len("_val_acc")])
    return names


def history_fields(rows: list[dict]) -> list[str]:
    """The CSV columns: the fixed ones, then each source's val accuracy, MAE and CS@5."""
    return CSV_FIELDS + [f"{n}_val_{k}" for n in source_names(rows) for k in ("acc", "mae", "cs5")]


def write_history(path: str, rows: list[dict]) -> None:
    fields = history_fields(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, "")) for k in fields})
    write_atomic(path, buf.getvalue())


def plot_history(path: str, rows: list[dict]) -> None:
    """Loss, gender accuracy and age MAE per epoch, train and val (and each source's val), in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title in zip(axes, ("loss", "acc", "mae"), ("loss", "gender accuracy", "age MAE (years)")):
        series = [("train", "-o"), ("val", "-s")] + [(f"{n}_val", "--^") for n in source_names(rows)]
        for split, style in series:
            ys = [r.get(f"{split}_{key}", float("nan")) for r in rows]
            if any(y == y for y in ys):
                ax.plot(ep, ys, style, ms=3, label=split.replace("_", " "))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)



def save_optimizer_state(trainer: mx.gluon.Trainer, path: str) -> None:
    """The optimizer's state (momentum arrays, update counters) as an MXNet NDArray file: data only.
    Gluon's own `Trainer.save_states` pickles, and unpickling a file from a checkpoint folder can run
    any code; this never does."""
    updater = trainer._updaters[0]  # every context's updater holds the same state
    opt = updater.optimizer
    arrays = {"__num_update__": mx.nd.array([opt.num_update], dtype="float64")}
    for index, state in updater.states.items():
        parts = state if isinstance(state, (tuple, list)) else (state,)
        for j, part in enumerate(parts):
            if part is not None:
                arrays[f"{index}:{j}"] = part.copyto(mx.cpu())
        arrays[f"__count__:{index}"] = mx.nd.array([opt._index_update_count.get(index, 0), len(parts)],
                                                   dtype="float64")
    with atomic_path(path) as tmp:
        mx.nd.save(tmp, arrays)


def load_optimizer_state(trainer: mx.gluon.Trainer, path: str) -> None:
    """Restore what `save_optimizer_state` wrote; raises ValueError for a file of another kind (an old
    pickled state included: it is never unpickled)."""
    try:
        arrays = mx.nd.load(path)
    except mx.base.MXNetError:
        raise ValueError(f"{path} is not an optimizer state written by this version (old pickled states are "
                         "not loaded, by design)") from None
    if not isinstance(arrays, dict) or "__num_update__" not in arrays:
        raise ValueError(f"{path} is not an optimizer state written by this version")
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    for updater in trainer._updaters:
        opt = updater.optimizer
        opt.num_update = int(arrays["__num_update__"].asscalar())
        for key, value in arrays.items():
            if not key.startswith("__count__:"):
                continue
            index = int(key.split(":")[1])
            count, n_parts = (int(v) for v in value.asnumpy())
            parts = [arrays.get(f"{index}:{j}") for j in range(n_parts)]
            updater.states[index] = tuple(parts) if n_parts > 1 else parts[0]
            updater.states_synced[index] = False  # copied to the weight's context at its next update
            opt._index_update_count[index] = count


__all__ = ["CSV_FIELDS", "source_names", "history_fields", "interrupted_prefix", "run_files", "claim_prefix", "config_path",
           "write_config", "read_config", "history_path", "curves_path",
           "read_history", "write_history", "plot_history", "save_optimizer_state", "load_optimizer_state"]
