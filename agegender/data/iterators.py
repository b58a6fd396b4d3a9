"""Batches for training and evaluation: packed `.rec` files through `mx.io.ImageRecordIter` (C++ decode,
threads), checked up front so a wrong file is a one-line error rather than a crash inside MXNet."""
from __future__ import annotations

import os
from dataclasses import dataclass

import mxnet as mx

from agegender.native_logs import native_info_hidden
import numpy as np

from agegender.errors import UserError, short_reason
from agegender.data.recordio import LABEL_WIDTH, unpack_record

INPUT_SIZE = 112


MAX_LABEL_AGE = 120


def check_rec(rec_path: str, image_size: int = INPUT_SIZE) -> int:
    """Check every record of a packed `.rec` (its `.idx` beside it): a parsable [gender, age] label with
    gender -1, 0 or 1 and a finite age in 0..120, and a decodable `image_size` face. Returns the record
    count; raises UserError naming the first bad record (MXNet's iterator would crash on it mid-run)."""
    import cv2

    idx_path = os.path.splitext(rec_path)[0] + ".idx"
    if not os.path.isfile(rec_path):
        raise UserError(f"record file not found: {rec_path} (pack one with create_dataset.py)")
    if not os.path.isfile(idx_path):
        raise UserError(f"index file not found: {idx_path} (it is written beside the .rec by create_dataset.py)")
    try:
        reader = mx.recordio.MXIndexedRecordIO(idx_path, rec_path, "r")
    except (mx.base.MXNetError, ValueError, OSError) as exc:
        raise UserError(f"cannot open {rec_path}: {short_reason(exc)}") from None
    try:
        keys = reader.keys
        if not keys:
            raise UserError(f"{rec_path} holds no records")
        for n, key in enumerate(keys):
            where = f"{rec_path}, record {n} (index key {key})"
            try:
                raw = reader.read_idx(key)
            except Exception:  # noqa: BLE001 -- MXNet raises assorted errors on a corrupt file
                raise UserError(f"{where}: cannot be read; the .rec is corrupt or does not match {idx_path}") from None
            try:
                rec = unpack_record(raw)
            except ValueError as exc:
                raise UserError(f"{where}: {exc}") from None
            except Exception:  # noqa: BLE001
                raise UserError(f"{where}: cannot be parsed; the .rec is corrupt") from None
            if not (np.isfinite(rec.age) and 0 <= rec.age <= MAX_LABEL_AGE):
                raise UserError(f"{where}: age {rec.age:g} is not a number of years in 0..{MAX_LABEL_AGE}")
            img = cv2.imdecode(np.frombuffer(rec.jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
            if img is None:
                raise UserError(f"{where}: holds no decodable image; repack the dataset")
            if img.shape[:2] != (image_size, image_size):
                raise UserError(f"{rec_path} holds {img.shape[1]}x{img.shape[0]} images; the network takes "
                                f"{image_size}x{image_size} (pack with --image-size {image_size})")
        return len(keys)
    finally:
        reader.close()


@dataclass
class Augment:
    """Training augmentation: random mirror, colour jitter strength, random-erasing square side; what the
    detector and the photo do to faces at inference: rotation (max degrees), scale (max relative change),
    shift (max pixels), greyscale, blur, JPEG recompression, sensor noise and the look of a scanned print
    (share of the faces); and mixup (the `a` of each batch's Beta(a, a) blend of two faces and their labels,
    0 = off)."""

    mirror: bool = False
    color: float = 0.0
    cutoff: int = 0
    rotate: float = 0.0
    scale: float = 0.0
    shift: int = 0
    gray: float = 0.0
    blur: float = 0.0
    jpeg: float = 0.0
    noise: float = 0.0
    scan: float = 0.0
    mixup: float = 0.0


def record_iter(rec_path: str, batch_size: int, train: bool, augment: Augment | None = None,
                threads: int = 2, seed: int = 0, num_parts: int = 1, part_index: int = 0,
                labels_lst: str = "", label_width: int = LABEL_WIDTH) -> mx.io.DataIter:
    """An ImageRecordIter giving `data` (N,3,112,112) RGB 0-255 float and `label` (N,2) = [gender, age].

    `train`: shuffled, augmented, last batch wrapped around; otherwise file order (read it through
    `eval_batches`, which drops the stale rows of the last batch). `labels_lst`: an im2rec `.lst` whose
    labels replace the records' own, matched by record index (the teacher's soft genders; with
    `label_width` 3, [gender, age_lo, age_hi] for interval labels)."""
    augment = augment or Augment()
    kwargs = dict(path_imgrec=rec_path, path_imgidx=os.path.splitext(rec_path)[0] + ".idx",
                  data_shape=(3, INPUT_SIZE, INPUT_SIZE), label_width=label_width, batch_size=batch_size,
                  preprocess_threads=max(1, threads), num_parts=num_parts, part_index=part_index,
                  verbose=False, ctx="cpu")
    if labels_lst:
        kwargs.update(path_imglist=labels_lst)
    if train:
        kwargs.update(shuffle=True, seed=seed, seed_aug=seed, rand_mirror=augment.mirror, round_batch=True)
        if augment.color > 0:
            kwargs.update(brightness=augment.color, contrast=augment.color, saturation=augment.color)
        if augment.rotate > 0:
            kwargs.update(max_rotate_angle=int(round(augment.rotate)))
        if augment.scale > 0:
            kwargs.update(max_random_scale=1 + augment.scale, min_random_scale=1 - augment.scale, rand_crop=True)
        if augment.shift > 0:  # pad, then a random 112x112 crop: a shift of up to `shift` pixels
            kwargs.update(pad=int(augment.shift), rand_crop=True)
        if augment.rotate > 0 or augment.scale > 0 or augment.shift > 0:
            kwargs.update(fill_value=0)  # black, as the corners of an aligned crop of a tight photo
    else:
        kwargs.update(shuffle=False, round_batch=False)
    with native_info_hidden():  # "Create ImageRecordIter2 optimized for CPU backend" on every iterator
        return mx.io.ImageRecordIter(**kwargs)


class MixedBatches:
    """Batches drawn from several sources at fixed shares: each batch is `sizes[i]` rows of source i's
    iterator (shuffled, augmented, restarted on its own when it runs out), concatenated. An epoch is
    `steps` batches. Mixing inside every batch, not batch by batch, keeps BatchNorm's batch statistics
    those of the mix the network will meet."""

    def __init__(self, iters: list[mx.io.DataIter], sizes: list[int], steps: int):
        if len(iters) != len(sizes) or min(sizes) < 1:
            raise ValueError("one positive batch share per source is needed")
        self.iters, self.sizes, self.steps = iters, sizes, steps

    def reset(self) -> None:
        """A new epoch: the per-source iterators continue where they were (each restarts when done)."""

    def _next(self, i: int) -> mx.io.DataBatch:
        try:
            return self.iters[i].next()
        except StopIteration:
            self.iters[i].reset()  # reshuffles, from its seeded generator
            return self.iters[i].next()

    def __iter__(self):
        for _ in range(self.steps):
            parts = [self._next(i) for i in range(len(self.iters))]
            data = mx.nd.concat(*[b.data[0] for b in parts], dim=0)
            label = mx.nd.concat(*[b.label[0] for b in parts], dim=0)
            yield mx.io.DataBatch(data=[data], label=[label], pad=0)


def batch_shares(batch: int, weights: list[float]) -> list[int]:
    """Rows of each source in a batch of `batch`: proportional to `weights`, at least one each, summing to
    `batch` (largest-remainder rounding)."""
    if len(weights) > batch:
        raise ValueError(f"a batch of {batch} cannot hold {len(weights)} sources")
    total = float(sum(weights))
    if not all(w > 0 for w in weights) or not np.isfinite(total):
        raise ValueError(f"source weights must be positive numbers, got {weights}")
    raw = [batch * w / total for w in weights]
    sizes = [max(1, int(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    k = 0
    while sum(sizes) < batch:
        sizes[order[k % len(order)]] += 1
        k += 1
    while sum(sizes) > batch:
        j = max(range(len(sizes)), key=lambda i: sizes[i])
        sizes[j] -= 1
    return sizes


def random_erase(data: mx.nd.NDArray, size: int, prob: float = 0.5) -> mx.nd.NDArray:
    """Cutout: with probability `prob` per image, a `size`x`size` square at a random centre is set to grey
    (127.5, zero after the network's normalisation). Array ops over the whole batch."""
    n, _, h, w = data.shape
    cy = mx.nd.random.uniform(0, h, shape=(n, 1, 1, 1))
    cx = mx.nd.random.uniform(0, w, shape=(n, 1, 1, 1))
    on = mx.nd.random.uniform(0, 1, shape=(n, 1, 1, 1)) < prob
    ys = mx.nd.arange(h).reshape((1, 1, h, 1))
    xs = mx.nd.arange(w).reshape((1, 1, 1, w))
    inside = mx.nd.broadcast_mul(mx.nd.abs(mx.nd.broadcast_sub(ys, cy)) < size / 2,
                                 mx.nd.abs(mx.nd.broadcast_sub(xs, cx)) < size / 2)
    mask = mx.nd.broadcast_mul(inside, on)
    return mx.nd.broadcast_add(mx.nd.broadcast_mul(data, 1 - mask), mask * 127.5)


def mix_batch(data: mx.nd.NDArray, label: mx.nd.NDArray, alpha: float) -> tuple[mx.nd.NDArray, mx.nd.NDArray, float]:
    """Mixup: every image blended with another of the batch, lam x image + (1 - lam) x partner, one
    lam ~ Beta(alpha, alpha) for the batch. Returns (blended images, the partners' labels, lam); the loss is
    then lam x loss(own labels) + (1 - lam) x loss(partners' labels)."""
    lam = float(np.random.beta(alpha, alpha))
    partner = mx.nd.array(np.random.permutation(data.shape[0]), dtype="int64")
    return lam * data + (1 - lam) * data.take(partner), label.take(partner), lam


def downscale(data: mx.nd.NDArray, side: int) -> mx.nd.NDArray:
    """Faces scaled down to `side` x `side` pixels and back up to their size: the softness of a small face."""
    small = mx.nd.contrib.BilinearResize2D(data, height=side, width=side)
    return mx.nd.contrib.BilinearResize2D(small, height=data.shape[2], width=data.shape[3])


def _share(n: int, share: float) -> mx.nd.NDArray:
    """(n,1,1,1) mask: 1 for a random share of the faces."""
    return mx.nd.random.uniform(0, 1, shape=(n, 1, 1, 1)) < share


def _per_face(n: int, lo: float, hi: float) -> mx.nd.NDArray:
    return mx.nd.random.uniform(lo, hi, shape=(n, 1, 1, 1))


def _luma(data: mx.nd.NDArray) -> mx.nd.NDArray:
    """(N,1,H,W) grey levels of an RGB batch (BT.601)."""
    return data[:, 0:1] * 0.299 + data[:, 1:2] * 0.587 + data[:, 2:3] * 0.114


def degrade(data: mx.nd.NDArray, gray: float = 0.0, blur: float = 0.0) -> mx.nd.NDArray:
    """Greyscale a share `gray` of the faces, and blur a share `blur` of them by a down- and up-scaling
    to a random side between 32 and 80 pixels (small or soft faces at inference). Array ops."""
    n = data.shape[0]
    if gray > 0:
        data = mx.nd.where(_share(n, gray).broadcast_to(data.shape), _luma(data).broadcast_to(data.shape), data)
    if blur > 0:
        soft = downscale(data, int(np.random.randint(32, 81)))
        data = mx.nd.where(_share(n, blur).broadcast_to(data.shape), soft, data)
    return data


NOISE_SIGMA = (3.0, 15.0)  # grey levels: a phone photo in dim light to a badly lit webcam


def add_noise(data: mx.nd.NDArray, share: float, sigma: tuple[float, float] = NOISE_SIGMA) -> mx.nd.NDArray:
    """Gaussian sensor noise on a share `share` of the faces, a standard deviation drawn per face in `sigma`
    (grey levels), half of the faces' noise the same in every channel (luma noise), half per channel."""
    n = data.shape[0]
    s = _per_face(n, *sigma) * _share(n, share)
    luma = mx.nd.random.normal(0, 1, shape=(n, 1) + data.shape[2:]).broadcast_to(data.shape)
    colour = mx.nd.random.normal(0, 1, shape=data.shape)
    grain = mx.nd.where(_share(n, 0.5).broadcast_to(data.shape), luma, colour)
    return mx.nd.clip(data + grain * s.broadcast_to(data.shape), 0, 255)


SEPIA = (1.0, 0.85, 0.66)  # the warm cast of an aged colour or black-and-white print, per RGB channel


def scanned_print(data: mx.nd.NDArray, share: float) -> mx.nd.NDArray:
    """The look of an old print on a scanner, on a share `share` of the faces (the family albums people
    scan): colour faded towards a warm monochrome, contrast lowered and blacks lifted (ink on paper), a
    little softness, and paper grain. Each face draws its own tone, contrast and grain; the softness is
    one draw per batch."""
    n = data.shape[0]
    on = _share(n, share).broadcast_to(data.shape)
    luma = _luma(data)
    tint = mx.nd.array(SEPIA, ctx=data.context).reshape((1, 3, 1, 1))
    fade = _per_face(n, 0.4, 1.0)  # how far the colour has gone to the warm monochrome
    toned = data * (1 - fade) + (luma * tint) * fade
    contrast, lift = _per_face(n, 0.55, 0.9), _per_face(n, 10.0, 50.0)
    printed = lift + toned * contrast
    soft = downscale(printed, int(np.random.randint(56, 97)))
    grain = mx.nd.random.normal(0, 1, shape=(n, 1) + data.shape[2:]) * _per_face(n, 2.0, 8.0)
    out = mx.nd.clip(soft + grain.broadcast_to(data.shape), 0, 255)
    return mx.nd.where(on, out, data)


JPEG_QUALITY = (15, 75)  # UTKFace's chips are quality 75 already; heavily compressed photos go far lower


def recompress(data: mx.nd.NDArray, share: float, quality: tuple[int, int] = JPEG_QUALITY) -> mx.nd.NDArray:
    """JPEG-encode and decode a share `share` of the faces at a random quality in `quality` (inclusive):
    the blocking and ringing of compressed photos, which make the model read faces older."""
    from agegender.data.image import decode_image, encode_jpeg

    on = np.flatnonzero(np.random.uniform(size=data.shape[0]) < share)
    if on.size == 0:
        return data
    faces = data.asnumpy()
    for i in on:
        rgb = np.clip(faces[i].transpose(1, 2, 0) + 0.5, 0, 255).astype(np.uint8)
        quality_i = int(np.random.randint(quality[0], quality[1] + 1))
        faces[i] = decode_image(encode_jpeg(rgb, quality_i)).transpose(2, 0, 1)
    return mx.nd.array(faces, ctx=data.context)


def augment_batch(data: mx.nd.NDArray, label: mx.nd.NDArray, augment: Augment
                  ) -> tuple[mx.nd.NDArray, tuple[mx.nd.NDArray, float] | None]:
    """The augmentation that runs on a decoded training batch (the record iterator does the rest):
    greyscale and blur, scanned prints, noise, JPEG recompression, random erasing, then mixup. Returns
    (images, (partners' labels, lam) or None)."""
    if augment.gray > 0 or augment.blur > 0:
        data = degrade(data, augment.gray, augment.blur)
    if augment.scan > 0:
        data = scanned_print(data, augment.scan)
    if augment.noise > 0:
        data = add_noise(data, augment.noise)
    if augment.jpeg > 0:
        data = recompress(data, augment.jpeg)
    if augment.cutoff > 0:
        data = random_erase(data, augment.cutoff)
    if augment.mixup <= 0:
        return data, None
    data, partners, lam = mix_batch(data, label, augment.mixup)
    return data, (partners, lam)


def batch_faces(data: mx.nd.NDArray) -> np.ndarray:
    """A decoded batch (N,3,S,S float, RGB 0-255) as the faces it holds: (N,S,S,3) RGB uint8."""
    return np.clip(data.asnumpy().transpose(0, 2, 3, 1) + 0.5, 0, 255).astype(np.uint8)


def eval_batches(it: mx.io.DataIter, total: int):
    """Yield (data, label) of an evaluation iterator with the tail cut to `total` records: with
    round_batch=False ImageRecordIter fills its last batch with stale rows and reports pad 0."""
    seen = 0
    for batch in it:
        n = min(batch.data[0].shape[0], total - seen)
        if n <= 0:
            break
        seen += n
        yield batch.data[0][:n], batch.label[0][:n]


def to_numpy_labels(label: mx.nd.NDArray) -> tuple[np.ndarray, np.ndarray]:
    """(gender, age) columns of a (N,2) label batch, a soft gender rounded to 1 / 0 (-1 stays unknown); of a
    (N,3) interval batch, the age is the group's midpoint as packed (`group_midpoint`)."""
    from agegender.data.sources import group_midpoint

    lab = label.asnumpy()
    gender = np.where(lab[:, 0] < 0, -1.0, (lab[:, 0] >= 0.5).astype(np.float32))
    if lab.shape[1] == 3:
        return gender, np.where(lab[:, 2] > lab[:, 1], group_midpoint(lab[:, 1], lab[:, 2]), lab[:, 1])
    return gender, lab[:, 1]


__all__ = ["check_rec", "record_iter", "MixedBatches", "batch_shares", "Augment", "augment_batch", "random_erase", "degrade", "downscale", "recompress",
           "mix_batch", "eval_batches", "to_numpy_labels", "INPUT_SIZE"]
