"""serve.py's application: age and gender over HTTP (FastAPI), the same photo-to-faces path and JSON as
`infer.py --json`, faces of concurrent requests batched through the net, hostile input answered with a
JSON error and a status, never a traceback."""
from __future__ import annotations

import asyncio
import os
import platform
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Optional

import cv2
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from agegender import CODE_LICENSE, __version__
from agegender.serving.analyzer import FaceAnalyzer, FaceResult, ImageResult
from agegender.serving.batcher import FaceBatcher
from agegender.cli import DET_THRESH_MIN
from agegender.data.image import MAX_PIXELS, TOO_LARGE, TRUNCATED, ImageError, decode_image
from agegender.serving.inference import draw, to_json

MAX_BYTES = 10_000_000
DET_FLOOR = DET_THRESH_MIN  # the detector runs at this threshold; each request raises it with det_thresh


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# --- response models (they are what /docs shows) ------------------------------------------------------
class FaceOut(BaseModel):
    box: list[int] = Field(description="x1, y1, x2, y2 in pixels of the image", examples=[[59, 259, 165, 399]])
    score: float = Field(description="detector score", examples=[0.9998])
    landmarks: list[list[float]] = Field(description="eyes, nose, mouth corners: 5 x (x, y)")
    gender: Optional[str] = Field(description="male or female; null when the model's output was not finite",
                                  examples=["female"])
    p_male: Optional[float] = Field(description="P(male); gender is male when >= 0.5", examples=[0.0925])
    age: Optional[float] = Field(description="decoded age in years", examples=[25.6])
    error: Optional[str] = Field(default=None, description="why this face has no labels")


class AnalyzeOut(BaseModel):
    image: str = Field(description="the uploaded file's name, or '-' for a raw body", examples=["t1.jpg"])
    width: int
    height: int
    model: str = Field(examples=["models/agegender.onnx"])
    faces: list[FaceOut]


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
    engine: str
    input: str
    output: str
    age_decode: str
    gender_coding: str
    detector: str
    limits: dict
    versions: dict
    version: str = Field(description="the AgeGender version serving", examples=["1.0.0"])
    license: dict = Field(description="the code's licence and the model's (weights') terms")


ERRORS = {400: {"model": ErrorOut, "description": "empty body or truncated image"},
          413: {"model": ErrorOut, "description": "body over --max-bytes, or image over --max-pixels"},
          415: {"model": ErrorOut, "description": "the body is not an image"},
          422: {"model": ErrorOut, "description": "a query parameter out of range"}}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _read_body(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The image bytes (multipart field `image`, or the raw body) and its name; the size limit is enforced
    while reading, so a huge body is refused without being held."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise ApiError(413, "body_too_large", f"the body is {int(length)} bytes, over the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "body_too_large", f"the body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        request._body = body  # noqa: SLF001 -- let Starlette parse the form from what was read
        form = await request.form()
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "no_image_field", "a multipart upload needs the image in the field 'image'")
        data = await upload.read()
        return data, upload.filename or "image"
    return body, "-"


def _decode(data: bytes, max_pixels: int) -> np.ndarray:
    if not data:
        raise ApiError(400, "empty_body", "the body is empty: send an image (multipart field 'image' or raw bytes)")
    try:
        return decode_image(data, max_pixels)
    except ImageError as exc:
        if exc.reason == TOO_LARGE:
            raise ApiError(413, "too_many_pixels", exc.describe().replace(" (--max-pixels)", "")) from None
        if exc.reason == TRUNCATED:
            raise ApiError(400, "truncated_image", "the image is truncated or corrupt") from None
        raise ApiError(415, "not_an_image", "the body is not an image (JPEG, PNG, BMP, WebP, GIF, TIFF)") from None


def create_app(analyzer: FaceAnalyzer, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
               batch_window_ms: float = 5.0, batch_faces: int = 64, workers: int = 0) -> FastAPI:
    """The service around a loaded analyzer (its detector should run at DET_FLOOR)."""
    batcher = FaceBatcher(analyzer, batch_window_ms, batch_faces)
    # one thread more than cores: while a thread does its Python work (decode set-up, alignment), the
    # others keep every core in onnxruntime (load test: +10 % faces/s over one per core)
    pool = ThreadPoolExecutor(max_workers=workers or (os.cpu_count() or 1) + 1, thread_name_prefix="detect")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()
        pool.shutdown(wait=True)

    app = FastAPI(title="AgeGender", version="2", lifespan=lifespan,
                  description="Gender and age of every face in an image: RetinaFace detection, 5-point "
                              "alignment, and the bundled (or given) gender/age model.")
    app.state.batcher = batcher

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "query")
        return _error(422, "bad_parameter", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return _error(500, "internal_error", f"{type(exc).__name__}: the image could not be analysed")

    @app.get("/health", response_model=HealthOut, summary="Liveness and readiness")
    async def health():
        return {"status": "ok", "model_loaded": analyzer.engine is not None}

    @app.get("/v1/model", response_model=ModelOut, summary="What runs behind /v1/analyze")
    async def model():
        import onnxruntime

        return {"name": analyzer.engine.name, "engine": analyzer.engine.kind,
                "input": "aligned faces (N,3,112,112) RGB 0-255, ArcFace 5-point template",
                "output": "(N,202): gender logits [0:2] (index 1 = male), then 100 pairs 'age > k'",
                "age_decode": analyzer.age_decode, "gender_coding": "1 = male, 0 = female",
                "detector": getattr(analyzer.detector, "name", type(analyzer.detector).__name__),
                "limits": {"max_bytes": max_bytes, "max_pixels": max_pixels, "det_thresh_min": DET_FLOOR},
                "versions": {"python": platform.python_version(), "numpy": np.__version__,
                             "opencv": cv2.__version__, "onnxruntime": onnxruntime.__version__,
                             "model": analyzer.engine.version},
                "version": __version__, "license": {"code": CODE_LICENSE, "model": analyzer.engine.license}}

    @app.post("/v1/analyze", response_model=AnalyzeOut, responses={**ERRORS, 200: {
        "content": {"image/jpeg": {}}, "description": "the faces as JSON, or the annotated JPEG with annotated=1"}},
        summary="Gender and age of every face in an image", response_model_exclude_unset=True)
    async def analyze(request: Request,
                      det_thresh: float = Query(0.8, ge=DET_FLOOR, le=1.0, description="minimum detector score"),
                      min_face: float = Query(0.0, ge=0.0, description="ignore faces whose box is smaller (px)"),
                      max_faces: int = Query(0, ge=0, le=10000, description="keep the N best faces (0 = all)"),
                      annotated: bool = Query(False, description="return the annotated JPEG instead of JSON")):
        """Send the image as the multipart form field `image`, or as the raw request body. Returns the
        same document as `infer.py --json` for one image, plus its size and the model's name."""
        data, name = await _read_body(request, max_bytes)
        loop = asyncio.get_running_loop()
        def prepare():
            rgb = _decode(data, max_pixels)
            return (rgb, *analyzer.detect(rgb, det_thresh, min_face, max_faces))

        rgb, faces, crops = await loop.run_in_executor(pool, prepare)
        p_male, age = await batcher.label(crops)
        res = ImageResult(name, rgb, [FaceResult(f, float(p), float(a)) for f, p, a in zip(faces, p_male, age)])
        if annotated:
            jpeg = await loop.run_in_executor(pool, lambda: cv2.imencode(".jpg", draw(res))[1].tobytes())
            return Response(jpeg, media_type="image/jpeg")
        doc = to_json(res)
        # returned as a response: the document already has AnalyzeOut's shape (the schema /docs shows)
        return JSONResponse({"image": doc["image"], "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
                             "model": analyzer.engine.name, "faces": doc["faces"]})

    return app


__all__ = ["create_app", "MAX_BYTES", "DET_FLOOR"]
