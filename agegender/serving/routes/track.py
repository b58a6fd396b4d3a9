"""`POST /v1/track`: one camera frame of a client's stream, its faces followed by the video tracker."""
from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from agegender.serving.dependencies import authorised, service_state
from agegender.serving.api_errors import ApiError
from agegender.serving.schemas import ERRORS, IMAGE_BODY
from agegender.serving.state import DET_FLOOR, ServiceState
from agegender.serving.streams import follow

router = APIRouter()


@router.post("/v1/track", dependencies=[Depends(authorised)], responses=ERRORS,
             summary="One camera frame of a stream: faces with track ids and smoothed labels",
             openapi_extra={"requestBody": IMAGE_BODY})
async def track(request: Request,
                session: str = Query(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$",
                                     description="one id per camera stream, chosen by the client"),
                det_thresh: float = Query(0.8, ge=DET_FLOOR, le=1.0, description="minimum detector score"),
                state: ServiceState = Depends(service_state)) -> JSONResponse:
    """Frames of one `session` are followed as `infer.py --video` follows a video's: each face gets a
    track id that stays while it is in view, and its gender and age smoothed over the frames. Returns
    `infer.py --video --jsonl`'s line for the frame, plus its size, `faces_dropped`,
    `faces_dropped_flagged` and `timings_ms` (with `track`)."""
    t0 = time.perf_counter()
    images = await state.receive(request)
    if len(images) != 1:
        raise ApiError(400, "several_images", "a frame is one image")
    with state.working():
        res, counts, ms, hold, labels = await state.label_image(images[0][0], images[0][1], det_thresh, 0.0, 0, t0)
        with hold:
            stream = state.streams.get(session)
            async with stream.lock:  # frames of one stream in arrival order; the matching off the event loop
                t_track = time.perf_counter()
                line = await state.in_pool(follow, stream, res.faces, labels, state.max_tracks, state.analyzer)
                stream.last_use = time.monotonic()
            ms["track"] = round((time.perf_counter() - t_track) * 1000, 1)
            ms["total"] = round((time.perf_counter() - t0) * 1000, 1)
    line.update(width=counts["width"], height=counts["height"], faces_dropped=counts["faces_dropped"],
                faces_dropped_flagged=counts["faces_dropped_flagged"], timings_ms=ms)
    return JSONResponse(line)
