"""What the routes of one service share: the analyzer, the face batcher, the worker threads, the camera
streams, the memory budget and the count of requests in progress, with the steps every image route takes
(admission, reading, decoding, detection, the batched net). One ServiceState per app, on `app.state`."""
from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from fastapi import Request

from agegender.cli import DET_THRESH_MIN
from agegender.data.image import header_size
from agegender.model.engine import Labels
from agegender.serving.analyzer import FaceAnalyzer, ImageResult
from agegender.serving.batcher import FaceBatcher
from agegender.serving.api_errors import ApiError
from agegender.serving.http import Limits
from agegender.serving.memory import (CROP_BYTES, Hold, MemoryBudget, OverBudget, give_back_memory,
                                      kept_image_bytes, request_bytes)
from agegender.serving.streams import Streams
from agegender.serving.uploads import decode_upload, read_body, read_images

DET_FLOOR = DET_THRESH_MIN  # the detector runs at this threshold; each request raises it with det_thresh


class ServiceState:
    """The shared parts of one app, built by create_app and started and stopped by its lifespan."""

    def __init__(self, analyzer: FaceAnalyzer, *, page: str, max_bytes: int, max_pixels: int,
                 batch_window_ms: float, batch_faces: int, workers: int, max_queue: int, api_key: Optional[str],
                 limits: Limits, memory_budget: int, max_faces_per_image: int, max_tracks: int,
                 stream_idle_s: float):
        self.analyzer, self.page, self.api_key, self.limits = analyzer, page, api_key, limits
        self.max_bytes, self.max_pixels, self.max_queue = max_bytes, max_pixels, max_queue
        self.memory_budget, self.max_faces_per_image, self.max_tracks = memory_budget, max_faces_per_image, max_tracks
        self.stream_idle_s = stream_idle_s
        self.batcher = FaceBatcher(analyzer, batch_window_ms, batch_faces)
        # one thread more than cores: while a thread does its Python work (decode set-up, alignment), the
        # others keep every core in onnxruntime (load test: +10 % faces/s over one per core)
        self.pool = ThreadPoolExecutor(max_workers=workers or (os.cpu_count() or 1) + 1, thread_name_prefix="detect")
        self.streams = Streams(idle_s=stream_idle_s)
        self.budget = MemoryBudget(memory_budget)
        # the onnxruntime sessions whose arenas grow with a burst (the net's with its batch, the detector's
        # with the images detected at once): shrunk when the burst is over
        self.sessions = [getattr(part, "session", None)
                         for part in (analyzer.engine, analyzer.detector, analyzer.teacher)]
        self.in_progress = 0
        self.worked = False  # requests ran since the heap was last given back
        self._sweeper: Optional[asyncio.Task] = None

    def start(self) -> None:
        """Start the batcher and the housekeeping sweep (on the running event loop)."""
        self.batcher.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._housekeeping())

    async def stop(self) -> None:
        """Stop the sweep and the batcher, then wait for the worker threads."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.batcher.stop()
        self.pool.shutdown(wait=True)

    async def _housekeeping(self) -> None:
        """Every few seconds: forget idle camera streams, and once a burst is over give its memory back
        (onnxruntime's arenas and glibc's heap keep what a burst took otherwise: round 3 held 2.7 GB)."""
        while True:
            await asyncio.sleep(min(2.0, self.stream_idle_s))
            self.streams.expire()
            if self.worked and self.in_progress == 0:
                self.worked = False
                await self.in_pool(give_back_memory, *self.sessions)

    async def in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on a worker thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def admit(self) -> None:
        """503 when --max-queue requests are in progress."""
        if self.in_progress >= self.max_queue:
            raise ApiError(503, "overloaded", f"{self.max_queue} requests are in progress (--max-queue); retry "
                                              "shortly", {"Retry-After": "1"})

    async def receive(self, request: Request) -> list[tuple[bytes, str]]:
        """The request's images (bytes, name), read only while there is room for the work (503 otherwise)."""
        self.admit()
        return await read_images(request, await read_body(request, self.max_bytes), self.max_bytes)

    @contextmanager
    def working(self) -> Iterator[None]:
        """A request counted against --max-queue while its images are analysed (admitted again: the
        queue may have filled while its body arrived)."""
        self.admit()
        self.in_progress += 1
        self.worked = True
        try:
            yield
        finally:
            self.in_progress -= 1

    def hold_for(self, data: bytes, keep_image: bool) -> Hold:
        """The budget an image of these bytes may need at its peak (from its header; drawn on with
        `keep_image`), held now; 503 when the requests in progress hold too much. An image over --max-pixels
        is counted at the limit: decoding refuses it from the header, before any pixel."""
        size = header_size(data) if data else None
        pixels = min(size[0] * size[1], self.max_pixels or size[0] * size[1]) if size else 0
        try:
            return self.budget.take(request_bytes(pixels, self.max_faces_per_image, keep_image))
        except OverBudget:
            raise ApiError(503, "overloaded", "the images in progress fill the server's memory budget "
                                              "(--memory-budget); retry shortly", {"Retry-After": "1"}) from None

    async def label_image(self, data: bytes, name: str, det_thresh: float, min_face: float, max_faces: int,
                          t0: float, keep_image: bool = False) -> tuple[ImageResult, dict, dict, Hold, Labels]:
        """One image through decode, detection and the batched net: (result, {"width", "height",
        "faces_total", "faces_dropped", "faces_dropped_flagged"}, ms, the budget it holds: release it when
        done, the net's labels). The result keeps the decoded image only with `keep_image` (to draw on: the
        budget held then counts draw()'s copy and the JPEG's buffer too)."""
        analyzer, max_faces_per_image = self.analyzer, self.max_faces_per_image

        def prepare():
            t = time.perf_counter()
            hold = self.hold_for(data, keep_image)
            try:
                rgb = decode_upload(data, self.max_pixels)
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

        job = self.pool.submit(prepare)
        try:
            rgb, faces, crops, counts, hold, decode_s, detect_s = await asyncio.wrap_future(job)
        except asyncio.CancelledError:  # the work may still finish in its thread: its budget goes back then
            job.add_done_callback(lambda j: j.cancelled() or j.exception() or j.result()[4].release())
            raise
        try:
            t_net = time.perf_counter()
            labels = await self.batcher.labels(crops)
            net_s = time.perf_counter() - t_net
            res = ImageResult(name, rgb, analyzer.results(faces, crops, labels))
        except BaseException:
            hold.release()
            raise
        ms = {"decode": decode_s * 1000, "detect": detect_s * 1000, "net": net_s * 1000,
              "total": (time.perf_counter() - t0) * 1000}
        return res, counts, {k: round(v, 1) for k, v in ms.items()}, hold, labels
