"""The one output schema: the face object that infer.py (--json, --jsonl, --csv), video JSON lines, the HTTP
service and `FaceResult.to_dict()` all produce, written down in face.schema.json beside this file.

    from agegender.schema import FACE_FIELDS, validate
    validate(result.to_dict())            # raises ValueError naming the first field that is off
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any

SCHEMA_VERSION = 2  # every document carries it (schema_version); 2: face index, age range, quality flags
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "face.schema.json")

# Field order is the order the producers write them in.
# "face": the face's number in its image, from 1, left to right -- the same in every output
FACE_FIELDS = ("face", "box", "score", "landmarks", "gender", "p_male", "age", "age_low", "age_high",
               "flags")                                                   # plus "error" when labels are null
IMAGE_FIELDS = ("schema_version", "image", "faces")                       # plus "error" for a failed input
TRACK_FIELDS = ("id", "labelled", "settled", "gender", "p_male", "age", "age_low", "age_high")
FRAME_FIELDS = ("schema_version", "frame", "time", "detected", "faces")
CSV_COLUMNS = ("schema_version", "image", "face", "x1", "y1", "x2", "y2", "score", "gender", "p_male", "age",
               "age_low", "age_high", "flags", "error")
KINDS = ("face", "image", "analyze", "track", "video_face", "frame", "track_frame")


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    """The JSON Schema document (draft 2020-12); each kind of object is one entry of its `$defs`."""
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def _validator(kind: str):
    try:
        import jsonschema  # only validation needs it (the tests); producing output does not
    except ImportError:
        raise ImportError("agegender.schema.validate needs jsonschema: pip install jsonschema") from None

    schema = load_schema()
    sub = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{kind}"}
    cls = jsonschema.validators.validator_for(sub)
    return cls(sub, format_checker=cls.FORMAT_CHECKER)


def validate(obj: Any, kind: str = "face") -> None:
    """Check `obj` against the schema's `kind` (one of KINDS); ValueError naming the path and the problem.
    Beyond the schema: a labelled face's gender agrees with its p_male, and its age lies in its age range."""
    if kind not in KINDS:
        raise ValueError(f"unknown schema kind {kind!r}; expected one of {', '.join(KINDS)}")
    error = next(iter(sorted(_validator(kind).iter_errors(obj), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise ValueError(f"{kind} does not match the schema at {where}: {error.message}")
    for path, face in _faces(obj, kind):
        if "labelled" in face:  # a track: labelled once means a gender; after settling, hysteresis may hold it
            if face["labelled"] and face["gender"] is None:
                raise ValueError(f"{kind} at {path}: a labelled track without a gender")
            if face["settled"]:
                continue
        elif face["gender"] is None and "error" not in face:
            raise ValueError(f"{kind} at {path}: null labels without an error")
        if face["p_male"] is not None and face["gender"] != ("male" if face["p_male"] >= 0.5 else "female"):
            raise ValueError(f"{kind} at {path}: gender {face['gender']!r} disagrees with p_male {face['p_male']}")
        low, high, age = face.get("age_low"), face.get("age_high"), face["age"]
        if low is not None and high is not None and age is not None and not low <= round(age) <= high:
            raise ValueError(f"{kind} at {path}: age {age} outside its age range {low}-{high}")


def _faces(obj: Any, kind: str):
    """(path, object) of every face and track in a valid `obj` of `kind`."""
    faces = [("(top)", obj)] if kind in ("face", "video_face", "track") else \
        [(f"faces/{i}", f) for i, f in enumerate(obj["faces"])]
    for path, face in faces:
        yield path, face
        if "track" in face:
            yield f"{path}/track", face["track"]


__all__ = ["validate", "load_schema", "FACE_FIELDS", "IMAGE_FIELDS", "TRACK_FIELDS", "FRAME_FIELDS", "CSV_COLUMNS",
           "KINDS", "SCHEMA_PATH", "SCHEMA_VERSION"]
