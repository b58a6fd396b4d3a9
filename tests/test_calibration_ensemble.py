"""Calibration and the gender ensemble: the expected calibration error and the temperature fit on hand-made
numbers, the gender temperature read from ONNX metadata and applied to P(male), the teacher chip aligned from
our landmarks (synthetic image; real photos when ../shared is there), and FaceAnalyzer's ensemble."""
from __future__ import annotations

import glob
import json
import os

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import shared_path
from agegender.model.age import Widening
from agegender.data.face import TEACHER_TEMPLATE, Face, align_face, teacher_chip
from agegender.errors import UserError
from agegender.model.engine import NUM_OUTPUTS, OnnxEngine, with_temperature
from agegender.model.ensemble import TEACHER_ONNX, TeacherGender, ensemble_p_male
from agegender.model.metrics import expected_calibration_error, fit_teacher_weight, fit_temperature


# --- expected calibration error and temperature ----------------------------------------------------------
def test_ece_of_hand_made_numbers():
    # bins: [0,.1) one female at .05 -> gap .05; [.1,.2) one male at .15 -> .85; [.9,1] .95 and 1.0, one male
    # of two -> |.5 - .975| = .475, twice: (.05 + .85 + .95) / 4
    p = np.array([0.05, 0.15, 0.95, 1.0])
    g = np.array([0, 1, 1, 0])
    assert expected_calibration_error(p, g) == pytest.approx((0.05 + 0.85 + 2 * 0.475) / 4)


def test_ece_is_zero_when_each_bin_holds_its_own_share_and_ignores_unknown_genders():
    p = np.array([0.25] * 4 + [0.75] * 4 + [0.9])
    g = np.array([1, 0, 0, 0, 1, 1, 1, 0, -1])  # a quarter male at .25, three quarters at .75; -1 unknown
    assert expected_calibration_error(p, g) == pytest.approx(0.0)
    assert np.isnan(expected_calibration_error(p[-1:], g[-1:]))


def test_temperature_fit_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, 40000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z / 2.0))).astype(float)  # true P(male) = sigmoid(z / 2)
    t = fit_temperature(z, y)
    assert t == pytest.approx(2.0, rel=0.05)
    before = expected_calibration_error(1 / (1 + np.exp(-z)), y)
    after = expected_calibration_error(1 / (1 + np.exp(-z / t)), y)
    assert before > 0.05 and after < 0.01


# --- temperature stored in the ONNX metadata -------------------------------------------------------------
def tiny_model(metadata: dict[str, str] | None = None) -> bytes:
    """(N,3,112,112) -> (N,202): the channel means times a fixed matrix; gender logits 3*r - 1*b."""
    w = np.zeros((3, NUM_OUTPUTS), np.float32)
    w[0, 1], w[2, 0] = 3.0, 1.0
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["data"], ["m"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["out"])], "tiny",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", NUM_OUTPUTS])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


def faces_of(colours) -> np.ndarray:
    return np.stack([np.full((112, 112, 3), c, np.uint8) for c in colours])


def test_onnx_engine_applies_the_stored_gender_temperature():
    faces = faces_of([(1, 0, 0), (0, 0, 2), (1, 0, 1)])
    logit = np.array([3.0, -2.0, 2.0])  # male minus female logit of each face
    plain = OnnxEngine("tiny.onnx", model=tiny_model())
    assert plain.gender_temperature == 1.0
    p, _ = plain.predict_faces(faces, flip=False)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-logit)), rtol=1e-5)
    stored = OnnxEngine("tiny.onnx", model=with_temperature(tiny_model({"producer": "x"}), 2.5))
    assert stored.gender_temperature == 2.5
    p, _ = stored.predict_faces(faces, flip=False)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-logit / 2.5)), rtol=1e-5)
    meta = {m.key: m.value for m in onnx.load_from_string(with_temperature(tiny_model({"producer": "x"}), 2.5))
            .metadata_props}
    assert meta == {"producer": "x", "gender_temperature": "2.5000"}  # other metadata kept


@pytest.mark.parametrize("bad", ["0", "-1", "warm", "nan"])
def test_a_stored_temperature_that_is_not_a_positive_number_is_refused_at_load(bad):
    with pytest.raises(UserError, match="gender_temperature"):
        OnnxEngine("tiny.onnx", model=tiny_model({"gender_temperature": bad}))


# --- the ensemble's weight for the teacher -----------------------------------------------------------------
def test_the_ensemble_mixes_the_two_nets_at_the_teachers_weight_the_plain_mean_by_default():
    ours, teacher = np.array([0.9, 0.2, 0.6]), np.array([0.1, 0.6, 0.2])
    np.testing.assert_allclose(ensemble_p_male(ours, teacher), (ours + teacher) / 2)
    np.testing.assert_allclose(ensemble_p_male(ours, teacher, 0.0), ours)
    np.testing.assert_allclose(ensemble_p_male(ours, teacher, 1.0), teacher)
    np.testing.assert_allclose(ensemble_p_male(ours, teacher, 0.25), 0.75 * ours + 0.25 * teacher)


def test_the_teacher_weight_fit_takes_the_most_accurate_mix_ties_going_to_the_plain_mean():
    gender = np.array([1, 1, 0, 0, -1])
    ours = np.array([0.9, 0.4, 0.1, 0.3, 0.9])
    teacher = np.array([0.3, 0.95, 0.1, 0.9, 0.0])  # the unknown gender (-1) must not count
    # all four right for w in 0.2..0.3 (face 2 needs w >= 0.19, face 4 w < 0.34): the one nearest 0.5
    assert fit_teacher_weight(ours, teacher, gender) == 0.3
    assert fit_teacher_weight(ours[:3], teacher[:3], gender[:3]) == 0.5  # right from 0.2 to 0.65: the mean
    assert fit_teacher_weight(ours, teacher, np.full(5, -1)) == 0.5  # nothing known: the plain mean
    # ours barely right, the teacher sure and wrong: right only for w < 0.09, so 0.05 (of 0 and 0.05)
    assert fit_teacher_weight(np.array([0.55, 0.45]), np.array([0.0, 1.0]), np.array([1, 0])) == 0.05
    # two males, one right for w <= 0.47 only, the other for w >= 0.53 only: every weight but 0.5 ties at one of
    # two; the nearest to 0.5 are 0.45 and 0.55, and of two as near the lower one wins
    assert fit_teacher_weight(np.array([0.95, 0.0]), np.array([0.0, 0.95]), np.array([1, 1])) == 0.45


def test_onnx_engine_reads_the_stored_teacher_weight_and_with_temperature_writes_it():
    assert OnnxEngine("tiny.onnx", model=tiny_model()).teacher_weight == 0.5  # none stored: the plain mean
    assert OnnxEngine("tiny.onnx", model=tiny_model({"gender_teacher_weight": "0.25"})).teacher_weight == 0.25
    written = with_temperature(tiny_model({"producer": "x"}), 2.5, teacher_weight=0.3)
    assert {m.key: m.value for m in onnx.load_from_string(written).metadata_props}["gender_teacher_weight"] == "0.3"
    assert OnnxEngine("tiny.onnx", model=written).teacher_weight == 0.3
    exact = with_temperature(tiny_model(), 2.5, teacher_weight=1 / 3)  # not rounded: the checkpoint's w, exactly
    assert OnnxEngine("tiny.onnx", model=exact).teacher_weight == 1 / 3
    assert str(OnnxEngine("tiny.onnx", model=tiny_model({"gender_teacher_weight": "-0.0"})).teacher_weight) == "0.0"


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "nan", "heavy", ""])
def test_a_stored_teacher_weight_outside_0_to_1_is_refused_at_load(bad):
    with pytest.raises(UserError, match="gender_teacher_weight"):
        OnnxEngine("tiny.onnx", model=tiny_model({"gender_teacher_weight": bad}))


# --- the teacher's chip from our landmarks ---------------------------------------------------------------
def blob_centre(img: np.ndarray, near: np.ndarray, radius: int = 3) -> np.ndarray:
    """Intensity-weighted centre of the bright blob around `near` in a one-channel image."""
    x0, y0 = (int(round(v)) for v in near)
    patch = img[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1].astype(np.float64)
    ys, xs = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    return np.array([(xs * patch).sum(), (ys * patch).sum()]) / patch.sum()


def test_teacher_chip_puts_our_landmarks_on_the_template():
    # a face 6x the chip's size, turned 20 degrees: five blobs where its landmarks are
    angle, scale, shift = np.deg2rad(20), 6.0, np.array([170.0, 150.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = (TEACHER_TEMPLATE - 16) @ rot.T + shift
    img = np.zeros((320, 340, 3), np.uint8)
    for x, y in landmarks:
        cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), 9 * 16, (255, 255, 255), -1, cv2.LINE_AA, shift=4)
    chip = teacher_chip(img, landmarks)
    assert chip.shape == (32, 32, 3) and chip.dtype == np.uint8
    for want in TEACHER_TEMPLATE:
        np.testing.assert_allclose(blob_centre(chip[..., 0], want), want, atol=0.25)


def test_teacher_chip_is_black_outside_the_image():
    img = np.full((200, 200, 3), 200, np.uint8)
    landmarks = TEACHER_TEMPLATE * 4 - 40  # the chip's top-left corner lies outside the image
    chip = teacher_chip(img, landmarks)
    assert chip[0, 0].max() == 0 and chip[-1, -1].min() == 200


def test_teacher_net_reads_rgb_chips():
    teacher = TeacherGender(TEACHER_ONNX, threads=1)
    chips = faces_of([(120, 110, 100), (30, 30, 30)])[:, :32, :32]
    p = teacher.p_male(chips)
    assert p.shape == (2,) and np.all((p >= 0) & (p <= 1))
    assert teacher.p_male(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0,)
    with pytest.raises(UserError, match="not found"):
        TeacherGender("no-such.onnx")


# --- the ensemble in FaceAnalyzer ------------------------------------------------------------------------
class OneFace:
    name, thread_safe = "fixed", True

    def __init__(self, landmarks):
        self.face = Face(np.array([0, 0, 100, 100], np.float32), 0.99, np.asarray(landmarks, np.float32))

    def detect(self, rgb):
        return [self.face]


def test_analyzer_ensemble_averages_ours_and_the_teachers_p_male():
    from agegender.serving.analyzer import FaceAnalyzer, FaceCrops

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (160, 160, 3), dtype=np.uint8)
    landmarks = TEACHER_TEMPLATE * 3 + 30
    engine = OnnxEngine("tiny.onnx", model=tiny_model())
    teacher = TeacherGender(threads=1)
    alone = FaceAnalyzer(OneFace(landmarks), engine)
    both = FaceAnalyzer(OneFace(landmarks), engine, teacher=teacher)
    _, crops = alone.detect(rgb)
    _, pairs = both.detect(rgb)
    assert isinstance(pairs[0], FaceCrops) and not isinstance(crops[0], FaceCrops)
    np.testing.assert_array_equal(pairs[0].net, align_face(rgb, landmarks))
    ours, age = alone.label(crops)
    mean, age_both = both.label(pairs)
    want = ensemble_p_male(ours, teacher.p_male(teacher_chip(rgb, landmarks)[None]))
    np.testing.assert_allclose(mean, want)
    np.testing.assert_array_equal(age, age_both)  # the ensemble is gender only
    assert [round(r.p_male, 6) for r in both.analyze(rgb)] == [round(float(want[0]), 6)]
    # a model that stores its own weight for the teacher (tools/calibrate.py) is mixed at it
    weighted = OnnxEngine("tiny.onnx", model=tiny_model({"gender_teacher_weight": "0.2"}))
    light, _ = FaceAnalyzer(OneFace(landmarks), weighted, teacher=teacher).label(pairs)
    np.testing.assert_allclose(light, ensemble_p_male(ours, teacher.p_male(teacher_chip(rgb, landmarks)[None]), 0.2))
    assert abs(float(light[0] - mean[0])) > 1e-3


# --- real photos --------------------------------------------------------------------------------------------
def test_teacher_via_our_alignment_labels_real_all_age_faces():
    """The template was fitted on training photos; on 40 adults of AAF's layout (ids below 07381 female,
    above male) the teacher must stay as accurate as through its own dlib chips (0.96 on AAF val)."""
    from agegender.data.face import load_detector, pick_main_face
    from agegender.data.image import read_image

    folder = shared_path("data", "aaf", "original images")
    paths = sorted(glob.glob(os.path.join(folder, "*.jpg")))
    paths = [p for p in paths if int(os.path.basename(p)[6:8]) >= 20][::150][:40]
    detector, teacher = load_detector(threads=1), TeacherGender(threads=1)
    chips, males = [], []
    for path in paths:
        rgb = read_image(path)
        face = pick_main_face(detector.detect(rgb), rgb.shape)
        if face is not None:
            chips.append(teacher_chip(rgb, face.landmarks))
            males.append(int(os.path.basename(path)[:5]) >= 7381)
    assert len(chips) >= 35
    p = teacher.p_male(np.stack(chips))
    assert np.mean((p >= 0.5) == np.array(males)) >= 0.9


def test_the_gender_ensemble_is_on_by_default_and_changes_gender_only():
    """infer.py (--gender-ensemble, the default): the same faces and ages as --no-gender-ensemble, and P(male)
    the mean of ours and the teacher's."""
    import json

    from tests.conftest import run_script
    from agegender.data.demo import wheel_image
    from agegender.data.image import read_image
    from agegender.serving.analyzer import FaceAnalyzer

    image = wheel_image("t1.jpg")
    docs = [json.loads(run_script("infer.py", "--json", "--image", image, *flag, check=True).stdout)[0]["faces"]
            for flag in (["--no-gender-ensemble"], ["--gender-ensemble"], [])]
    assert docs[2] == docs[1]  # on by default (round 4)
    assert [f["box"] for f in docs[0]] == [f["box"] for f in docs[1]] and len(docs[0]) == 6
    assert [f["age"] for f in docs[0]] == [f["age"] for f in docs[1]]
    analyzer = FaceAnalyzer.from_options(net_threads=1, gender_ensemble=False)
    rgb = read_image(image)
    faces, crops = analyzer.detect(rgb)
    ours = analyzer.label(crops)[0]
    teacher = TeacherGender(threads=1).p_male(np.stack([teacher_chip(rgb, f.landmarks) for f in faces]))
    p_male = [f["p_male"] for f in docs[1]]
    np.testing.assert_allclose(p_male, ensemble_p_male(ours, teacher), atol=1e-4)
    assert not np.allclose(ours, p_male, atol=1e-3)


def test_report_tools_on_a_small_list_of_real_photos(tmp_path):
    """tools/calibrate.py fits T, prints the ECE table and stores T in a model the onnx engine then reads;
    tools/ensemble_report.py prints the three accuracies and the cost."""
    import re

    from tests.conftest import run_script

    folder = shared_path("data", "aaf", "original images")
    names = sorted(os.listdir(folder))
    picks = names[:3000:500] + names[-3000::500]  # female ids first, male ids last
    lst = tmp_path / "val.lst"
    lst.write_text("".join(f"{i}\t{int(int(n[:5]) >= 7381)}\t{int(n[6:8])}\t{os.path.join(folder, n)}\n"
                           for i, n in enumerate(picks)))
    out = tmp_path / "calibrated.onnx"
    proc = run_script("tools/calibrate.py", "--lst", str(lst), "--write", str(out), check=True)
    t = float(re.search(r"T = ([0-9.]+)", proc.stdout).group(1))
    assert "| all | " in proc.stdout and OnnxEngine(str(out)).gender_temperature == pytest.approx(t, abs=1e-4)
    w = float(re.search(r"teacher weight w = ([0-9.]+) \(accuracy on 12 faces", proc.stdout).group(1))
    assert OnnxEngine(str(out)).teacher_weight == w and 0.0 <= w <= 1.0  # the ensemble's weight travels too
    # the age range's widening, fitted on the even records and reported on the odd, travels in the same model
    fitted = re.search(r"^(\{\"levels\".*\})$", proc.stdout, re.M).group(1)
    assert OnnxEngine(str(out)).age_widening == Widening.from_dict(fitted)
    assert re.search(r"odd records \(6 faces\), coverage by level: 50% raw", proc.stdout)
    proc = run_script("tools/ensemble_report.py", "--lst", str(lst), check=True)
    assert re.search(r"\| all \| \d+ \| [01]\.\d{4} \| [01]\.\d{4} \| [01]\.\d{4} \|", proc.stdout)
    assert "faces/s" in proc.stdout


def test_calibrate_refuses_a_list_without_a_known_gender_and_keeps_the_model(tmp_path):
    """Faces with no gender label cannot fit T or the teacher weight: a one-line error, nothing written
    (before, T = 1 and w = 0.5 replaced the stored ones)."""
    from tests.conftest import run_script

    folder = shared_path("data", "aaf", "original images")
    names = sorted(os.listdir(folder))[:3]
    lst = tmp_path / "val.lst"
    lst.write_text("".join(f"{i}\t-1\t{int(n[6:8])}\t{os.path.join(folder, n)}\n" for i, n in enumerate(names)))
    out = tmp_path / "out.onnx"
    proc = run_script("tools/calibrate.py", "--model", "models/agegender-open.onnx", "--lst", str(lst),
                      "--gender-only", "--write", str(out))
    assert proc.returncode == 2 and "no face with a known gender" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and not out.exists()


def test_calibrate_write_needs_an_onnx_model(tmp_path):
    from tests.conftest import run_script

    proc = run_script("tools/calibrate.py", "--model", "models/agegender,0", "--write", str(tmp_path / "x.onnx"))
    assert proc.returncode == 2 and "-calibration.json" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "x.onnx").exists()
    for model in ("models/agegender,0", "models/agegender.onnx"):  # a calibration file no engine would read
        proc = run_script("tools/calibrate.py", "--model", model, "--write", str(tmp_path / "m-calibration.json"))
        assert proc.returncode == 2 and "beside it" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "m-calibration.json").exists()
    model = tmp_path / "model.onnx"  # the model it measures is an input: never replaced by its calibrated copy
    model.write_bytes(open(os.path.join(os.path.dirname(TEACHER_ONNX), "agegender.onnx"), "rb").read())
    before = model.read_bytes()
    proc = run_script("tools/calibrate.py", "--model", str(model), "--write", str(model))
    assert proc.returncode == 2 and "is an input" in proc.stderr and model.read_bytes() == before


def _checkpoint_copy(tmp_path, temperature=None) -> str:
    import shutil

    from agegender.model.engine import BUNDLED_MODEL

    prefix = str(tmp_path / "m")
    for ext in ("-symbol.json", "-0000.params"):
        shutil.copy(BUNDLED_MODEL + ext, prefix + ext)
    if temperature is not None:
        (tmp_path / "m-calibration.json").write_text(temperature)
    return prefix


def test_a_checkpoints_calibration_file_is_applied_by_mxnet_and_carried_into_its_export(tmp_path):
    pytest.importorskip("mxnet", reason="the checkpoint engine needs MXNet (requirements.txt)")
    from agegender.model.age import decode
    from agegender.model.mxnet_engine import MxnetEngine
    from agegender.model.onnx_export import metadata

    from agegender.data.demo import wheel_image

    rgb = cv2.cvtColor(cv2.imread(wheel_image("Tom_Hanks_54745.png")), cv2.COLOR_BGR2RGB)  # aligned, 112x112
    faces = np.stack([rgb, np.ascontiguousarray(rgb[:, ::-1])])
    plain = MxnetEngine(_checkpoint_copy(tmp_path), 0)
    assert plain.gender_temperature == 1.0 and "gender_temperature" not in metadata(str(tmp_path / "m"), 0)
    (tmp_path / "m-calibration.json").write_text('{"gender_temperature": 2.5}')
    warm = MxnetEngine(str(tmp_path / "m"), 0)
    assert warm.gender_temperature == 2.5
    p, _ = warm.predict_faces(faces, flip=False)
    raw = plain.outputs(faces.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(p, decode(raw, "prob", 2.5)[0], rtol=1e-5)
    assert not np.allclose(p, decode(raw, "prob", 1.0)[0], atol=1e-3)  # the temperature made a difference
    assert metadata(str(tmp_path / "m"), 0)["gender_temperature"] == "2.5000"
    assert "age_range_widening" not in metadata(str(tmp_path / "m"), 0) and warm.age_widening.is_identity
    # the age range's widening: read by the mxnet engine from the same file, carried into the export
    w = Widening([0.8], [0, 30], [[0.7, 0.9]], [[0.8, 1.2]])
    (tmp_path / "m-calibration.json").write_text(json.dumps({"gender_temperature": 2.5,
                                                             "age_range_widening": w.to_dict()}))
    assert MxnetEngine(str(tmp_path / "m"), 0).age_widening == w
    assert Widening.from_dict(metadata(str(tmp_path / "m"), 0)["age_range_widening"]) == w
    # and the ensemble's weight for the teacher
    assert warm.teacher_weight == 0.5 and "gender_teacher_weight" not in metadata(str(tmp_path / "m"), 0)
    (tmp_path / "m-calibration.json").write_text('{"gender_temperature": 2.5, "gender_teacher_weight": 0.333}')
    assert MxnetEngine(str(tmp_path / "m"), 0).teacher_weight == 0.333
    assert metadata(str(tmp_path / "m"), 0)["gender_teacher_weight"] == "0.333"  # the export reads the same w


@pytest.mark.parametrize("bad", ['{"gender_temperature": 0}', '{"gender_temperature": "warm"}', "[1]", "{",
                                 '{"gender_teacher_weight": 2}', '{"gender_teacher_weight": true}',
                                 '{"gender_teacher_weight": null}', '{"gender_teacher_weight": 1' + "0" * 400 + "}"])
def test_a_bad_calibration_file_is_a_one_line_error(tmp_path, bad):
    from agegender.model.engine import read_checkpoint_calibration

    prefix = str(tmp_path / "m")
    (tmp_path / "m-calibration.json").write_text(bad)
    with pytest.raises(UserError, match="m-calibration.json|gender_temperature|gender_teacher_weight"):
        read_checkpoint_calibration(prefix, "m,0")


def test_the_bundled_checkpoint_and_its_onnx_export_share_one_temperature():
    from agegender.model.engine import BUNDLED_MODEL, BUNDLED_ONNX, read_checkpoint_calibration

    onnx_t = OnnxEngine(BUNDLED_ONNX).gender_temperature
    assert onnx_t == read_checkpoint_calibration(BUNDLED_MODEL, "bundled").temperature and 0.3 < onnx_t < 1.0


# --- a model's own flip default (metadata `flip`) --------------------------------------------------------
def test_a_model_whose_metadata_says_flip_false_reads_each_face_once_unless_asked(tmp_path, packed_demo):
    """`"flip": false` in PREFIX-calibration.json travels into the ONNX export's metadata; both engines then
    default to no flip, in infer.py and eval.py, and `--flip` still turns it on."""
    import mxnet as mx

    from agegender.data.demo import wheel_image
    from agegender.model.mxnet_engine import MxnetEngine
    from agegender.symbols import get_network, save_checkpoint
    from tests.conftest import run_script

    prefix = str(tmp_path / "noflip")
    net = get_network("d10")
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 112, 112)))
    save_checkpoint(net, prefix, 0)
    with open(prefix + "-calibration.json", "w") as f:
        json.dump({"flip": False}, f)
    assert MxnetEngine(prefix, 0).default_flip is False
    run_script("tools/export_onnx.py", f"{prefix},0", str(tmp_path / "noflip.onnx"), check=True)
    engine = OnnxEngine(str(tmp_path / "noflip.onnx"))
    assert engine.default_flip is False and engine.metadata["flip"] == "false"
    assert engine.resolve_flip(None) is False and engine.resolve_flip(True) is True
    assert OnnxEngine("tiny.onnx", model=tiny_model()).default_flip is True  # no key: flip, as always

    def ages(*flags):
        out = run_script("infer.py", "--model", str(tmp_path / "noflip.onnx"), "--image", wheel_image("t1.jpg"),
                         "--json", "--no-gender-ensemble", *flags, check=True).stdout
        return [(f["p_male"], f["age"]) for f in json.loads(out)[0]["faces"]]

    assert ages() == ages("--no-flip") != ages("--flip")
    rec = os.path.join(packed_demo[0], "val.rec")
    for flags, want in (((), False), (("--flip",), True)):
        out = tmp_path / f"eval{len(flags)}.json"
        run_script("eval.py", "--model", str(tmp_path / "noflip.onnx"), "--rec", rec, "--no-gender-ensemble",
                   "--no-progress", "--json", str(out), *flags, check=True)
        doc = json.load(open(out))
        assert doc["flip"] is want and doc["gender_teacher_weight"] is None  # the settings sit at the top level


@pytest.mark.parametrize("bad", ["maybe", "0", ""])
def test_a_flip_default_that_is_not_true_or_false_is_refused_at_load(bad):
    with pytest.raises(UserError, match="flip"):
        OnnxEngine("tiny.onnx", model=tiny_model({"flip": bad}))
