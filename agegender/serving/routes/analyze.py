"""`POST /v1/analyze`: gender and age of every face in one or more images, as JSON or an annotated JPEG."""
from __future__ import annotations

import time

import cv2
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from agegender.serving.analyzer import ImageResult
from agegender.serving.dependencies import authorised, service_state
from agegender.serving.api_errors import ApiError
from agegender.serving.inference import draw, to_json
from agegender.serving.model_info import public_name
from agegender.serving.schemas import ERRORS, IMAGE_BODY, AnalyzeOut
from agegender.serving.state import DET_FLOOR, ServiceState

router = APIRouter()


def annotated_jpeg(res: ImageResult) -> bytes:
    """The image with its faces drawn, as JPEG bytes; 422 for an image too large for a JPEG."""
    ok, buf = cv2.imencode(".jpg", draw(res))
    if not ok:  # JPEG holds at most 65,500 pixels a side
        height, width = res.image.shape[:2]
        raise ApiError(422, "cannot_annotate", f"a {width}x{height} image cannot be drawn as a JPEG (at most "
                                               f"65,500 pixels a side): ask for the JSON")
    return buf.tobytes()


@router.post("/v1/analyze", response_model=AnalyzeOut, dependencies=[Depends(authorised)],
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
                  annotated: bool = Query(False, description="return the annotated JPEG instead of JSON"),
                  state: ServiceState = Depends(service_state)) -> Response:
    """Send the image as the multipart form field `image` (repeat it for several images: the answer is
    then a list, in order), or as the raw request body. Returns the document of `infer.py --json` for
    one image, plus its size, the model's name, `faces_total`, `faces_dropped` and `timings_ms`."""
    t0 = time.perf_counter()
    images = await state.receive(request)
    if annotated and len(images) > 1:
        raise ApiError(400, "several_images", "annotated=1 takes one image; send the others separately")
    with state.working():
        docs = []
        for data, name in images:
            res, counts, ms, hold, _ = await state.label_image(data, name, det_thresh, min_face, max_faces, t0,
                                                               keep_image=annotated)
            with hold:
                if annotated:
                    return Response(await state.in_pool(annotated_jpeg, res), media_type="image/jpeg")
                doc = to_json(res)
            docs.append({"schema_version": doc["schema_version"], "image": doc["image"],
                         "width": counts["width"], "height": counts["height"],
                         "model": public_name(state.analyzer.engine.name), "faces": doc["faces"],
                         "faces_total": counts["faces_total"], "faces_dropped": counts["faces_dropped"],
                         "faces_dropped_flagged": counts["faces_dropped_flagged"],
                         "timings_ms": ms})
    # returned as a response: the document already has AnalyzeOut's shape (the schema /docs shows)
    return JSONResponse(docs[0] if len(docs) == 1 else docs)
