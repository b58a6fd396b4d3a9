"""A training run's checkpoints under its prefix P: the completed epochs (`P-%04d.params` with the
optimizer's `P-%04d.states`), the unfinished epoch saved when a run is stopped (`P-interrupted-%04d.*`),
the best epoch by val score (`P-best-%04d.params`), and where `--resume` continues from."""
from __future__ import annotations

import logging
import os

from mxnet import gluon

from agegender.symbols import checkpoint_epochs, save_checkpoint
from agegender.model.run_files import interrupted_prefix, load_optimizer_state, save_optimizer_state

log = logging.getLogger("train")


class RunCheckpoints:
    """The checkpoint files of one run; never rewrites a completed epoch's files."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.interrupted = interrupted_prefix(prefix)

    def exist(self) -> bool:
        """Whether there is anything to resume from."""
        return bool(checkpoint_epochs(self.prefix) or checkpoint_epochs(self.interrupted))

    def resume_point(self) -> tuple[int, str]:
        """(completed epochs, checkpoint prefix) to resume from: the newest completed epoch, or the state
        saved when the epoch after it was interrupted."""
        done = checkpoint_epochs(self.prefix)
        last = done[-1] if done else 0
        partial = checkpoint_epochs(self.interrupted)
        if partial and partial[-1] >= last:
            return partial[-1], self.interrupted
        return last, self.prefix

    def last_completed(self) -> str:
        """The newest completed epoch's params file, for messages ("none was written yet" if none)."""
        done = checkpoint_epochs(self.prefix)
        return f"{self.prefix}-{done[-1]:04d}.params" if done else "none was written yet"

    def load_states(self, trainer: gluon.Trainer) -> bool:
        """Restore the optimizer state saved with the resume point; False (with a warning: momentum
        restarts from zero) when it is missing or of another kind."""
        epoch, prefix = self.resume_point()
        path = _states_path(prefix, epoch)
        if not os.path.isfile(path):
            log.warning("no optimizer state %s: momentum restarts from zero", path)
            return False
        try:
            load_optimizer_state(trainer, path)
        except ValueError as exc:
            log.warning("%s; momentum restarts from zero", exc)
            return False
        log.info("optimizer state restored from %s", path)
        return True

    def save(self, net: gluon.HybridBlock, trainer: gluon.Trainer, epoch: int) -> str:
        """A completed epoch's weights and optimizer state; returns the params path."""
        path = save_checkpoint(net, self.prefix, epoch)
        save_optimizer_state(trainer, _states_path(self.prefix, epoch))
        return path

    def save_interrupted(self, net: gluon.HybridBlock, trainer: gluon.Trainer, done: int) -> str:
        """The weights and optimizer state of an unfinished epoch, after `done` completed ones, under a
        name of their own; an older interrupted state is replaced."""
        for e in checkpoint_epochs(self.interrupted):
            os.remove(f"{self.interrupted}-{e:04d}.params")
            if os.path.exists(_states_path(self.interrupted, e)):
                os.remove(_states_path(self.interrupted, e))
        path = save_checkpoint(net, self.interrupted, done)
        save_optimizer_state(trainer, _states_path(self.interrupted, done))
        return path

    def save_best(self, net: gluon.HybridBlock, epoch: int) -> str:
        """The weights of the best epoch so far; the previous best's params file is removed."""
        best = f"{self.prefix}-best"
        old = checkpoint_epochs(best)
        path = save_checkpoint(net, best, epoch)
        for e in old:
            if e != epoch:
                os.remove(f"{best}-{e:04d}.params")
        return path


def _states_path(prefix: str, epoch: int) -> str:
    return f"{prefix}-{epoch:04d}.states"
