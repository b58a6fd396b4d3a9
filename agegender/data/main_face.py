"""Which face of a photo is its subject: the rule create_dataset.py packs by, in a module free of OpenCV
and numpy so the teacher's venv (agegender/model/teacher.py) picks the same face."""
from __future__ import annotations

from typing import Sequence


def main_face_score(box: Sequence[float], height: float, width: float) -> float:
    """Higher for larger, more central faces: the box's area minus twice the squared offset of its
    centre from the image centre (box = x1, y1, x2, y2 in pixels)."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    area = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return area - 2.0 * (((x1 + x2) / 2.0 - width / 2.0) ** 2 + ((y1 + y2) / 2.0 - height / 2.0) ** 2)


__all__ = ["main_face_score"]
