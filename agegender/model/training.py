"""The training loop behind train.py: contexts, kvstore, data, logging, checkpoints, resume, faults."""
from __future__ import annotations

import hashlib
import logging
import math
import os
import signal
import threading
from dataclasses import dataclass, field

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from agegender.symbols import get_network, load_weights
from agegender.model.age import age_gender_loss, decode
from agegender.data.iterators import (Augment, MixedBatches, augment_batch, batch_shares, check_rec, eval_batches,
                                      record_iter, to_numpy_labels)
from agegender.model.devices import contexts, kvstore
from agegender.errors import Terminated, UserError
from agegender.data.recordio import LABEL_WIDTH
from agegender.model.epochs import EpochMeter, EpochRecorder, val_score
from agegender.model.metrics import AgeGenderMetric
from agegender.model.mxnet_engine import forward_split

log = logging.getLogger("train")


@dataclass
class TrainConfig:
    """Everything train.py's flags set (see README for each)."""

    data_dir: str = "dataset"
    data_dirs: list[str] = field(default_factory=list)   # several packed sources; empty: `data_dir` alone
    source_weights: list[float] = field(default_factory=list)  # each source's share of a batch; empty: by size
    network: str = "m50"
    multiplier: float = 1.0
    version_input: int = 1
    version_output: str = "GAP"
    use_se: bool = False
    learn_output_scale: bool = False
    prefix: str = "models/model"
    pretrained: str = ""
    resume: bool = False
    end_epoch: int = 30
    lr: float = 0.1
    lr_steps: list[int] = field(default_factory=list)
    lr_factor: float = 0.1
    wd: float = 5e-4
    mom: float = 0.9
    batch_size: int = 128
    gpus: str = ""
    kvstore: str = "device"
    augment: Augment = field(default_factory=lambda: Augment(mirror=True))
    num_workers: int = 2
    log_interval: int = 20
    seed: int = 0
    max_steps: int = 0
    save_every: int = 1
    age_decode: str = "prob"
    gender_weight: float = 1.0
    age_sigma: float = 0.0
    interval_prior: float = 0.0
    gender_smooth: float = 0.0
    age_balance: float = 0.0
    gender_balance: float = 0.0
    lr_schedule: str = "step"
    warmup_epochs: float = 0.0
    teacher_gender: str = ""
    teacher_genders: list[str] = field(default_factory=list)  # one CSV (or "") per source, in order
    teacher_weight: float = 0.5
    teacher_online: float = 0.0  # share of the teacher net's P(male) of each augmented face (0 = off)


@dataclass
class Source:
    """One packed dataset of a run: its name (the folder's), its train/val records and counts."""

    name: str
    train_rec: str
    val_rec: str
    num_train: int
    num_val: int = 0
    teacher: str = ""
    labels_lst: str = ""


TWO_TEACHERS = "--teacher-online and --teacher-gender both set the teacher's share of the gender targets; give one"


def load_sources(cfg: TrainConfig) -> list[Source]:
    """The sources of `cfg` (`data_dirs`, or `data_dir` alone), each checked (UserError on a bad one)."""
    dirs = cfg.data_dirs or [cfg.data_dir]
    teachers = cfg.teacher_genders or [cfg.teacher_gender]
    if len(teachers) == 1 and len(dirs) > 1:
        if teachers[0]:
            raise UserError(f"--teacher-gender: give one CSV per --data-dir ({len(dirs)}), '-' for none")
        teachers = [""] * len(dirs)
    if len(teachers) != len(dirs):
        raise UserError(f"--teacher-gender: {len(teachers)} given for {len(dirs)} --data-dir; give one per "
                        "source, '-' for none")
    if cfg.source_weights and len(cfg.source_weights) != len(dirs):
        raise UserError(f"--source-weights: {len(cfg.source_weights)} weights for {len(dirs)} --data-dir")
    names = [os.path.basename(os.path.normpath(d)) or d for d in dirs]
    if len(set(names)) != len(names):
        raise UserError(f"--data-dir folders must have distinct names (they name the sources): {', '.join(names)}")
    out = []
    for name, d, teacher in zip(names, dirs, teachers):
        train, val = os.path.join(d, "train.rec"), os.path.join(d, "val.rec")
        out.append(Source(name, train, val, check_rec(train), check_rec(val) if os.path.exists(val) else 0,
                          "" if teacher in ("", "-") else teacher))
    return out


def lr_at(cfg: TrainConfig, epoch: float) -> float:
    """Learning rate at a (fractional) epoch. `step`: `lr` times `lr_factor` for each of `lr_steps`
    already reached; `cosine`: from `lr` down to 0 at `end_epoch`. Both ramp up linearly over the
    first `warmup_epochs`."""
    if cfg.lr_schedule == "cosine":
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, epoch / max(1, cfg.end_epoch))))
    else:
        lr = cfg.lr * cfg.lr_factor ** sum(int(epoch) >= s for s in cfg.lr_steps)
    if epoch < cfg.warmup_epochs:
        lr *= max(0.01, epoch / cfg.warmup_epochs)
    return lr


def age_band_weights(ages: np.ndarray, power: float, band: float = 10.0,
                     rate: np.ndarray | None = None) -> np.ndarray:
    """Weight per 10-year band (index = age // 10, last band 70+) that re-balances the training ages:
    (band count / mean band count) ** -power, scaled so the average face weighs 1. `rate` (per face): how
    often training sees it (a source's share of a batch / its size), so that counts are those of the mix."""
    idx = np.minimum(np.asarray(ages) // band, 7).astype(int)
    rate = np.ones(len(idx)) if rate is None else np.asarray(rate, np.float64)
    counts = np.bincount(idx, weights=rate, minlength=8).astype(np.float64)
    w = np.where(counts > 0, (np.maximum(counts, 1e-12) / counts[counts > 0].mean()) ** -power, 0.0)
    return w / np.average(w[idx], weights=rate)


def interval_labels(sources: list[Source]) -> tuple[int, list]:
    """(label width, per source (age_lo, age_hi) or None): when any source's train split holds age groups
    (its `train-attrs.csv`, e.g. FairFace), every source trains on [gender, age_lo, age_hi] labels."""
    from agegender.data.recordio import attrs_path, read_attrs
    from agegender.model.teacher import read_lst

    if not any(os.path.isfile(attrs_path(src.train_rec)) for src in sources):
        return LABEL_WIDTH, [None] * len(sources)  # packed before the sidecar: exact ages only
    attrs = []
    for src in sources:
        lst = os.path.splitext(src.train_rec)[0] + ".lst"
        try:
            a = read_attrs(src.train_rec, np.array([e.age for e in read_lst(lst)], np.float64))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        attrs.append(a)
    if not any(a.grouped.any() for a in attrs):
        return LABEL_WIDTH, [None] * len(attrs)
    for src, a in zip(sources, attrs):
        log.info("age labels of %s: %d groups (intervals), %d exact", src.name, int(a.grouped.sum()),
                 int((~a.grouped).sum()))
    return 3, [(a.age_lo, a.age_hi) for a in attrs]


def mix_band_weights(ages: list, genders: list, shares: list[float], age_power: float,
                     gender_power: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(age, gender) band weights (`age_band_weights`, None where its power is 0) of several sources' train
    labels (per source: ages, genders) as a batch mixes them: each face at its source's share over its size.
    The gender weights count only the faces whose gender is known."""
    ages_all = np.concatenate([np.array(a, np.float64) for a in ages])
    known = np.concatenate([np.array(g) >= 0 for g in genders])
    rate = np.concatenate([np.full(len(a), share / max(len(a), 1)) for a, share in zip(ages, shares)])
    age_w = age_band_weights(ages_all, age_power, rate=rate) if age_power > 0 else None
    gender_w = None
    if gender_power > 0 and known.any():
        gender_w = age_band_weights(ages_all[known], gender_power, rate=rate[known])
    return age_w, gender_w


def band_sample_weights(label: mx.nd.NDArray, band_weights: mx.nd.NDArray | None,
                        ctx: mx.Context) -> mx.nd.NDArray | None:
    """Each face's loss weight from its age's band (`age_band_weights`' index; the interval's lower end for
    an age group), on `ctx`; None without band weights."""
    if band_weights is None:
        return None
    band = mx.nd.minimum(mx.nd.floor(label[:, 1] / 10), 7).as_in_context(mx.cpu())
    return band_weights.take(band).as_in_context(ctx)


def params_digest(net: gluon.Block) -> str:
    """SHA-1 of the trainable parameters (BatchNorm running statistics excluded: each worker keeps its
    own); equal digests on two workers mean identical weights."""
    h = hashlib.sha1()
    for name, p in sorted(net.collect_params().items()):
        if p.grad_req != "null":
            h.update(p.data(p.list_ctx()[0]).asnumpy().astype(np.float32).tobytes())
    return h.hexdigest()


class TrainingData:
    """What a run trains on: its checked sources, each one's rows of a batch, the label lists written for the
    record iterator (a teacher's soft genders, age intervals), the online teacher and the band weights of
    --age-balance / --gender-balance. Built cheaply; `Fit.from_config` fills it step by step."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.sources: list[Source] = []
        self.train_rec = ""  # the first source's, for messages and tests
        self.num_train = 0
        self.has_val = False
        self.rec_counts: dict[str, int] = {}  # records of each train and val `.rec`
        self.shares: list[int] = []  # each source's rows of a global batch
        self.label_width = LABEL_WIDTH
        self.teacher = None
        self.band_weights: mx.nd.NDArray | None = None
        self.gender_band_weights: mx.nd.NDArray | None = None

    def load_sources(self) -> None:
        """The sources of the config, each checked, and their counts."""
        self.sources = load_sources(self.cfg)
        self.train_rec = self.sources[0].train_rec
        self.num_train = sum(s.num_train for s in self.sources)
        self.has_val = any(s.num_val for s in self.sources)
        self.rec_counts = {s.train_rec: s.num_train for s in self.sources}
        self.rec_counts.update({s.val_rec: s.num_val for s in self.sources if s.num_val})

    def plan_batches(self, global_batch: int, num_ctx: int) -> None:
        """Each source's share of a batch of `global_batch` rows (over `num_ctx` contexts), each checked
        against its record count."""
        cfg = self.cfg
        if global_batch > self.num_train:
            raise UserError(f"--batch-size {cfg.batch_size} x {num_ctx} context(s) is more than the "
                            f"{self.num_train} records of {self.train_rec}; use a smaller --batch-size")
        if len(self.sources) == 1:
            self.shares = [global_batch]
            return
        self.shares = batch_shares(global_batch, cfg.source_weights or [s.num_train for s in self.sources])
        for src, share in zip(self.sources, self.shares):
            if share > src.num_train:
                raise UserError(f"source {src.name}: its share of a batch ({share}) is more than its "
                                f"{src.num_train} train records; use a smaller --batch-size or weight")

    def write_labels(self) -> None:
        """The online teacher, and each source's label list where its labels differ from its `.rec`'s
        (a teacher's soft genders, age intervals)."""
        cfg = self.cfg
        if cfg.teacher_online > 0:
            if any(src.teacher for src in self.sources):
                raise UserError(TWO_TEACHERS)
            from agegender.model.teacher import OnlineTeacher

            self.teacher = OnlineTeacher(cfg.teacher_online)
        self.label_width, attrs = interval_labels(self.sources)
        for src, src_attrs in zip(self.sources, attrs):
            src.labels_lst = self._train_labels(src, src_attrs) if src.teacher or src_attrs is not None else ""

    def load_band_weights(self) -> None:
        """--age-balance / --gender-balance: band weights from the ages as the mix samples them (each face
        at its source's share of a batch over its size); for gender, only the faces with a known gender."""
        from agegender.data.distribution import load_labels

        shares = self.shares if len(self.sources) > 1 else [1]
        labels = [load_labels(s.train_rec) for s in self.sources]
        age_w, gender_w = mix_band_weights([lb.age for lb in labels], [lb.gender for lb in labels], shares,
                                           self.cfg.age_balance, self.cfg.gender_balance)
        self.band_weights = None if age_w is None else mx.nd.array(age_w)
        self.gender_band_weights = None if gender_w is None else mx.nd.array(gender_w)

    def _train_labels(self, src: Source, intervals) -> str:
        """A source's train `.lst` with the teacher's soft genders mixed in and/or its age intervals, written
        beside the checkpoints (`PREFIX-train-labels.lst`, or `PREFIX-train-labels-NAME.lst` with several
        sources) for the record iterator."""
        from agegender.model.teacher import write_soft_lst

        out = f"{self.cfg.prefix}-train-labels" + (f"-{src.name}" if len(self.sources) > 1 else "") + ".lst"
        n, labelled = write_soft_lst(os.path.splitext(src.train_rec)[0] + ".lst", src.teacher,
                                     self.cfg.teacher_weight, out, intervals)
        if src.teacher:
            log.info("teacher genders from %s for %d of %d train faces of %s (weight %g): %s", src.teacher,
                     labelled, n, src.name, self.cfg.teacher_weight, out)
        return out

    def steps(self, rows_per_step: int) -> int:
        """Steps in an epoch of `rows_per_step` rows (all contexts of all workers), at least 1."""
        return max(1, math.ceil(self.num_train / rows_per_step))

    def train_iter(self, global_batch: int, workers: int = 1, rank: int = 0) -> mx.io.DataIter | MixedBatches:
        """The shuffled, augmented training batches of this worker (`rank` of `workers`): one source's record
        iterator, or several mixed into every batch at `shares`."""
        c = self.cfg
        its = [record_iter(s.train_rec, share, train=True, augment=c.augment, threads=c.num_workers,
                           seed=c.seed + i, num_parts=workers, part_index=rank, labels_lst=s.labels_lst,
                           label_width=self.label_width)
               for i, (s, share) in enumerate(zip(self.sources, self.shares))]
        if len(its) == 1:
            return its[0]
        log.info("sources mixed in every batch: %s", ", ".join(f"{s.name} {n}" for s, n in zip(self.sources,
                                                                                             self.shares)))
        return MixedBatches(its, self.shares, self.steps(global_batch * workers))


def _of_data(name: str, doc: str) -> property:
    """A read-only `Fit` attribute that is its `TrainingData`'s (callers and tests read them on the run)."""
    return property(lambda self: getattr(self.data, name), doc=doc)


class Fit:
    """One training run. `Fit.from_config(cfg)` checks the data, writes the label lists, builds and loads the
    network and the trainer; `run()` trains; the pieces are methods so tests can drive them. What it trains on
    is `data` (`TrainingData`); what it keeps of each epoch, `recorder` (`EpochRecorder`)."""

    sources = _of_data("sources", "The run's checked sources.")
    train_rec = _of_data("train_rec", "The first source's train `.rec`.")
    num_train = _of_data("num_train", "Train records over all sources.")
    shares = _of_data("shares", "Each source's rows of a global batch.")
    label_width = _of_data("label_width", "Columns of a training label: 2, or 3 with age intervals.")
    history = property(lambda self: self.recorder.history,
                       doc="The rows of the epochs trained so far (a resumed run's earlier ones included).")

    def __init__(self, cfg: TrainConfig, ctx: list[mx.Context] | None = None, net: gluon.HybridBlock | None = None):
        """Cheap: every attribute, unset; `from_config` fills them."""
        self.cfg = cfg
        self.ctx: list[mx.Context] = ctx or []
        self.net: gluon.HybridBlock | None = net
        self.data = TrainingData(cfg)
        self.recorder = EpochRecorder(cfg.prefix, cfg.save_every, cfg.end_epoch)
        self.checkpoints = self.recorder.checkpoints
        self.kv: mx.kvstore.KVStore | None = None
        self.rank, self.workers = 0, 1
        self.global_batch = 0
        self.resumed = False
        self.begin_epoch = 0
        self.trainer: gluon.Trainer | None = None
        self.step = 0
        self._stop: StopOnSignal | None = None
        self._eval_iters: dict[str, mx.io.DataIter] = {}

    @classmethod
    def from_config(cls, cfg: TrainConfig, ctx: list[mx.Context] | None = None,
                    net: gluon.HybridBlock | None = None) -> "Fit":
        """A run ready to train: its sources checked, label lists written beside the checkpoints, the network
        (`net`, or `cfg.network`'s) initialised, pretrained or resumed, and its trainer. `ctx`: default
        `cfg.gpus`' contexts. UserError for anything the user can fix."""
        fit = cls(cfg, ctx or contexts(cfg.gpus), net)
        fit.data.load_sources()
        fit._join_workers()
        mx.random.seed(cfg.seed)  # before the network's initialisation, which draws from it
        np.random.seed(cfg.seed)
        if fit.net is None:
            fit.net = build_network(cfg)
        fit.data.plan_batches(fit.global_batch, len(fit.ctx))
        fit.data.write_labels()
        if cfg.age_balance > 0 or cfg.gender_balance > 0:
            fit.data.load_band_weights()
        fit._init_params()
        fit._build_trainer()
        return fit

    # --- set-up -------------------------------------------------------------------------------------------
    def _join_workers(self) -> None:
        cfg = self.cfg
        if cfg.batch_size < 1:
            raise UserError("--batch-size must be at least 1")
        self.kv = kvstore(cfg.kvstore, len(self.ctx))
        self.rank = self.kv.rank if self.kv is not None else 0
        self.workers = self.kv.num_workers if self.kv is not None else 1
        self.recorder.rank = self.rank
        self.global_batch = cfg.batch_size * len(self.ctx)  # per context x contexts, on this worker

    def _build_trainer(self) -> None:
        cfg = self.cfg
        self.trainer = gluon.Trainer(self.net.collect_params(), "sgd",
                                     {"learning_rate": lr_at(cfg, self.begin_epoch), "wd": cfg.wd,
                                      "momentum": cfg.mom},
                                     kvstore=self.kv if self.kv is not None else "local",
                                     update_on_kvstore=False if self.kv is None or "dist" not in self.kv.type
                                     else None)
        if self.resumed and self.checkpoints.load_states(self.trainer):
            self.trainer.set_learning_rate(lr_at(cfg, self.begin_epoch))

    def _init_params(self) -> None:
        net, c = self.net, self.cfg
        net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2), ctx=self.ctx)
        with autograd.predict_mode():
            net(mx.nd.zeros((1, 3, 112, 112), ctx=self.ctx[0]))  # settle deferred shapes
        if c.resume and self.checkpoints.exist():
            self.resumed = True
            self.begin_epoch = self.recorder.resume(net)
        elif c.resume:
            log.info("--resume: no checkpoint %s-NNNN.params yet, starting from scratch", c.prefix)
        if c.pretrained and not self.resumed:  # resuming always wins over --pretrained
            load_pretrained(net, c.pretrained)
        net.hybridize(static_alloc=True, static_shape=True)

    # --- one batch ------------------------------------------------------------------------------------------
    def forward_backward(self, data: mx.nd.NDArray, label: mx.nd.NDArray,
                         mix: tuple[mx.nd.NDArray, float] | None = None) -> tuple[float, np.ndarray]:
        """Split a batch evenly over the contexts (labels with their images), forward, loss, backward.
        `mix`: (the mixup partners' labels, lam) for blended images. Returns (summed loss, outputs (N,202)
        in batch order)."""
        datas = gluon.utils.split_and_load(data, self.ctx, even_split=False)
        labels = gluon.utils.split_and_load(label, self.ctx, even_split=False)
        partners = gluon.utils.split_and_load(mix[0], self.ctx, even_split=False) if mix else labels
        lam = mix[1] if mix else 1.0
        with autograd.record():
            outs = [self.net(x) for x in datas]
            losses = [self._loss(o, y) if lam == 1.0 else lam * self._loss(o, y) + (1 - lam) * self._loss(o, yb)
                      for o, y, yb in zip(outs, labels, partners)]
        autograd.backward(losses)
        total = sum(float(l.sum().asscalar()) for l in losses)
        return total, np.concatenate([o.asnumpy() for o in outs])

    def _loss(self, out: mx.nd.NDArray, label: mx.nd.NDArray) -> mx.nd.NDArray:
        c = self.cfg
        weight = band_sample_weights(label, self.data.band_weights, out.context)
        gender_weight = band_sample_weights(label, self.data.gender_band_weights, out.context)
        return age_gender_loss(mx.nd, out, label, c.gender_weight, age_sigma=c.age_sigma,
                               gender_smooth=c.gender_smooth, sample_weight=weight,
                               gender_sample_weight=gender_weight, intervals=label.shape[1] == 3,
                               interval_prior=c.interval_prior)

    def update(self) -> None:
        # gradients are summed over contexts (and over workers by a dist kvstore): normalise by all rows
        self.trainer.step(self.global_batch * self.workers)

    def train_batch(self, data: mx.nd.NDArray, label: mx.nd.NDArray) -> tuple[float, np.ndarray]:
        """One optimisation step on a batch (augmentation that runs on arrays included). Returns
        (summed loss, outputs); the weights are left untouched when the loss is not finite."""
        data, mix = augment_batch(data, label, self.cfg.augment)
        if self.data.teacher is not None:
            label, mix = self.data.teacher.targets(data, label, mix)
        loss, outs = self.forward_backward(data, label, mix)
        if math.isfinite(loss):
            self.update()
            self.step += 1
        return loss, outs

    # --- loops ----------------------------------------------------------------------------------------------
    def evaluate(self, rec: str, overall: AgeGenderMetric | None = None) -> dict:
        """Loss and metrics over every record of a train or val `.rec`, in predict mode; `overall`, when
        given, is updated with the same faces (the metrics over several sources)."""
        if rec not in self._eval_iters:
            self._eval_iters[rec] = record_iter(rec, self.global_batch, train=False, threads=self.cfg.num_workers)
        it = self._eval_iters[rec]
        it.reset()
        metric, loss_sum = AgeGenderMetric(), 0.0
        for data, label in eval_batches(it, self.data.rec_counts[rec]):
            outs = forward_split(self.net, data, self.ctx)
            loss_sum += float(age_gender_loss(mx.nd, mx.nd.array(outs), label, self.cfg.gender_weight).sum().asscalar())
            gender, age = to_numpy_labels(label)
            p_male, age_pred = decode(outs, self.cfg.age_decode)
            metric.update(p_male, age_pred, gender, age)
            if overall is not None:
                overall.update(p_male, age_pred, gender, age)
        res = metric.get()
        res["loss"] = loss_sum / max(1, res["count"])
        return res

    def validate(self, epoch: int = 0) -> dict:
        """The history row's val columns: over all sources' val faces (`val_acc`, ...; what the best epoch is
        chosen by), and with several sources each source's own (`NAME_val_acc`, ...)."""
        srcs = [s for s in self.sources if s.num_val]
        overall, loss_sum, row = AgeGenderMetric(), 0.0, {}
        for src in srcs:
            v = self.evaluate(src.val_rec, overall)
            loss_sum += v["loss"] * v["count"]
            if len(self.sources) > 1:
                row.update({f"{src.name}_val_{k}": v[k] for k in ("acc", "mae", "cs5")})
                log.info("Epoch[%d] Validation %s: acc=%.6f\tMAE=%.6f\tCUM_5=%.6f", epoch,
                         src.name, v["acc"], v["mae"], v["cs5"])
        v = overall.get()
        row.update(val_loss=loss_sum / max(1, v["count"]), val_acc=v["acc"], val_mae=v["mae"], val_cs3=v["cs3"],
                   val_cs5=v["cs5"])
        return row

    def train_iter(self) -> mx.io.DataIter | MixedBatches:
        """The shuffled, augmented training batches: one source's record iterator, or several mixed into every
        batch at `shares` (`--source-weights`, by default each source's size)."""
        return self.data.train_iter(self.global_batch, self.workers, self.rank)

    def run(self) -> dict:
        """Train from `begin_epoch` to `end_epoch`; returns the last epoch's row of the history."""
        c = self.cfg
        if self.begin_epoch >= c.end_epoch:
            raise UserError(f"nothing to do: {c.prefix} is already at epoch {self.begin_epoch} "
                            f"(--end-epoch {c.end_epoch})")
        train_iter = self.train_iter()
        log.info("training %s on %s: %d train faces, batch %d per context x %d context(s) x %d worker(s)",
                 c.network, ",".join(str(x) for x in self.ctx), self.num_train, c.batch_size, len(self.ctx),
                 self.workers)
        row: dict = {}
        epoch = self.begin_epoch
        done = self.begin_epoch  # completed epochs
        with StopOnSignal() as stop:
            self._stop = stop
            for epoch in range(self.begin_epoch, c.end_epoch):
                row = self._epoch(epoch, train_iter)
                done = epoch if row.get("interrupted") else epoch + 1
                if row.get("stopped") or stop.signal:
                    break
            if stop.signal:
                # checked between batches: the signal never lands inside MXNet, the iterator or a save
                self.recorder.save_interrupted(self.net, self.trainer, done)
                del train_iter
                mx.nd.waitall()
                raise stop.exception()
        log.info("final parameters sha1 (worker %d): %s", self.rank, params_digest(self.net))
        return row

    def _epoch(self, epoch: int, train_iter: mx.io.DataIter) -> dict:
        c = self.cfg
        lr = lr_at(c, epoch)
        self.trainer.set_learning_rate(lr)
        train_iter.reset()  # ImageRecordIter reshuffles on reset, from its seeded generator
        meter = EpochMeter(epoch, c.log_interval, self.global_batch, c.age_decode)
        stopped = False
        per_epoch = self.data.steps(self.global_batch * self.workers)
        for nbatch, batch in enumerate(train_iter):
            if c.lr_schedule != "step" or epoch < c.warmup_epochs:
                lr = lr_at(c, epoch + nbatch / per_epoch)
                self.trainer.set_learning_rate(lr)
            label = batch.label[0]
            loss, outs = self.train_batch(batch.data[0], label)
            if not math.isfinite(loss):
                raise UserError(f"loss became {loss} at epoch {epoch} batch {nbatch}: training stopped; "
                                f"last good checkpoint: {self.checkpoints.last_completed()} (try a lower --lr)")
            meter.update(nbatch, loss, outs, label)
            if c.max_steps and self.step >= c.max_steps:
                stopped = True
                break
            if self._stop is not None and self._stop.signal:
                return {"stopped": True, "interrupted": True}
        row = meter.row(lr)
        self.recorder.save(self.net, self.trainer, epoch, stopped)  # before validation: a bad val.rec costs no epoch
        if self.data.has_val:
            row.update(self.validate(epoch))
        self.recorder.finish_epoch(epoch, row, meter.started, self.net)
        row["stopped"] = stopped
        return row


def build_network(cfg: TrainConfig) -> gluon.HybridBlock:
    """`cfg.network`'s network as its flags shape it, uninitialised; UserError for a bad combination."""
    try:
        return get_network(cfg.network, multiplier=cfg.multiplier, version_input=cfg.version_input,
                           version_output=cfg.version_output, use_se=cfg.use_se,
                           learn_output_scale=cfg.learn_output_scale)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def load_pretrained(net: gluon.HybridBlock, pretrained: str) -> None:
    """--pretrained: the weights of a checkpoint (`PREFIX,EPOCH`) or a bundled model's name that fit `net`;
    UserError when none does."""
    from agegender.model.mxnet_engine import resolve_model

    prefix, epoch = resolve_model(pretrained, "--pretrained")  # a bundled model's name: its checkpoint
    try:
        report = load_weights(net, prefix, epoch)
    except (ValueError, OSError, mx.base.MXNetError) as exc:
        raise UserError(f"--pretrained {pretrained}: {str(exc).splitlines()[0]}") from None
    if report.loaded == 0:
        raise UserError(f"--pretrained {pretrained}: no parameter fits this network ({report})")
    log.info("pretrained %s,%d: %s", prefix, epoch, report)


class StopOnSignal:
    """While active, the first Ctrl-C (SIGINT) or SIGTERM only sets `signal`; the training loop looks at it
    between batches, saves, and stops. Raising at the moment the signal arrives could land inside MXNet,
    the record iterator's prefetching or a checkpoint write. A second signal interrupts at once."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise self.exception(signum)
        self.signal = signum
        log.info("%s received: stopping after this batch (send it again to stop at once)",
                 "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C")

    def exception(self, signum: int | None = None) -> KeyboardInterrupt:
        return Terminated() if (signum or self.signal) == signal.SIGTERM else KeyboardInterrupt()

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


__all__ = ["TrainConfig", "Source", "load_sources", "interval_labels", "mix_band_weights", "band_sample_weights", "Fit",
           "TrainingData", "build_network", "load_pretrained", "StopOnSignal", "lr_at", "val_score",
           "age_band_weights", "params_digest"]
