"""Camera streams of /v1/track: a tracker per client-chosen session id, bounded in number and forgotten
when idle, and one frame's way through its stream's tracker."""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from agegender.model.engine import Labels
from agegender.serving.analyzer import FaceAnalyzer, FaceResult
from agegender.serving.tracking import Tracker
from agegender.serving.video import face_labels, frame_json

MAX_STREAMS = 64  # camera sessions tracked at once (the least recently used is dropped)
STREAM_IDLE_S = 120.0


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
