"""serve.py's application: age and gender over HTTP (FastAPI), the same photo-to-faces path and JSON as
`infer.py --json`, faces of concurrent requests batched through the net, hostile input answered with a
JSON error and a status, never a traceback. Also the page at `/` (photo and live camera), offline API docs
at `/docs`, and `/v1/track`: camera frames of one stream followed by the video tracker."""
from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import os
import platform
import re
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from html import escape
from typing import Optional

import cv2
import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser, parse_options_header
from starlette.middleware.cors import CORSMiddleware

from agegender import CODE_LICENSE, __version__
from agegender.model.engine import Labels
from agegender.serving.analyzer import FaceAnalyzer, FaceResult, ImageResult
from agegender.serving.batcher import FaceBatcher
from agegender.cli import DET_THRESH_MIN
from agegender.data.image import MAX_PIXELS, TOO_LARGE, TRUNCATED, ImageError, decode_image, header_size
from agegender.serving.http import Front, Limits
from agegender.serving.memory import (CROP_BYTES, MAX_FACES_PER_IMAGE, MEMORY_BUDGET, Hold, MemoryBudget,
                                      OverBudget, check_memory_budget, give_back_memory, kept_image_bytes,
                                      request_bytes)
from agegender.serving.inference import draw, to_json
from agegender.serving.tracking import Tracker
from agegender.serving.video import face_labels, frame_json

MAX_BYTES = 10_000_000
DET_FLOOR = DET_THRESH_MIN  # the detector runs at this threshold; each request raises it with det_thresh
MAX_QUEUE = 32   # requests being decoded, detected or labelled at once; over it: 503
MAX_IMAGES = 8   # repeated `image` fields in one request
MAX_FIELDS = 32  # multipart fields of any name in one request
MAX_STREAMS = 64  # camera sessions tracked at once (the least recently used is dropped)
STREAM_IDLE_S = 120.0
MAX_TRACKS = 1000  # live tracks of one camera session (at least --max-faces-per-image)
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
RAW_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff",
             "application/octet-stream")


# Security headers. Every answer: no MIME sniffing, no framing, and for the JSON a policy that runs nothing.
# The page: its own scripts and styles only, photos shown through blob: URLs, the camera (getUserMedia needs
# no CSP source; srcObject is not a URL), the API on the same origin. /docs: Swagger UI's bundled files, its
# one inline script allowed by hash (`_docs_policy`), inline styles and data: icons as it draws them.
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"))
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
               "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
               "form-action 'none'; frame-ancestors 'none'")
PAGE_PERMISSIONS = "camera=(self), microphone=(), geolocation=()"


def _docs_policy(html: str) -> str:
    """/docs's policy: its inline scripts allowed by their sha256, nothing else inline but styles."""
    hashes = " ".join("'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
                      for m in re.findall(r"<script>(.*?)</script>", html, re.S))
    return (f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
            f"img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            f"form-action 'none'; frame-ancestors 'none'")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


# --- response models (they are what /docs shows) ------------------------------------------------------
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
    gender_ensemble: bool = Field(False, description="whether 'p_male' is the mean of the model's P(male) and the "
                                                     "bundled CC0 teacher gender net's (on by default; serve.py --no-gender-ensemble turns it off)")
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

IMAGE_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary",
                  "description": "the photo; repeat the field for several photos (a list of results)"}}}},
    **{t: {"schema": {"type": "string", "format": "binary"}} for t in RAW_TYPES[:2] + RAW_TYPES[-1:]}}}


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused (413) as soon as it passes `max_bytes`, so a huge body is never held."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise ApiError(413, "body_too_large", f"the body is {int(length)} bytes, over the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "body_too_large", f"the body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _images(request: Request, body: bytes, max_bytes: int) -> list[tuple[bytes, str]]:
    """(bytes, name) of each image of the request: the repeated multipart field `image` (a file, or a plain
    field holding the bytes), or the raw body. Media types are compared case-insensitively."""
    if _media_type(request) != "multipart/form-data":
        return [(body, "-")]
    # the parser decodes plain fields with the body's charset: latin-1 maps every byte to one character,
    # so an image sent as a plain field comes back intact
    raw_ct = request.headers.get("content-type", "")
    params = raw_ct.split(";", 1)[1] if ";" in raw_ct else ""
    params = ";".join(p for p in params.split(";") if not p.strip().lower().startswith("charset"))
    headers = Headers(raw=[(b"content-type", f"multipart/form-data;{params}; charset=latin-1".encode("latin-1"))])

    async def stream():
        yield body

    parser = MultiPartParser(headers, stream(), max_files=MAX_IMAGES, max_fields=MAX_FIELDS, max_part_size=max_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "bad_multipart", f"the multipart body cannot be read: {exc.message}") from None
    except Exception:  # noqa: BLE001 -- python-multipart's own errors on a malformed body
        raise ApiError(400, "bad_multipart", "the multipart body cannot be read: malformed") from None
    try:
        found = []
        for value in form.getlist("image"):
            if isinstance(value, UploadFile):
                name = (value.filename or "image").encode("latin-1", "replace").decode("utf-8", "replace")
                found.append((await value.read(), name))
            else:
                found.append((value.encode("latin-1", "replace"), "image"))
    finally:
        await form.close()
    if not found:
        # the parser takes a body that ends inside a part as one without that part: say what is wrong
        boundary = parse_options_header(headers["content-type"])[1].get(b"boundary", b"")
        if boundary and b"--" + boundary + b"--" not in body:
            raise ApiError(400, "bad_multipart", "the multipart body cannot be read: it ends before its closing "
                                                 "boundary")
        raise ApiError(400, "no_image_field", "a multipart upload needs the image in the field 'image'")
    if len(found) > MAX_IMAGES:
        raise ApiError(400, "too_many_images", f"{len(found)} images in one request: at most {MAX_IMAGES}")
    return found


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


def _weights_file(name: str) -> str | None:
    """The file holding the engine's weights: the .onnx, or PREFIX-EPOCH.params of an MXNet PREFIX,EPOCH."""
    if os.path.isfile(name):
        return os.path.abspath(name)
    prefix, _, epoch = name.rpartition(",")
    params = f"{prefix}-{int(epoch):04d}.params" if epoch.isdigit() else ""
    return os.path.abspath(params) if params and os.path.isfile(params) else None


def _public_name(name: str) -> str:
    """The model's name without the folders it lies in (`agegender.onnx`, `PREFIX,EPOCH (exported to
    ONNX)`): no answer carries a path of the serving machine."""
    return os.path.basename(name) or name


def _bundled_name(engine) -> str | None:
    """The registered name of the model the engine runs (agegender/model/registry.py), None for a path."""
    return engine.bundled.name if getattr(engine, "bundled", None) else None


PAGE_MODEL_SLOT = '<footer id="model"></footer>'
PAGE_RANGE_SLOT = '<th id="range-head">Range</th>'


def _age_range_info(analyzer: FaceAnalyzer) -> dict:
    """The age range the answers carry: its level and whether the model's widening calibrates it."""
    return {"level": analyzer.age_level, "calibrated": not analyzer.engine.age_widening.is_identity}


def _page(analyzer: FaceAnalyzer) -> str:
    """The page with the model that answers and its terms in its footer (which model labels the faces, and
    under what terms: CC BY asks for its attribution to be shown), and the Range column's level as the
    server answers, for everyone who can open the page."""
    engine = analyzer.engine
    with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
        text = f.read()
    name = _bundled_name(engine)
    shown = f"{name} ({_public_name(engine.name)})" if name else _public_name(engine.name)
    footer = (f'<footer id="model">Model: <b id="model-name">{escape(shown)}</b> &middot; '
              f'<span id="model-terms">terms: {escape(engine.license)}</span></footer>')
    rng = _age_range_info(analyzer)
    level = f"{rng['level'] * 100:g} %"
    how = "calibrated" if rng["calibrated"] else "the model's own range, not calibrated"
    head = f'<th id="range-head" title="the true age lies in this range for {level} of faces ({how})">Range</th>'
    return text.replace(PAGE_MODEL_SLOT, footer).replace(PAGE_RANGE_SLOT, head)


@functools.lru_cache(maxsize=4)
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Stream:
    """One camera stream: its tracker, the next frame's index, when it started and was last used, and the
    lock that keeps its frames in arrival order."""

    tracker: Tracker = field(default_factory=Tracker)
    next_frame: int = 0
    started: float = field(default_factory=time.monotonic)
    last_use: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Streams:
    """The camera streams being tracked: a Stream per session id, the least recently used dropped past
    MAX_STREAMS, and any idle for STREAM_IDLE_S (on the next request, and by the service's sweep without one)."""

    def __init__(self, max_streams: int = MAX_STREAMS, idle_s: float = STREAM_IDLE_S):
        self.max_streams, self.idle_s = max_streams, idle_s
        self._live: OrderedDict[str, Stream] = OrderedDict()

    def __len__(self) -> int:
        return len(self._live)

    def expire(self) -> int:
        """Forget the streams idle for over `idle_s` (none while a frame of theirs is being followed);
        returns how many."""
        now = time.monotonic()
        idle = [s for s, v in self._live.items() if now - v.last_use > self.idle_s and not v.lock.locked()]
        for sid in idle:
            del self._live[sid]
        return len(idle)

    def get(self, session: str) -> Stream:
        """Stream `session`, new if unknown."""
        now = time.monotonic()
        self.expire()
        stream = self._live.pop(session, None) or Stream(started=now)
        stream.last_use = now
        self._live[session] = stream
        while len(self._live) > self.max_streams:
            self._live.popitem(last=False)
        return stream


def follow(stream: Stream, faces: list[FaceResult], labels: Labels, max_tracks: int,
           analyzer: FaceAnalyzer) -> dict:
    """One frame of `stream` through its tracker (call with the stream's lock held): the frame's JSON line,
    without its size and timings. At most `max_tracks` live tracks stay: those seen longest ago go first."""
    index = stream.next_frame
    stream.next_frame += 1
    tracker = stream.tracker
    seen = tracker.update(index, [fr.face for fr in faces], face_labels(faces, labels))
    tracker.finished.clear()  # a stream may run for hours: ended tracks are not kept
    if len(tracker.tracks) > max_tracks:
        tracker.tracks = sorted(tracker.tracks, key=lambda t: t.missed)[:max_tracks]
    return frame_json(index, time.monotonic() - stream.started, seen, analyzer=analyzer)


def create_app(analyzer: FaceAnalyzer, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
               batch_window_ms: float = 5.0, batch_faces: int = 64, workers: int = 0, *,
               max_queue: int = MAX_QUEUE, api_key: str | None = None, cors_origins: tuple[str, ...] = (),
               access_log: bool = True, limits: Limits = Limits(), memory_budget: int = MEMORY_BUDGET,
               max_faces_per_image: int = MAX_FACES_PER_IMAGE, stream_idle_s: float = STREAM_IDLE_S) -> FastAPI:
    """The service around a loaded analyzer (its detector should run at DET_FLOOR). `api_key`: requests to
    /v1/ need `Authorization: Bearer <key>`; `max_queue`: requests in progress over it get 503;
    `memory_budget`: bytes of decoded images and face crops held at once (503 over it; at least what one
    image of `max_pixels` needs); `max_faces_per_image`: the largest faces of an image that are labelled."""
    check_memory_budget(memory_budget, max_pixels, max_faces_per_image)
    batcher = FaceBatcher(analyzer, batch_window_ms, batch_faces)
    # one thread more than cores: while a thread does its Python work (decode set-up, alignment), the
    # others keep every core in onnxruntime (load test: +10 % faces/s over one per core)
    pool = ThreadPoolExecutor(max_workers=workers or (os.cpu_count() or 1) + 1, thread_name_prefix="detect")
    streams = Streams(idle_s=stream_idle_s)
    budget = MemoryBudget(memory_budget)
    max_tracks = max(MAX_TRACKS, max_faces_per_image)
    # the onnxruntime sessions whose arenas grow with a burst (the net's with its batch, the detector's with
    # the images detected at once): shrunk when the burst is over
    sessions = [getattr(part, "session", None) for part in (analyzer.engine, analyzer.detector, analyzer.teacher)]
    in_progress = [0]
    worked = [False]  # requests ran since the heap was last given back

    async def housekeeping() -> None:
        """Every few seconds: forget idle camera streams, and once a burst is over give its memory back
        (onnxruntime's arenas and glibc's heap keep what a burst took otherwise: round 3 held 2.7 GB)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(2.0, stream_idle_s))
            streams.expire()
            if worked[0] and in_progress[0] == 0:
                worked[0] = False
                await loop.run_in_executor(pool, give_back_memory, *sessions)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        sweeper = asyncio.get_running_loop().create_task(housekeeping())
        yield
        sweeper.cancel()
        await batcher.stop()
        pool.shutdown(wait=True)

    app = FastAPI(title="AgeGender", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Gender and age of every face in an image: RetinaFace detection, 5-point "
                              "alignment, and the bundled (or given) gender/age model. The page at `/` "
                              "tries it on a photo or a camera.")
    app.state.batcher, app.state.budget, app.state.streams = batcher, budget, streams
    bearer = HTTPBearer(auto_error=False, description="the key of --api-key-file (only when the server has one)")

    async def authorised(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if api_key is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "unauthorized", "this server needs 'Authorization: Bearer <key>'",
                           {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: ("not_found", f"no such route: {request.url.path}"),
                 405: ("method_not_allowed", f"{request.method} is not allowed on {request.url.path}")}
        code, message = codes.get(exc.status_code, ("http_error", str(exc.detail)))
        return _error(exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "query")
        return _error(422, "bad_parameter", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return _error(500, "internal_error", f"{type(exc).__name__}: the image could not be analysed")

    # --- the page and the docs: bundled files only, nothing from another host -------------------------
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    try:
        from swagger_ui_bundle import swagger_ui_path

        app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
    except ImportError:  # the page and the API work without it; /docs says what is missing
        swagger_ui_path = None

    index = _page(analyzer)

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(index, headers={"Content-Security-Policy": PAGE_POLICY,
                                            "Permissions-Policy": PAGE_PERMISSIONS})

    @app.get("/docs", include_in_schema=False)
    async def docs():
        if swagger_ui_path is None:
            raise ApiError(404, "not_found", "the API docs need the package swagger-ui-bundle-v2")
        html = get_swagger_ui_html(openapi_url=app.openapi_url, title="AgeGender API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")
        html.headers["Content-Security-Policy"] = _docs_policy(html.body.decode())
        return html

    @app.get("/health", response_model=HealthOut, summary="Liveness and readiness")
    async def health():
        return {"status": "ok", "model_loaded": analyzer.engine is not None}

    @app.get("/v1/model", response_model=ModelOut, summary="What runs behind /v1/analyze",
             dependencies=[Depends(authorised)], responses={401: ERRORS[401]})
    async def model():
        import onnxruntime

        weights = _weights_file(analyzer.engine.name)
        return {"name": _public_name(analyzer.engine.name), "file": os.path.basename(weights or analyzer.engine.name),
                "sha256": await asyncio.get_running_loop().run_in_executor(pool, _sha256, weights) if weights else None,
                "engine": analyzer.engine.kind,
                "input": "aligned faces (N,3,112,112) RGB 0-255, ArcFace 5-point template",
                "output": "(N,202): gender logits [0:2] (index 1 = male), then 100 pairs 'age > k'",
                "age_decode": analyzer.age_decode, "gender_ensemble": analyzer.teacher is not None,
                "gender_coding": "'gender' is the string 'male' or 'female' (P(male) >= 0.5: male); "
                                 "'p_male' is the model's P(male)"
                                 + (", averaged with the teacher net's" if analyzer.teacher is not None else ""),
                "detector": getattr(analyzer.detector, "name", type(analyzer.detector).__name__),
                "limits": {"max_bytes": max_bytes, "max_pixels": max_pixels, "det_thresh_min": DET_FLOOR,
                           "max_queue": max_queue, "max_images": MAX_IMAGES, "memory_budget": memory_budget,
                           "max_faces_per_image": max_faces_per_image, "max_tracks": max_tracks,
                           "max_header_bytes": limits.max_header_bytes, "read_timeout_s": limits.read_timeout,
                           "max_connections": limits.max_connections},
                "versions": {"python": platform.python_version(), "numpy": np.__version__,
                             "opencv": cv2.__version__, "onnxruntime": onnxruntime.__version__,
                             "model": analyzer.engine.version},
                "version": __version__, "license": {"code": CODE_LICENSE, "model": analyzer.engine.license},
                "bundled": _bundled_name(analyzer.engine), "provenance": analyzer.engine.provenance,
                "age_range": _age_range_info(analyzer)}

    def admit() -> None:
        if in_progress[0] >= max_queue:
            raise ApiError(503, "overloaded", f"{max_queue} requests are in progress (--max-queue); retry shortly",
                           {"Retry-After": "1"})

    async def receive(request: Request) -> list[tuple[bytes, str]]:
        """The request's images (bytes, name), read only while there is room for the work (503 otherwise)."""
        admit()
        return await _images(request, await _read_body(request, max_bytes), max_bytes)

    @contextmanager
    def working():
        """A request counted against --max-queue while its images are analysed (admitted again: the
        queue may have filled while its body arrived)."""
        admit()
        in_progress[0] += 1
        worked[0] = True
        try:
            yield
        finally:
            in_progress[0] -= 1

    def hold_for(data: bytes, keep_image: bool):
        """The budget an image of these bytes may need at its peak (from its header; drawn on with
        `keep_image`), held now; 503 when the requests in progress hold too much. An image over --max-pixels
        is counted at the limit: decoding refuses it from the header, before any pixel."""
        size = header_size(data) if data else None
        pixels = min(size[0] * size[1], max_pixels or size[0] * size[1]) if size else 0
        try:
            return budget.take(request_bytes(pixels, max_faces_per_image, keep_image))
        except OverBudget:
            raise ApiError(503, "overloaded", "the images in progress fill the server's memory budget "
                                              "(--memory-budget); retry shortly", {"Retry-After": "1"}) from None

    async def analyse(data: bytes, name: str, det_thresh: float, min_face: float, max_faces: int,
                      t0: float, keep_image: bool = False) -> tuple[ImageResult, dict, dict, Hold, Labels]:
        """One image through decode, detection and the batched net: (result, {"width", "height",
        "faces_total", "faces_dropped", "faces_dropped_flagged"}, ms, the budget it holds: release it when done, the net's labels).
        The result keeps the decoded image only with `keep_image` (to draw on: the budget held then counts
        draw()'s copy and the JPEG's buffer too)."""
        def prepare():
            t = time.perf_counter()
            hold = hold_for(data, keep_image)
            try:
                rgb = _decode(data, max_pixels)
                pixels = rgb.shape[0] * rgb.shape[1]
                hold.shrink_to(kept_image_bytes(pixels, keep_image) + max_faces_per_image * CROP_BYTES)
                t_decode = time.perf_counter()
                found = analyzer.find(rgb, det_thresh, min_face)
                # the largest faces are kept: a crowd's tiny background faces are the ones a cap can spare
                kept = sorted(found, key=lambda f: -f.area)[:max_faces_per_image]
                chosen = min(len(kept), max_faces) if max_faces > 0 else len(kept)
                faces, crops = analyzer.keep(rgb, kept, max_faces)  # max_faces, then --drop-flagged
                counts = {"width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "faces_total": len(found),
                          "faces_dropped": len(found) - len(kept), "faces_dropped_flagged": chosen - len(faces)}
                if not keep_image:
                    rgb = None
                hold.shrink_to((kept_image_bytes(pixels, True) if keep_image else 0) + len(crops) * CROP_BYTES)
            except BaseException:
                hold.release()
                raise
            return rgb, faces, crops, counts, hold, t_decode - t, time.perf_counter() - t_decode

        job = pool.submit(prepare)
        try:
            rgb, faces, crops, counts, hold, decode_s, detect_s = await asyncio.wrap_future(job)
        except asyncio.CancelledError:  # the work may still finish in its thread: its budget goes back then
            job.add_done_callback(lambda j: j.cancelled() or j.exception() or j.result()[4].release())
            raise
        try:
            t_net = time.perf_counter()
            labels = await batcher.labels(crops)
            net_s = time.perf_counter() - t_net
            res = ImageResult(name, rgb, analyzer.results(faces, crops, labels))
        except BaseException:
            hold.release()
            raise
        ms = {"decode": decode_s * 1000, "detect": detect_s * 1000, "net": net_s * 1000,
              "total": (time.perf_counter() - t0) * 1000}
        return res, counts, {k: round(v, 1) for k, v in ms.items()}, hold, labels

    def annotated_jpeg(res: ImageResult) -> bytes:
        ok, buf = cv2.imencode(".jpg", draw(res))
        if not ok:  # JPEG holds at most 65,500 pixels a side
            height, width = res.image.shape[:2]
            raise ApiError(422, "cannot_annotate", f"a {width}x{height} image cannot be drawn as a JPEG (at most "
                                                   f"65,500 pixels a side): ask for the JSON")
        return buf.tobytes()

    @app.post("/v1/analyze", response_model=AnalyzeOut, dependencies=[Depends(authorised)],
              responses={**ERRORS, 200: {"content": {"image/jpeg": {}},
                                         "description": "the faces as JSON (a list of them for several `image` "
                                                        "fields), or the annotated JPEG with annotated=1"}},
              summary="Gender and age of every face in an image", response_model_exclude_unset=True,
              openapi_extra={"requestBody": IMAGE_BODY})
    async def analyze(request: Request,
                      det_thresh: float = Query(0.8, ge=DET_FLOOR, le=1.0, description="minimum detector score"),
                      min_face: float = Query(0.0, ge=0.0, description="ignore faces whose box is smaller (px)"),
                      max_faces: int = Query(0, ge=0, le=10000, description="keep the N best faces (0 = all); "
                                                                            "faces_total tells how many there were"),
                      annotated: bool = Query(False, description="return the annotated JPEG instead of JSON")):
        """Send the image as the multipart form field `image` (repeat it for several images: the answer is
        then a list, in order), or as the raw request body. Returns the document of `infer.py --json` for
        one image, plus its size, the model's name, `faces_total`, `faces_dropped` and `timings_ms`."""
        t0 = time.perf_counter()
        images = await receive(request)
        if annotated and len(images) > 1:
            raise ApiError(400, "several_images", "annotated=1 takes one image; send the others separately")
        with working():
            docs = []
            for data, name in images:
                res, counts, ms, hold, _ = await analyse(data, name, det_thresh, min_face, max_faces, t0,
                                                         keep_image=annotated)
                with hold:
                    if annotated:
                        jpeg = await asyncio.get_running_loop().run_in_executor(pool, annotated_jpeg, res)
                        return Response(jpeg, media_type="image/jpeg")
                    doc = to_json(res)
                docs.append({"schema_version": doc["schema_version"], "image": doc["image"],
                             "width": counts["width"], "height": counts["height"],
                             "model": _public_name(analyzer.engine.name), "faces": doc["faces"],
                             "faces_total": counts["faces_total"], "faces_dropped": counts["faces_dropped"],
                             "faces_dropped_flagged": counts["faces_dropped_flagged"],
                             "timings_ms": ms})
        # returned as a response: the document already has AnalyzeOut's shape (the schema /docs shows)
        return JSONResponse(docs[0] if len(docs) == 1 else docs)

    @app.post("/v1/track", dependencies=[Depends(authorised)], responses=ERRORS,
              summary="One camera frame of a stream: faces with track ids and smoothed labels",
              openapi_extra={"requestBody": IMAGE_BODY})
    async def track(request: Request,
                    session: str = Query(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$",
                                         description="one id per camera stream, chosen by the client"),
                    det_thresh: float = Query(0.8, ge=DET_FLOOR, le=1.0, description="minimum detector score")):
        """Frames of one `session` are followed as `infer.py --video` follows a video's: each face gets a
        track id that stays while it is in view, and its gender and age smoothed over the frames. Returns
        `infer.py --video --jsonl`'s line for the frame, plus its size, `faces_dropped`,
        `faces_dropped_flagged` and `timings_ms` (with `track`)."""
        t0 = time.perf_counter()
        images = await receive(request)
        if len(images) != 1:
            raise ApiError(400, "several_images", "a frame is one image")
        with working():
            res, counts, ms, hold, labels = await analyse(images[0][0], images[0][1], det_thresh, 0.0, 0, t0)
            with hold:
                stream = streams.get(session)
                async with stream.lock:  # frames of one stream in arrival order; the matching off the event loop
                    t_track = time.perf_counter()
                    line = await asyncio.get_running_loop().run_in_executor(pool, follow, stream, res.faces,
                                                                            labels, max_tracks, analyzer)
                    stream.last_use = time.monotonic()
                ms["track"] = round((time.perf_counter() - t_track) * 1000, 1)
                ms["total"] = round((time.perf_counter() - t0) * 1000, 1)
        line.update(width=counts["width"], height=counts["height"], faces_dropped=counts["faces_dropped"],
                    faces_dropped_flagged=counts["faces_dropped_flagged"], timings_ms=ms)
        return JSONResponse(line)

    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    # outermost: every answer has its id and the security headers
    app.add_middleware(Front, limits=limits, access_log=access_log, default_headers=SECURITY_HEADERS)
    return app


__all__ = ["create_app", "follow", "MAX_BYTES", "DET_FLOOR", "MAX_QUEUE", "MAX_TRACKS",
           "MAX_FACES_PER_IMAGE", "Stream", "Streams"]
