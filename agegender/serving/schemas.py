"""The service's request and response models, and the OpenAPI pieces its routes share: what /docs shows.
The routes answer with JSONResponse documents of these shapes; the models only describe them."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field

# the media types a raw (not multipart) body may be sent as
RAW_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff",
             "application/octet-stream")


class FaceOut(BaseModel):
    face: int = Field(description="the face's number in the image, from 1, left to right (as in every output)",
                      examples=[1])
    box: list[int] = Field(description="x1, y1, x2, y2 in pixels of the image", examples=[[59, 259, 165, 399]])
    score: float = Field(description="detector score", examples=[0.9998])
    landmarks: list[list[float]] = Field(description="eyes, nose, mouth corners: 5 x (x, y)")
    gender: Optional[str] = Field(description="male or female; null when the model's output was not finite",
                                  examples=["female"])
    p_male: Optional[float] = Field(description="P(male); gender is male when >= 0.5", examples=[0.0925])
    age: Optional[float] = Field(description="decoded age in years", examples=[25.6])
    age_low: Optional[int] = Field(description="the age range's lowest age: the true age is in [age_low, "
                                   "age_high] for the range's level of faces (serve.py --age-level, default 0.8)",
                                   examples=[21])
    age_high: Optional[int] = Field(description="the age range's highest age", examples=[31])
    flags: list[str] = Field(description="why the face is too poor to judge well: small, blurred, turned; "
                             "empty: fine", examples=[[]])
    error: Optional[str] = Field(default=None, description="why this face has no labels")


class AnalyzeOut(BaseModel):
    schema_version: int = Field(description="the output schema's version (agegender/schema)", examples=[2])
    image: str = Field(description="the uploaded file's name, or '-' for a raw body", examples=["t1.jpg"])
    width: int
    height: int
    model: str = Field(examples=["agegender.onnx"], description="the model's file name (no folder)")
    faces: list[FaceOut]
    faces_total: int = Field(description="faces found before max_faces kept the best; equals len(faces) "
                                         "when nothing was cut")
    faces_dropped: int = Field(description="of faces_total, the smallest faces left out by the server's "
                                           "--max-faces-per-image (0 when it cut none)")
    faces_dropped_flagged: int = Field(0, description="of faces_total, the flagged faces left out by serve.py "
                                                      "--drop-flagged (0 without it): faces_total = len(faces) + "
                                                      "faces_dropped + faces_dropped_flagged unless max_faces cut")
    timings_ms: dict[str, float] = Field(description="decode, detect (with alignment), net (with the wait "
                                                     "for a batch), total (from the first byte read); "
                                                     "/v1/track adds track (matching faces to tracks)")


class ErrorBody(BaseModel):
    code: str = Field(examples=["not_an_image"])
    message: str = Field(examples=["the body is not an image (JPEG, PNG, BMP, WebP, GIF, TIFF)"])


class ErrorOut(BaseModel):
    error: ErrorBody


class HealthOut(BaseModel):
    status: str = Field(examples=["ok"])
    model_loaded: bool


class ModelOut(BaseModel):
    name: str
    file: str = Field(description="the weights' file name")
    sha256: Optional[str] = Field(description="of that file")
    engine: str
    input: str
    output: str
    age_decode: str
    gender_ensemble: bool = Field(False, description="whether 'p_male' mixes the model's P(male) with the "
                                                     "bundled CC0 teacher gender net's (on by default; serve.py --no-gender-ensemble turns it off)")
    gender_teacher_weight: Optional[float] = Field(None, description="the teacher net's weight w in 'p_male' = (1 - w) x "
                                                                     "the model's + w x the teacher's, as the model's "
                                                                     "calibration stores it (0.5: the plain mean); null "
                                                                     "when the ensemble is off")
    gender_coding: str
    detector: str
    limits: dict
    versions: dict
    version: str = Field(description="the AgeGender version serving", examples=["1.0.0"])
    license: dict = Field(description="the code's licence and the model's (weights') terms")
    bundled: Optional[str] = Field(None, description="the bundled model's name (serve.py --model NAME: default, "
                                                     "small, ...), null for a model given by its file",
                                   examples=["default"])
    provenance: Optional[str] = Field(None, description="where the weights come from, as the model file states "
                                                        "it (ONNX metadata `provenance`); null when it does not")
    age_range: dict = Field(description="the age range the answers carry: `level`, the share of true ages it "
                                        "holds (serve.py --age-level), and `calibrated`, whether the model's "
                                        "widening calibrates it", examples=[{"level": 0.8, "calibrated": True}])


# the error answers every /v1/ route may give, with the shape of each
ERRORS = {400: {"model": ErrorOut, "description": "empty body, truncated image, bad multipart, or several "
                                                  "images where one is expected"},
          401: {"model": ErrorOut, "description": "no or wrong `Authorization: Bearer` key (with --api-key-file)"},
          408: {"model": ErrorOut, "description": "the request did not arrive in time"},
          413: {"model": ErrorOut, "description": "body over --max-bytes, or image over --max-pixels"},
          415: {"model": ErrorOut, "description": "the body is not an image"},
          422: {"model": ErrorOut, "description": "a query parameter out of range, or an annotated image "
                                                  "too large for a JPEG"},
          503: {"model": ErrorOut, "description": "over --max-queue requests in progress, or the images in "
                                                  "progress fill --memory-budget: retry after the "
                                                  "Retry-After header's seconds"}}

# the body /docs offers: the routes read it themselves, as multipart or raw bytes, so FastAPI cannot infer it
IMAGE_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary",
                  "description": "the photo; repeat the field for several photos (a list of results)"}}}},
    **{t: {"schema": {"type": "string", "format": "binary"}} for t in RAW_TYPES[:2] + RAW_TYPES[-1:]}}}
