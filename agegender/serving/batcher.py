"""Faces of concurrent requests through the attribute net together: a small asyncio queue that forms a
batch when `max_faces` are waiting or `window_ms` after the first arrived, runs it on the net's own thread
(the event loop never waits for inference), and hands each request its rows back."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from agegender.model.engine import Labels
from agegender.serving.analyzer import FaceAnalyzer


class FaceBatcher:
    def __init__(self, analyzer: FaceAnalyzer, window_ms: float = 5.0, max_faces: int = 64):
        self.analyzer, self.window, self.max_faces = analyzer, window_ms / 1000.0, max_faces
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._net = ThreadPoolExecutor(max_workers=1, thread_name_prefix="net")
        self.batches = 0  # how many forward passes ran (the tests look at it)

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._net.shutdown(wait=True)

    async def labels(self, crops: list[np.ndarray]) -> Labels:
        """The `Labels` (P(male), age, age range, P(age > k)) of one request's aligned crops, computed in a
        batch with other requests' faces."""
        if not crops:
            return Labels.empty()
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((crops, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            waiting = len(items[0][0])
            deadline = loop.time() + self.window
            while waiting < self.max_faces:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:
                    break
                items.append(item)
                waiting += len(item[0])
            crops = [c for cs, _ in items for c in cs]
            try:
                out = await loop.run_in_executor(self._net, self.analyzer.labels, crops)
                self.batches += 1
            except Exception as exc:  # noqa: BLE001 -- each waiting request gets the error, the loop lives on
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            i = 0
            for cs, fut in items:
                if not fut.done():
                    fut.set_result(Labels(*(x[i:i + len(cs)] for x in out)))
                i += len(cs)


__all__ = ["FaceBatcher"]
