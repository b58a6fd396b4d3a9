"""Networks, the output contract, checkpoint round trips, loss and decoding, InsightFace's checkpoint."""
from __future__ import annotations

import os

import mxnet as mx
import numpy as np
import pytest

from agegender.symbols import get_network, load_model, save_checkpoint, to_symbol
from tests.conftest import run_script, shared_path
from agegender.model.age import age_gender_loss, age_targets, decode


def _forward(net, n=2, seed=0):
    x = mx.nd.array(np.random.RandomState(seed).uniform(0, 255, (n, 3, 112, 112)))
    return net(x).asnumpy()


@pytest.mark.parametrize("name,mult,vin", [("m50", 0.25, 1), ("m50", 0.5, 1), ("m50", 1.0, 1), ("m50", 0.25, 0),
                                           ("r18", 1.0, 1), ("r50", 1.0, 1), ("d10", 1.0, 1)])
def test_output_name_and_shape(name, mult, vin):
    net = get_network(name, multiplier=mult, version_input=vin)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    assert _forward(net).shape == (2, 202)
    sym = to_symbol(net)
    assert sym.list_outputs() == ["fc1_output"]
    _, out_shapes, _ = sym.infer_shape(data=(3, 3, 112, 112))
    assert out_shapes == [(3, 202)]


def test_unknown_network_is_refused():
    with pytest.raises(ValueError):
        get_network("vgg16")
    with pytest.raises(ValueError):
        get_network("r42")


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    net = get_network("m50", multiplier=0.25)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    expected = _forward(net)
    prefix = str(tmp_path / "model")
    save_checkpoint(net, prefix, 3)
    assert os.path.isfile(prefix + "-symbol.json") and os.path.isfile(prefix + "-0003.params")
    sym, arg, aux = mx.model.load_checkpoint(prefix, 3)  # what code written for InsightFace's files does
    assert "fc1_output" in sym.get_internals().list_outputs()
    assert any(k.endswith("running_mean") for k in aux)
    np.testing.assert_allclose(load_model(prefix, 3)(mx.nd.array(np.random.RandomState(0).uniform(
        0, 255, (2, 3, 112, 112)))).asnumpy(), expected, rtol=1e-5, atol=1e-5)


def test_averaged_checkpoint_is_the_mean_of_the_epochs(tmp_path):
    """tools/average_checkpoints.py: every weight and BatchNorm statistic is the mean of the epochs'."""
    prefix = str(tmp_path / "run")
    saved = []
    for epoch, seed in ((1, 1), (2, 2), (3, 3)):
        mx.random.seed(seed)
        net = get_network("m50", multiplier=0.25)
        net.initialize(mx.init.Xavier())
        net(mx.nd.zeros((1, 3, 112, 112)))  # shapes are known after a first forward
        for name, param in net.collect_params().items():  # distinct BatchNorm statistics per epoch too
            if name.endswith(("running_mean", "running_var")):
                param.set_data(mx.nd.random.uniform(0.5, 1.5, param.shape))
        net.hybridize()
        save_checkpoint(net, prefix, epoch)
        saved.append(mx.model.load_checkpoint(prefix, epoch))
    out = str(tmp_path / "mean")
    proc = run_script("tools/average_checkpoints.py", prefix, "1-2,3", out, check=True)
    assert "3 epochs" in proc.stdout
    _, arg, aux = mx.model.load_checkpoint(out, 0)
    for got, index in ((arg, 1), (aux, 2)):
        for name, value in got.items():
            mean = sum(s[index][name].asnumpy() for s in saved) / 3
            np.testing.assert_allclose(value.asnumpy(), mean, rtol=1e-5, atol=1e-6)
    assert any(k.endswith("running_var") for k in aux)

    # two runs (the same epochs of each): the mean of all their checkpoints
    other = str(tmp_path / "other")
    for epoch in (1, 3):
        mx.random.seed(10 + epoch)
        net = get_network("m50", multiplier=0.25)
        net.initialize(mx.init.Xavier())
        net(mx.nd.zeros((1, 3, 112, 112)))
        net.hybridize()
        save_checkpoint(net, other, epoch)
    both = str(tmp_path / "both")
    proc = run_script("tools/average_checkpoints.py", f"{prefix},{other}", "1,3", both, check=True)
    assert f"{prefix} and {other}" in proc.stdout
    pool = [saved[0], saved[2]] + [mx.model.load_checkpoint(other, e) for e in (1, 3)]
    _, arg, _ = mx.model.load_checkpoint(both, 0)
    for name, value in arg.items():
        np.testing.assert_allclose(value.asnumpy(), sum(s[1][name].asnumpy() for s in pool) / 4, rtol=1e-5, atol=1e-6)

    missing = run_script("tools/average_checkpoints.py", prefix, "1-4", out)
    assert missing.returncode != 0 and "model file not found" in missing.stderr and "Traceback" not in missing.stderr
    bad = run_script("tools/average_checkpoints.py", prefix, "3-1", out)
    assert bad.returncode == 2 and "bad epochs" in bad.stderr and "Traceback" not in bad.stderr


def test_decode_hand_made_logits():
    out = np.zeros((2, 202))
    out[0, :2] = [0.0, np.log(3.0)]          # P(male) = 0.75
    out[0, 3:2 + 2 * 30:2] = 10.0             # "age > k" is yes for k < 30 ...
    out[0, 2 + 2 * 30::2] = 10.0              # ... and no for the rest
    out[1, :2] = [5.0, -5.0]                  # female
    out[1, 3::2] = np.log(0.6 / 0.4)          # P(age > k) = 0.6 for every k; argmax says yes
    p_male, age = decode(out, "prob")
    np.testing.assert_allclose(p_male[0], 0.75)
    assert p_male[1] < 0.001
    np.testing.assert_allclose(age, [30.0, 60.0], atol=0.01)
    _, vote = decode(out, "vote")
    np.testing.assert_array_equal(vote, [30, 100])
    with pytest.raises(ValueError):
        decode(out[:, :200])


def test_age_targets_and_loss_on_hand_made_logits():
    t = age_targets(mx.nd, mx.nd.array([0, 3, 150])).asnumpy()
    assert t.shape == (3, 100)
    assert t[0].sum() == 0 and t[1].tolist()[:4] == [1, 1, 1, 0] and t[1].sum() == 3 and t[2].sum() == 100
    zeros = mx.nd.zeros((2, 202))
    loss = age_gender_loss(mx.nd, zeros, mx.nd.array([[1, 30], [-1, 30]])).asnumpy()
    np.testing.assert_allclose(loss, [101 * np.log(2), 100 * np.log(2)], rtol=1e-5)  # unknown gender adds nothing
    weighted = age_gender_loss(mx.nd, zeros, mx.nd.array([[1, 30], [-1, 30]]), gender_weight=3.0).asnumpy()
    np.testing.assert_allclose(weighted, [103 * np.log(2), 100 * np.log(2)], rtol=1e-5)
    good = np.zeros((1, 202))
    good[0, :2] = [-20, 20]
    good[0, 3:2 + 2 * 30:2] = 20
    good[0, 2 + 2 * 30::2] = 20
    assert age_gender_loss(mx.nd, mx.nd.array(good), mx.nd.array([[1, 30]])).asscalar() < 1e-6
    assert age_gender_loss(mx.nd, mx.nd.array(good), mx.nd.array([[0, 60]])).asscalar() > 10


@pytest.fixture(scope="module")
def real_faces(tmp_path_factory):
    """~300 real UTKFace faces packed with our alignment, as (N,3,112,112) RGB and labels."""
    src = shared_path("data", "utkface")
    tmp = tmp_path_factory.mktemp("utk")
    names = sorted(os.listdir(src))[::70][:300]
    (tmp / "utk").mkdir()
    for n in names:
        os.symlink(os.path.join(src, n), tmp / "utk" / n)
    run_script("create_dataset.py", "--utkface", str(tmp / "utk"), "--val-ratio", "0", "--output", str(tmp / "out"),
               check=True)
    from agegender.data.recordio import iter_records
    recs = list(iter_records(str(tmp / "out" / "train.rec")))
    imgs = np.stack([mx.image.imdecode(r.jpeg).asnumpy() for r in recs]).transpose(0, 3, 1, 2).astype(np.float32)
    return imgs, np.array([r.gender for r in recs]), np.array([r.age for r in recs])


def test_insightface_checkpoint_loads_and_our_decoding_equals_its_own(real_faces):
    prefix = os.path.join(shared_path("weights", "insightface-genderage"), "model")
    net = load_model(prefix, 0)
    imgs, gender, age = real_faces
    out = np.concatenate([net(mx.nd.array(imgs[i:i + 100])).asnumpy() for i in range(0, len(imgs), 100)])
    assert out.shape == (len(imgs), 202)
    # InsightFace's own decoding: gender = argmax of [0:2]; age = sum of argmax over the 100 pairs
    own_gender = out[:, 0:2].argmax(axis=1)
    own_age = sum(out[:, 2 + 2 * k: 4 + 2 * k].argmax(axis=1) for k in range(100))
    p_male, vote_age = decode(out, "vote")
    np.testing.assert_array_equal((p_male > 0.5).astype(int), own_gender)
    np.testing.assert_array_equal(vote_age, own_age)
    # our alignment and RGB storage are what the model expects: it does as published (~0.84 / ~7.4) ...
    acc, mae = (own_gender == gender).mean(), np.abs(own_age - age).mean()
    assert acc > 0.78 and mae < 9.5, (acc, mae)
    # ... and clearly better than on colour-swapped (BGR) input
    swapped = np.concatenate([net(mx.nd.array(imgs[i:i + 100, ::-1])).asnumpy() for i in range(0, len(imgs), 100)])
    assert (swapped[:, 0:2].argmax(axis=1) == gender).mean() < acc
