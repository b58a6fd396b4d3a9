"""What the service tells about the model it runs: the weights' file and digest, the name it answers
under (never a path of the serving machine), the bundled name, and the age range's level."""
from __future__ import annotations

import functools
import hashlib
import os

from agegender.serving.analyzer import FaceAnalyzer


def weights_file(name: str) -> str | None:
    """The file holding the engine's weights: the .onnx, or PREFIX-EPOCH.params of an MXNet PREFIX,EPOCH."""
    if os.path.isfile(name):
        return os.path.abspath(name)
    prefix, _, epoch = name.rpartition(",")
    params = f"{prefix}-{int(epoch):04d}.params" if epoch.isdigit() else ""
    return os.path.abspath(params) if params and os.path.isfile(params) else None


def public_name(name: str) -> str:
    """The model's name without the folders it lies in (`agegender.onnx`, `PREFIX,EPOCH (exported to
    ONNX)`): no answer carries a path of the serving machine."""
    return os.path.basename(name) or name


def bundled_name(engine) -> str | None:
    """The registered name of the model the engine runs (agegender/model/registry.py), None for a path."""
    return engine.bundled.name if getattr(engine, "bundled", None) else None


def age_range_info(analyzer: FaceAnalyzer) -> dict:
    """The age range the answers carry: its level and whether the model's widening calibrates it."""
    return {"level": analyzer.age_level, "calibrated": not analyzer.engine.age_widening.is_identity}


@functools.lru_cache(maxsize=4)
def file_sha256(path: str) -> str:
    """The file's SHA-256 (hex), remembered for the few weights files a server answers about."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
