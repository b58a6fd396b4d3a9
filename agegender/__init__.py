"""AgeGender: gender and age of every face in a photo (RetinaFace detection, ArcFace alignment, an
InsightFace-style attribute net run by onnxruntime or MXNet), plus the tools that pack data and train it.

    from agegender import FaceAnalyzer
    analyzer = FaceAnalyzer.from_options()      # bundled detector and model, no MXNet
    for face in analyzer.analyze("photo.jpg"):  # a path, bytes, a PIL image, or an RGB array
        print(face.to_dict())

Code: Apache-2.0 (LICENSE). The bundled weights: research and non-commercial use only (WEIGHTS_TERMS).
"""
from __future__ import annotations

__version__ = "1.0.0"  # the one place: pyproject.toml, --version, /v1/model and ONNX exports read it

WEIGHTS_TERMS = ("the bundled model (fine-tuned from the CC0 weights of dlib's age net on UTKFace, All-Age-Faces and "
                 "FairFace) is for non-commercial research use only, following the terms of UTKFace and of "
                 "All-Age-Faces (no licence stated by its authors: research only); FairFace's labels are CC BY 4.0 "
                 "(Karkkainen & Joo, FairFace, WACV 2021)")
# the `small` model: round 4's first default, MobileNet-0.25 fine-tuned from InsightFace's checkpoint
SMALL_TERMS = ("the bundled model (fine-tuned from InsightFace's gender-age checkpoint on UTKFace, All-Age-Faces and "
               "FairFace) is for non-commercial research use only, following the terms of InsightFace's models, of "
               "UTKFace and of All-Age-Faces (no licence stated by its authors: research only); FairFace's labels "
               "are CC BY 4.0 (Karkkainen & Joo, FairFace, WACV 2021)")
CODE_LICENSE = "Apache-2.0"

# Loaded on first use, so `import agegender.symbols` (training) does not pull in onnxruntime and OpenCV.
_LAZY = {"FaceAnalyzer": "agegender.serving.analyzer", "FaceResult": "agegender.serving.analyzer",
         "ImageResult": "agegender.serving.analyzer", "validate": "agegender.schema"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agegender' has no attribute {name!r}")


__all__ = ["FaceAnalyzer", "FaceResult", "ImageResult", "validate", "__version__", "WEIGHTS_TERMS", "SMALL_TERMS", "CODE_LICENSE"]
