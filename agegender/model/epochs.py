"""What a training run keeps of its epochs: the train metrics and log lines of each, the checkpoints, the
history (`PREFIX-history.csv` and its curves), the best epoch by val score, and all of it read back on --resume."""
from __future__ import annotations

import logging
import math
import time

import mxnet as mx
import numpy as np
from mxnet import gluon

from agegender.data.iterators import to_numpy_labels
from agegender.errors import UserError, short_reason
from agegender.model.age import decode
from agegender.model.checkpoints import RunCheckpoints
from agegender.model.metrics import AgeGenderMetric
from agegender.model.run_files import curves_path, history_path, plot_history, read_history, write_history
from agegender.symbols import load_weights

log = logging.getLogger("train")


def val_score(row: dict) -> float:
    """The number the best epoch is chosen by (lower is better): age MAE plus 20 x the gender error,
    so one point of gender accuracy weighs as much as 0.2 years of MAE."""
    return row["val_mae"] + 20.0 * (1.0 - row["val_acc"])


class EpochMeter:
    """The train metrics of one epoch, and the `Epoch[N] Batch [a-b]` line every `log_interval` batches
    (speed and metrics of those batches alone, the loss averaged over the epoch so far)."""

    def __init__(self, epoch: int, log_interval: int, global_batch: int, age_decode: str):
        self.epoch, self.log_interval, self.global_batch = epoch, log_interval, global_batch
        self.age_decode = age_decode
        self.metric, self.window = AgeGenderMetric(), AgeGenderMetric()
        self.loss_sum, self.rows = 0.0, 0
        self.started = self.tic = time.time()

    def update(self, nbatch: int, loss: float, outs: np.ndarray, label: mx.nd.NDArray) -> None:
        """Count batch `nbatch` (0-based): its summed `loss` and `outs` against `label`."""
        gender, age = to_numpy_labels(label)
        p_male, age_pred = decode(outs, self.age_decode)
        self.metric.update(p_male, age_pred, gender, age)
        self.window.update(p_male, age_pred, gender, age)
        self.loss_sum += loss
        self.rows += len(outs)
        if (nbatch + 1) % self.log_interval == 0:
            m = self.window.get()
            speed = self.log_interval * self.global_batch / (time.time() - self.tic)
            log.info("Epoch[%d] Batch [%d-%d]\tSpeed: %.2f samples/sec\tacc=%.6f\tMAE=%.6f\tCUM_5=%.6f\tloss=%.6f",
                     self.epoch, nbatch + 1 - self.log_interval, nbatch + 1, speed, m["acc"], m["mae"], m["cs5"],
                     self.loss_sum / self.rows)
            self.window.reset()
            self.tic = time.time()

    def row(self, lr: float) -> dict:
        """The epoch's history row so far: its number (1-based), last learning rate and train columns."""
        m = self.metric.get()
        return {"epoch": self.epoch + 1, "lr": lr, "train_loss": self.loss_sum / max(1, self.rows),
                "train_acc": m["acc"], "train_mae": m["mae"], "train_cs5": m["cs5"]}


class EpochRecorder:
    """The files a run keeps under its prefix, written by worker 0 only (`rank`): the checkpoints (every
    `save_every` epochs and the last), the history CSV and curves, the best epoch's weights by `val_score`;
    and the log lines that close each epoch."""

    def __init__(self, prefix: str, save_every: int, end_epoch: int):
        self.prefix, self.save_every, self.end_epoch = prefix, save_every, end_epoch
        self.checkpoints = RunCheckpoints(prefix)
        self.rank = 0
        self.history: list[dict] = []
        self.best_score = math.inf

    def resume(self, net: gluon.HybridBlock) -> int:
        """Load the resume point's weights into `net`, and the history and best score of the epochs before it;
        returns the completed epochs to continue after. UserError for a damaged or foreign checkpoint."""
        epoch, source = self.checkpoints.resume_point()
        try:
            report = load_weights(net, source, epoch)
        except (ValueError, OSError, mx.base.MXNetError) as exc:  # a truncated or damaged file
            raise UserError(f"--resume: cannot load {source}-{epoch:04d}.params: {short_reason(exc)}") from None
        if report.mismatched or report.missing or report.by_order or report.gamma_differs:
            raise UserError(f"--resume: {self.prefix}-{epoch:04d}.params is not a checkpoint of this network "
                            f"({report}); use the same --network/--multiplier/--version-input/--learn-output-scale")
        try:
            self.history = read_history(history_path(self.prefix), before=epoch)
        except ValueError as exc:  # reported, never dropped: the run would write over it
            raise UserError(f"--resume: {exc}; fix or move it away to resume") from None
        scores = [val_score(r) for r in self.history if r.get("val_mae") == r.get("val_mae")]
        self.best_score = min(scores) if scores else math.inf
        log.info("resumed from %s-%04d.params: continuing at epoch %d", source, epoch, epoch)
        return epoch

    def save(self, net: gluon.HybridBlock, trainer: gluon.Trainer, epoch: int, stopped: bool) -> None:
        """The checkpoint after 0-based `epoch`, when it is due: every `save_every` epochs, the last one, and
        where --max-steps `stopped` the run."""
        if self.rank == 0 and (stopped or (epoch + 1) % self.save_every == 0 or epoch + 1 == self.end_epoch):
            log.info("saved %s", self.checkpoints.save(net, trainer, epoch + 1))

    def save_interrupted(self, net: gluon.HybridBlock, trainer: gluon.Trainer, done: int) -> None:
        """The state of a run stopped by a signal after `done` completed epochs, to continue with --resume."""
        if self.rank == 0:
            path = self.checkpoints.save_interrupted(net, trainer, done)
            log.info("interrupted: saved %s (%d epochs completed); continue with --resume", path, done)

    def finish_epoch(self, epoch: int, row: dict, started: float, net: gluon.HybridBlock) -> None:
        """Log 0-based `epoch`'s val and train lines, set `row`'s `time_s` (since `started`) and add it to the
        history; worker 0 then saves the best epoch's weights and writes the history CSV and curves."""
        validated = "val_mae" in row  # without val faces there is no val line to log and no best epoch
        if validated:
            log.info("Epoch[%d] Validation: acc=%.6f\tMAE=%.6f\tCUM_3=%.6f\tCUM_5=%.6f\tloss=%.6f",
                     epoch, row["val_acc"], row["val_mae"], row["val_cs3"], row["val_cs5"], row["val_loss"])
        row["time_s"] = time.time() - started
        log.info("Epoch[%d] Train: acc=%.6f\tMAE=%.6f\tCUM_5=%.6f\tloss=%.6f\tlr=%g\tTime cost=%.1f s",
                 epoch, row["train_acc"], row["train_mae"], row["train_cs5"], row["train_loss"], row["lr"],
                 row["time_s"])
        self.history.append(row)
        if self.rank == 0:
            if validated and val_score(row) < self.best_score:
                self.best_score = val_score(row)
                log.info("best val score so far %.4f (MAE + 20 x gender error): saved %s", self.best_score,
                         self.checkpoints.save_best(net, epoch + 1))
            write_history(history_path(self.prefix), self.history)
            plot_history(curves_path(self.prefix), self.history)


__all__ = ["EpochMeter", "EpochRecorder", "val_score"]
