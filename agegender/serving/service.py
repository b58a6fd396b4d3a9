"""serve.py's application: age and gender over HTTP (FastAPI), the same photo-to-faces path and JSON as
`infer.py --json`, faces of concurrent requests batched through the net, hostile input answered with a
JSON error and a status, never a traceback. Also the page at `/` (photo and live camera), offline API docs
at `/docs`, and `/v1/track`: camera frames of one stream followed by the video tracker.

create_app only wires the parts: the shared ServiceState (state.py) on `app.state.service`, the JSON errors
(api_errors.py), the middleware, and the routers of routes/ (meta, analyze, track); the models /docs shows are
in schemas.py."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware

from agegender import __version__
from agegender.data.image import MAX_PIXELS
from agegender.serving.analyzer import FaceAnalyzer
from agegender.serving.api_errors import add_error_handlers
from agegender.serving.http import Front, Limits
from agegender.serving.memory import MAX_FACES_PER_IMAGE, MEMORY_BUDGET, check_memory_budget
from agegender.serving.routes import analyze, meta, track
from agegender.serving.state import DET_FLOOR, ServiceState
from agegender.serving.streams import STREAM_IDLE_S, Stream, Streams, follow

MAX_BYTES = 10_000_000
MAX_QUEUE = 32   # requests being decoded, detected or labelled at once; over it: 503
MAX_TRACKS = 1000  # live tracks of one camera session (at least --max-faces-per-image)

# Security headers. Every answer: no MIME sniffing, no framing, and for the JSON a policy that runs nothing
# (the page and /docs set their own: routes/meta.py).
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"))


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    state.start()
    yield
    await state.stop()


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
    state = ServiceState(analyzer, page=meta.page_html(analyzer), max_bytes=max_bytes, max_pixels=max_pixels,
                         batch_window_ms=batch_window_ms, batch_faces=batch_faces, workers=workers,
                         max_queue=max_queue, api_key=api_key, limits=limits, memory_budget=memory_budget,
                         max_faces_per_image=max_faces_per_image,
                         max_tracks=max(MAX_TRACKS, max_faces_per_image), stream_idle_s=stream_idle_s)
    app = FastAPI(title="AgeGender", version=__version__, lifespan=_lifespan, docs_url=None, redoc_url=None,
                  description="Gender and age of every face in an image: RetinaFace detection, 5-point "
                              "alignment, and the bundled (or given) gender/age model. The page at `/` "
                              "tries it on a photo or a camera.")
    app.state.service = state
    add_error_handlers(app)

    # the page and the docs: bundled files only, nothing from another host
    app.mount("/static", StaticFiles(directory=meta.STATIC), name="static")
    assets = meta.swagger_assets()
    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")
    for routes in (meta, analyze, track):
        app.include_router(routes.router)

    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    # outermost: every answer has its id and the security headers
    app.add_middleware(Front, limits=limits, access_log=access_log, default_headers=SECURITY_HEADERS)
    return app


__all__ = ["create_app", "follow", "MAX_BYTES", "DET_FLOOR", "MAX_QUEUE", "MAX_TRACKS",
           "MAX_FACES_PER_IMAGE", "Stream", "Streams", "ServiceState"]
