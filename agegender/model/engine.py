"""The attribute net behind one interface, whatever runs it: onnxruntime (`onnx`, the default: faster, and
needs no MXNet) or MXNet (`mxnet`, for checkpoints, GPUs through mxnet-cu112, and training).

Every engine maps aligned faces (N,3,112,112) float32 RGB 0-255 to the (N,202) output of agegender/model/age.py.
This module imports no MXNet; the MXNet engine lives in agegender/model/mxnet_engine.py, and
agegender/model/loading.py picks one of the two (importing MXNet only when asked to).
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np

from agegender.cli import gpu_ids
from agegender.errors import UserError, short_reason
from agegender.model import registry
from agegender.model.age import (DEFAULT_AGE_LEVEL, DEFAULT_DECODE, DEFAULT_FLIP, NO_WIDENING, NUM_AGE_BINS,
                                 WIDENING_KEY, Widening, age_probs, age_range, decode)

# The default bundled model, epoch 0, where the registry's built-in folder has it: models/ in a checkout,
# agegender/weights/ in the wheel (pyproject.toml). The models by name: agegender/model/registry.py.
BUNDLED_MODEL = registry.BundledModel(registry.DEFAULT, registry.BUILTIN_DIR).prefix
BUNDLED_ONNX = BUNDLED_MODEL + ".onnx"                   # the same model exported by tools/export_onnx.py
# the gender ensemble's teacher net (agegender/model/ensemble.py), beside the bundled model: models/ in a
# checkout, agegender/weights/ in an installed wheel
TEACHER_ONNX = os.path.join(registry.BUILTIN_DIR, "teacher-gender-v1.onnx")
ENGINES = ("onnx", "mxnet")
NUM_OUTPUTS = 2 + 2 * NUM_AGE_BINS
TEMPERATURE_KEY = "gender_temperature"  # ONNX metadata_props key: the fitted temperature of the gender logits
# ONNX metadata_props key (and PREFIX-calibration.json's): "false" when the model's own default is to read each
# face once, without its mirror image (a net where flip costs the speed bound and gives nothing measurable)
FLIP_KEY = "flip"
# ONNX metadata_props key (and PREFIX-calibration.json's): the teacher net's weight in the gender ensemble,
# P(male) = (1 - w) * ours + w * teacher's, fitted per model by tools/calibrate.py; absent: the plain mean
TEACHER_WEIGHT_KEY = "gender_teacher_weight"
DEFAULT_TEACHER_WEIGHT = 0.5


def short_name(path: str) -> str:
    """A model path as typed when outside the working folder, relative when inside it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


class Engine:
    """What eval, infer, video and the service need from the attribute net."""

    kind = ""
    name = ""
    gender_temperature = 1.0  # divides the gender logits before the softmax (1 = uncalibrated)
    age_widening: Widening = NO_WIDENING  # widens the age range so that it covers (1 = uncalibrated)
    metadata: dict = {}  # what the model file says of itself (ONNX metadata_props); empty for a checkpoint
    default_flip: bool = DEFAULT_FLIP  # the model's own flip default (metadata `flip`), what flip=None means
    teacher_weight = DEFAULT_TEACHER_WEIGHT  # the teacher's share of the gender ensemble (metadata, calibrated)

    def use_calibration(self, calibration: "Calibration") -> None:
        """Take what the model says of its own use (its metadata or checkpoint sidecar)."""
        self.gender_temperature, self.age_widening, self.default_flip, self.teacher_weight = calibration

    def resolve_flip(self, flip: bool | None) -> bool:
        """`flip` as given, or the model's own default when None."""
        return self.default_flip if flip is None else bool(flip)

    @property
    def version(self) -> str | None:
        """The AgeGender version that exported the model (ONNX metadata `agegender_version`; None for a
        checkpoint or an export that predates it)."""
        return self.metadata.get("agegender_version")

    @property
    def license(self) -> str:
        """The model's terms: its metadata's `license`, else the registry's terms for a bundled model."""
        if "license" in self.metadata:
            return self.metadata["license"]
        return self.bundled.terms if self.bundled else "not stated in the model file"

    @property
    def provenance(self) -> str | None:
        """Where the weights come from (data, initialisation, teachers, the recipe's commit): the ONNX
        metadata's `provenance` (tools/export_onnx.py --provenance); None when the file does not say."""
        return self.metadata.get("provenance")

    # the registered model (agegender/model/registry.py) this engine runs, None for a model given by path
    bundled: registry.BundledModel | None = None

    @property
    def is_bundled(self) -> bool:
        return self.bundled is not None

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """(N,3,112,112) float32 -> (N,202) float32."""
        raise NotImplementedError

    def outputs(self, batch: np.ndarray, flip: bool = False) -> np.ndarray:
        """(N,202) outputs of a batch; `flip`: the mean over each face and its mirror image."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        out = self.forward(batch)
        if flip:
            out = (out + self.forward(np.ascontiguousarray(batch[..., ::-1]))) / 2
        return out

    def check(self) -> None:
        """Refuse, at load time, a model whose output is not the (N,202) layout."""
        try:
            shape = np.shape(self.forward(np.zeros((2, 3, 112, 112), np.float32)))
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 -- any runtime's error: the model does not take our input
            raise UserError(f"model {self.name} does not take (N,3,112,112) faces: {short_reason(exc)}") from None
        if tuple(shape) != (2, NUM_OUTPUTS):
            raise UserError(f"model {self.name} outputs {tuple(shape)[1:]} per face, not ({NUM_OUTPUTS},): "
                            "not a gender/age model of this project's layout")

    def _outputs_of(self, faces: np.ndarray, batch_size: int, flip: bool) -> np.ndarray:
        """The (N,202) outputs of aligned faces (N,112,112,3) RGB uint8, in batches."""
        return np.concatenate([self.outputs(faces[i:i + batch_size].transpose(0, 3, 1, 2), flip)
                               for i in range(0, len(faces), batch_size)])

    def predict_faces(self, faces: np.ndarray, batch_size: int = 256, age_decode: str = DEFAULT_DECODE,
                      flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Aligned faces (N,112,112,3) RGB uint8 -> (P(male), age) per face, in batches."""
        if len(faces) == 0:
            return np.zeros(0), np.zeros(0)
        return decode(self._outputs_of(faces, batch_size, flip), age_decode, self.gender_temperature)

    def predict_labels(self, faces: np.ndarray, batch_size: int = 256, age_decode: str = DEFAULT_DECODE,
                       flip: bool = False, age_level: float = DEFAULT_AGE_LEVEL) -> "Labels":
        """Aligned faces (N,112,112,3) RGB uint8 -> `Labels`: P(male), age, the calibrated age range at
        `age_level` and P(age > k) per face (the distribution a video track averages)."""
        if len(faces) == 0:
            return Labels.empty()
        outs = self._outputs_of(faces, batch_size, flip)
        p_male, age = decode(outs, age_decode, self.gender_temperature)
        probs = age_probs(outs)
        low, high = age_range(probs, age_level, self.age_widening, age)
        return Labels(p_male, age, low, high, probs)


class Labels(NamedTuple):
    """What the net says of a batch of faces, one row each."""

    p_male: np.ndarray
    age: np.ndarray
    age_low: np.ndarray   # the age range (whole years), calibrated at the level asked for
    age_high: np.ndarray
    age_probs: np.ndarray  # (N,100) P(age > k), non-increasing

    @classmethod
    def empty(cls) -> "Labels":
        """The labels of no face."""
        return cls(*(np.zeros(0) for _ in range(4)), np.zeros((0, NUM_AGE_BINS)))


def _stored_number(metadata: dict, key: str, name: str, default: float, valid, what: str) -> float:
    """The number stored under `key` in a model's metadata (ONNX metadata_props: text; PREFIX-calibration.json:
    JSON), `default` when absent; anything `valid` refuses (text, null, a bool, NaN, an overflow) is a one-line
    error naming the model."""
    if key not in metadata:
        return default
    raw = metadata[key]
    try:  # through text: a JSON integer too large for a float reads as inf, null and lists do not parse
        value = float("nan") if isinstance(raw, bool) else float(str(raw))
    except ValueError:
        value = float("nan")
    if not valid(value):
        raise UserError(f"model {name}: metadata {key}={str(raw)[:40]!r} is not {what}")
    return value + 0.0  # -0.0 reads as 0.0


def stored_temperature(metadata: dict, name: str) -> float:
    """The gender temperature stored in a model's metadata (tools/calibrate.py --write), 1 when absent; a value
    that is not a positive number is a one-line error naming the model."""
    return _stored_number(metadata, TEMPERATURE_KEY, name, 1.0, lambda t: t > 0 and np.isfinite(t),
                          "a positive number")


def stored_flip(metadata: dict, name: str) -> bool:
    """The model's own flip default from its metadata (`flip`: true / false; JSON booleans in
    PREFIX-calibration.json), DEFAULT_FLIP when absent; anything else is a one-line error naming the model."""
    raw = metadata.get(FLIP_KEY)
    if raw is None:
        return DEFAULT_FLIP
    value = {"true": True, "false": False}.get(str(raw).strip().lower())
    if value is None:
        raise UserError(f"model {name}: metadata {FLIP_KEY}={raw!r} is not true or false")
    return value


def stored_teacher_weight(metadata: dict, name: str) -> float:
    """The teacher's weight in the gender ensemble from a model's metadata (`gender_teacher_weight`, a number
    in [0, 1]), DEFAULT_TEACHER_WEIGHT (the plain mean) when absent; anything else is a one-line error."""
    return _stored_number(metadata, TEACHER_WEIGHT_KEY, name, DEFAULT_TEACHER_WEIGHT, lambda w: 0.0 <= w <= 1.0,
                          "a number from 0 to 1")


def stored_widening(metadata: dict, name: str) -> Widening:
    """The age range's widening stored in a model's metadata (tools/calibrate.py --write; key
    `age_range_widening`, JSON), none when absent; a malformed one is a one-line error naming the model."""
    raw = metadata.get(WIDENING_KEY)
    if raw is None:
        return NO_WIDENING
    try:
        return Widening.from_dict(raw)
    except ValueError as exc:
        raise UserError(f"model {name}: metadata {WIDENING_KEY} is not a widening: {exc}") from None


CALIBRATION_SUFFIX = registry.CALIBRATION_SUFFIX  # PREFIX-calibration.json, {"gender_temperature": T}


def model_files(*models: str | None, calibration: bool = True) -> list[str]:
    """The one list of the model files a run reads, as inputs for `refuse_inputs` / `refuse_prefix` (no
    output may replace one). Each of `models` as `--model` takes it: a bundled model's name (None or "":
    `default`) is every file of it in agegender/model/registry.py (its .onnx, checkpoint, calibration and
    licence file); a .onnx file is itself; PREFIX[,EPOCH] (any other bare word too) is PREFIX-symbol.json,
    every PREFIX-NNNN.params (and optimizer states) and PREFIX-calibration.json (left out with
    `calibration=False`, for tools/calibrate.py, which rewrites it). A registered name that is absent or
    ambiguous is the one-line error `registry.resolve` raises. The teacher net's ONNX is always one: it
    ships with the project and nothing writes it."""
    import glob

    files = []
    for spec in models:
        bundled = registry.resolve(spec, strict=False)
        if bundled is not None:
            files += bundled.files(calibration)
        elif spec.lower().endswith(".onnx"):  # as load_engine tells the two apart
            files.append(spec)
        else:
            prefix = spec.partition(",")[0]  # as parse_model_spec reads PREFIX,EPOCH
            files.append(f"{prefix}-symbol.json")
            files += sorted(glob.glob(glob.escape(prefix) + "-[0-9][0-9][0-9][0-9].*"))
            if calibration:
                files.append(prefix + CALIBRATION_SUFFIX)
    return files + [TEACHER_ONNX]


class Calibration(NamedTuple):
    """What a model says of its own use: what the ONNX metadata is to an exported model, and
    `PREFIX-calibration.json` to a checkpoint."""

    temperature: float  # the gender temperature (1: uncalibrated)
    widening: Widening  # the age range's
    flip: bool  # the flip default
    teacher_weight: float  # the teacher's share of the gender ensemble


def stored_calibration(metadata: dict, name: str) -> Calibration:
    """The four from one model's metadata (or sidecar), each checked: a bad value is a one-line error."""
    return Calibration(stored_temperature(metadata, name), stored_widening(metadata, name), stored_flip(metadata, name),
                       stored_teacher_weight(metadata, name))


def read_checkpoint_calibration(prefix: str, name: str) -> Calibration:
    """A checkpoint's `PREFIX-calibration.json` (tools/calibrate.py --write), read once; the defaults
    (T = 1, no widening, flip on) where it is absent."""
    return stored_calibration(checkpoint_calibration(prefix, name), name)


def checkpoint_calibration(prefix: str, name: str) -> dict:
    """`PREFIX-calibration.json` as read ({} when there is none); one-line errors for a broken file."""
    path = prefix + CALIBRATION_SUFFIX
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"model {name}: cannot read {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise UserError(f"model {name}: {path} is not a JSON object")
    return doc


def with_temperature(model: bytes, temperature: float, widening: Widening | None = None,
                     teacher_weight: float | None = None) -> bytes:
    """A serialised ONNX model with `gender_temperature` (and, given, `age_range_widening` and
    `gender_teacher_weight`) set in its metadata_props (replacing any)."""
    import onnx

    if not (temperature > 0 and np.isfinite(temperature)):
        raise ValueError(f"gender temperature must be a positive number, got {temperature!r}")
    if teacher_weight is not None and not 0.0 <= teacher_weight <= 1.0:
        raise ValueError(f"teacher weight must be from 0 to 1, got {teacher_weight!r}")
    proto = onnx.load_from_string(model)
    new = [(TEMPERATURE_KEY, f"{temperature:.4f}")]
    if widening is not None:
        new.append((WIDENING_KEY, json.dumps(widening.to_dict())))
    if teacher_weight is not None:
        new.append((TEACHER_WEIGHT_KEY, repr(float(teacher_weight))))  # exact: both engines read the same w
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in dict(new)]
    del proto.metadata_props[:]
    for key, value in keep + new:
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def session_options(threads: int = 0):
    """onnxruntime options for our nets: `threads` intra-op threads (0 = all cores), quiet logs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(0, threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # no busy-waiting between runs: the net shares the cores with the detector's threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OnnxEngine(Engine):
    """An ONNX model (tools/export_onnx.py) run by onnxruntime; `gpus` uses its CUDA provider."""

    kind = "onnx"

    def __init__(self, path: str, threads: int = 0, gpus: str = "", model: bytes | None = None):
        """`path`: the .onnx file, or only the name when the serialised `model` is given."""
        import onnxruntime as ort

        self.name = short_name(path)
        if model is None and not os.path.isfile(path):
            raise UserError(f"model file not found: {path}")
        opts = session_options(threads)
        providers: list = ["CPUExecutionProvider"]
        ids = gpu_ids(gpus)
        if ids:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError("--gpus with the onnx engine needs onnxruntime-gpu (pip install onnxruntime-gpu in "
                                "place of onnxruntime); this onnxruntime has only "
                                f"{', '.join(ort.get_available_providers())}. Or use --engine mxnet with "
                                "requirements-gpu.txt")
            providers = [("CUDAExecutionProvider", {"device_id": ids[0]}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(path if model is None else model, sess_options=opts,
                                                providers=providers)
        except Exception as exc:  # noqa: BLE001 -- onnxruntime raises its own types for bad files
            raise UserError(f"cannot load model {self.name}: {short_reason(exc)}") from None
        self.input = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.use_calibration(stored_calibration(self.metadata, self.name))
        self.bundled = None if model is not None else registry.for_path(path)
        self.check()

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: batch})[0]


__all__ = ["Labels", "stored_widening", "checkpoint_calibration", "Engine", "OnnxEngine",
           "session_options", "stored_temperature", "with_temperature", "TEMPERATURE_KEY",
           "CALIBRATION_SUFFIX", "FLIP_KEY", "stored_flip", "TEACHER_WEIGHT_KEY", "DEFAULT_TEACHER_WEIGHT",
           "stored_teacher_weight",
           "Calibration", "stored_calibration", "read_checkpoint_calibration",
           "model_files", "TEACHER_ONNX",
           "BUNDLED_MODEL", "BUNDLED_ONNX", "ENGINES", "NUM_OUTPUTS", "short_name"]
