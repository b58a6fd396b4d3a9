"""The page at `/`, the offline API docs at `/docs`, `/health` and `/v1/model`: bundled files only,
nothing from another host."""
from __future__ import annotations

import base64
import functools
import hashlib
import os
import platform
import re
from html import escape
from typing import Optional

import cv2
import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from agegender import CODE_LICENSE, __version__
from agegender.serving.analyzer import FaceAnalyzer
from agegender.serving.dependencies import authorised, service_state
from agegender.serving.api_errors import ApiError
from agegender.serving.model_info import age_range_info, bundled_name, file_sha256, public_name, weights_file
from agegender.serving.schemas import ERRORS, HealthOut, ModelOut
from agegender.serving.state import DET_FLOOR, ServiceState
from agegender.serving.uploads import MAX_IMAGES

STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")
# The page: its own scripts and styles only, photos shown through blob: URLs, the camera (getUserMedia needs
# no CSP source; srcObject is not a URL), the API on the same origin. /docs: Swagger UI's bundled files, its
# one inline script allowed by hash (`docs_policy`), inline styles and data: icons as it draws them.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
               "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
               "form-action 'none'; frame-ancestors 'none'")
PAGE_PERMISSIONS = "camera=(self), microphone=(), geolocation=()"
PAGE_MODEL_SLOT = '<footer id="model"></footer>'
PAGE_RANGE_SLOT = '<th id="range-head">Range</th>'

router = APIRouter()


def docs_policy(html: str) -> str:
    """/docs's policy: its inline scripts allowed by their sha256, nothing else inline but styles."""
    hashes = " ".join("'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
                      for m in re.findall(r"<script>(.*?)</script>", html, re.S))
    return (f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
            f"img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            f"form-action 'none'; frame-ancestors 'none'")


@functools.lru_cache(maxsize=1)
def swagger_assets() -> Optional[str]:
    """The folder of Swagger UI's bundled files, None without the package (the page and the API work
    without it; /docs says what is missing)."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return str(swagger_ui_path)


def page_html(analyzer: FaceAnalyzer) -> str:
    """The page with the model that answers and its terms in its footer (which model labels the faces, and
    under what terms: CC BY asks for its attribution to be shown), and the Range column's level as the
    server answers, for everyone who can open the page."""
    engine = analyzer.engine
    with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
        text = f.read()
    name = bundled_name(engine)
    shown = f"{name} ({public_name(engine.name)})" if name else public_name(engine.name)
    footer = (f'<footer id="model">Model: <b id="model-name">{escape(shown)}</b> &middot; '
              f'<span id="model-terms">terms: {escape(engine.license)}</span></footer>')
    rng = age_range_info(analyzer)
    level = f"{rng['level'] * 100:g} %"
    how = "calibrated" if rng["calibrated"] else "the model's own range, not calibrated"
    head = f'<th id="range-head" title="the true age lies in this range for {level} of faces ({how})">Range</th>'
    return text.replace(PAGE_MODEL_SLOT, footer).replace(PAGE_RANGE_SLOT, head)


@router.get("/", include_in_schema=False)
async def page(state: ServiceState = Depends(service_state)) -> HTMLResponse:
    """The page (built once by create_app) under its own policy."""
    return HTMLResponse(state.page, headers={"Content-Security-Policy": PAGE_POLICY,
                                             "Permissions-Policy": PAGE_PERMISSIONS})


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    """Swagger UI from its bundled files, its inline script allowed by hash."""
    if swagger_assets() is None:
        raise ApiError(404, "not_found", "the API docs need the package swagger-ui-bundle-v2")
    html = get_swagger_ui_html(openapi_url=request.app.openapi_url, title="AgeGender API",
                               swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                               swagger_css_url="/docs-assets/swagger-ui.css",
                               swagger_favicon_url="/docs-assets/favicon-32x32.png")
    html.headers["Content-Security-Policy"] = docs_policy(html.body.decode())
    return html


# no docstrings on the routes below: FastAPI would show them in the OpenAPI document
@router.get("/health", response_model=HealthOut, summary="Liveness and readiness")
async def health(state: ServiceState = Depends(service_state)) -> dict:
    return {"status": "ok", "model_loaded": state.analyzer.engine is not None}


@router.get("/v1/model", response_model=ModelOut, summary="What runs behind /v1/analyze",
            dependencies=[Depends(authorised)], responses={401: ERRORS[401]})
async def model(state: ServiceState = Depends(service_state)) -> dict:
    import onnxruntime

    analyzer, limits = state.analyzer, state.limits
    weights = weights_file(analyzer.engine.name)
    return {"name": public_name(analyzer.engine.name), "file": os.path.basename(weights or analyzer.engine.name),
            "sha256": await state.in_pool(file_sha256, weights) if weights else None,
            "engine": analyzer.engine.kind,
            "input": "aligned faces (N,3,112,112) RGB 0-255, ArcFace 5-point template",
            "output": "(N,202): gender logits [0:2] (index 1 = male), then 100 pairs 'age > k'",
            "age_decode": analyzer.age_decode, "gender_ensemble": analyzer.teacher is not None,
            "gender_teacher_weight": analyzer.engine.teacher_weight if analyzer.teacher is not None else None,
            "gender_coding": "'gender' is the string 'male' or 'female' (P(male) >= 0.5: male); "
                             "'p_male' is the model's P(male)"
                             + (f", mixed with the teacher net's at weight {analyzer.engine.teacher_weight:g}"
                                if analyzer.teacher is not None else ""),
            "detector": getattr(analyzer.detector, "name", type(analyzer.detector).__name__),
            "limits": {"max_bytes": state.max_bytes, "max_pixels": state.max_pixels, "det_thresh_min": DET_FLOOR,
                       "max_queue": state.max_queue, "max_images": MAX_IMAGES, "memory_budget": state.memory_budget,
                       "max_faces_per_image": state.max_faces_per_image, "max_tracks": state.max_tracks,
                       "max_header_bytes": limits.max_header_bytes, "read_timeout_s": limits.read_timeout,
                       "max_connections": limits.max_connections},
            "versions": {"python": platform.python_version(), "numpy": np.__version__,
                         "opencv": cv2.__version__, "onnxruntime": onnxruntime.__version__,
                         "model": analyzer.engine.version},
            "version": __version__, "license": {"code": CODE_LICENSE, "model": analyzer.engine.license},
            "bundled": bundled_name(analyzer.engine), "provenance": analyzer.engine.provenance,
            "age_range": age_range_info(analyzer)}
