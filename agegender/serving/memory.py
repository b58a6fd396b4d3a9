"""What serve.py's requests may hold in memory at once: a budget of bytes counted for the decoded images and
the face crops (the two terms that grow with what a client sends), and the heap given back to the system
after a burst (glibc keeps freed memory in its arenas otherwise)."""
from __future__ import annotations

import ctypes
import ctypes.util
import threading

MEMORY_BUDGET = 1_000_000_000  # bytes of decoded images and crops held by all requests together
MAX_FACES_PER_IMAGE = 256  # faces labelled in one image: the largest are kept, the answer counts the others
# decoding holds the decoder's BGR array and the RGB copy (3 + 3 bytes a pixel); afterwards the RGB alone
DECODE_BYTES_PER_PIXEL = 6
IMAGE_BYTES_PER_PIXEL = 3
# an aligned 112x112 RGB crop, and its copy in the stacked batch the net reads
CROP_BYTES = 2 * 112 * 112 * 3


class OverBudget(Exception):
    """Taking these bytes would put the requests in progress over the budget."""


class MemoryBudget:
    """A thread-safe count of the bytes that requests in progress hold, refused past `limit`."""

    def __init__(self, limit: int = MEMORY_BUDGET):
        self.limit, self.used = int(limit), 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> "Hold":
        """Hold `nbytes` of the budget (release with the Hold); raises OverBudget when they do not fit now."""
        nbytes = int(nbytes)
        with self._lock:
            if self.used + nbytes > self.limit:
                raise OverBudget(f"{nbytes} bytes wanted, {self.limit - self.used} of {self.limit} free")
            self.used += nbytes
        return Hold(self, nbytes)

    def _give(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes


class Hold:
    """Bytes held of a MemoryBudget: shrinks as a request lets go of its image, released at its end."""

    def __init__(self, budget: MemoryBudget, nbytes: int):
        self.budget, self.nbytes = budget, nbytes

    def shrink_to(self, nbytes: int) -> None:
        """Hold only `nbytes` from now on (never more than already held)."""
        nbytes = max(0, min(int(nbytes), self.nbytes))
        self.budget._give(self.nbytes - nbytes)
        self.nbytes = nbytes

    def release(self) -> None:
        self.shrink_to(0)

    def __enter__(self) -> "Hold":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def kept_image_bytes(pixels: int, keep_image: bool) -> int:
    """What an image of `pixels` holds once decoded: the RGB array alone, or with `keep_image` (annotated=1)
    that and what drawing on it adds, a BGR copy and the JPEG's buffer (counted at the decode's rate)."""
    return pixels * (DECODE_BYTES_PER_PIXEL if keep_image else IMAGE_BYTES_PER_PIXEL)


def request_bytes(pixels: int, faces: int, keep_image: bool = False) -> int:
    """What one image of `pixels` with up to `faces` faces may hold at its peak: the decode, or the decoded
    image (drawn on with `keep_image`) and its crops, whichever is more."""
    return max(pixels * DECODE_BYTES_PER_PIXEL, kept_image_bytes(pixels, keep_image) + faces * CROP_BYTES)


def check_memory_budget(memory_budget: int, max_pixels: int, max_faces_per_image: int) -> None:
    """Refuse (ValueError) a budget that one image of `max_pixels` could not fit, annotated=1 included: it
    would be refused forever."""
    need = request_bytes(max_pixels, max_faces_per_image, keep_image=True)
    if memory_budget < need:
        raise ValueError(f"--memory-budget {memory_budget} is below what one image of --max-pixels {max_pixels} "
                         f"with --max-faces-per-image {max_faces_per_image} may hold ({need} bytes): raise it, "
                         f"or lower the others")


def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()
_TRIM_LOCK = threading.Lock()


def _shrink_arena(session) -> None:
    """Hand back what an onnxruntime session's memory arena grew to beyond its first block: one run on a
    minimal input with arena shrinkage on (the arena otherwise keeps its largest batch's size for good)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    feeds = {}
    for i in session.get_inputs():
        if i.type != "tensor(float)":
            return
        shape = [d if isinstance(d, int) else 1 if k == 0 else 32 for k, d in enumerate(i.shape)]
        feeds[i.name] = np.zeros(shape, np.float32)
    session.run(None, feeds, options)


def give_back_memory(*sessions) -> bool:
    """Return the memory a burst left behind: the growth of the onnxruntime `sessions`' arenas (others
    are skipped), then the free memory of glibc's heaps (malloc_trim). False while another thread is at
    it; measured after a burst (3 detections of 1280 px at once, a batch of 256 faces): 766 -> 218 MB."""
    if not _TRIM_LOCK.acquire(blocking=False):
        return False
    try:
        for session in sessions:
            if type(session).__name__ == "InferenceSession":
                try:
                    _shrink_arena(session)
                except Exception:  # noqa: BLE001 -- a model that does not take the minimal input keeps its arena
                    pass
        if _TRIM is not None:
            _TRIM(0)
        return True
    finally:
        _TRIM_LOCK.release()


__all__ = ["MEMORY_BUDGET", "MAX_FACES_PER_IMAGE", "MemoryBudget", "Hold", "OverBudget", "request_bytes", "kept_image_bytes",
           "check_memory_budget", "give_back_memory"]
