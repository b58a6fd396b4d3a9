"""Ray actors that fail on purpose, for tests/test_ray.py: a module of its own so that Ray's workers import it
by name (`tests.ray_faults`, the project root being on their path), as they import the real actors."""
from __future__ import annotations

import os

from agegender.serving.ray_batch import NetWorker, ShardWorker

# the path of a marker file; the first actor call to find it missing creates it and kills its own process.
# Set before Ray starts: its worker processes take the environment of that moment
DIE_ONCE_ENV = "AGEGENDER_TEST_RAY_DIE_ONCE"


def die_once() -> None:
    """Exit this process (as a crash would: no clean-up) unless the marker exists; create it first, so that
    of all the workers only one dies."""
    marker = os.environ.get(DIE_ONCE_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(1)


class DyingShardWorker(ShardWorker):
    """A ShardWorker whose process dies in one `analyze` call (while the die-once marker is missing)."""

    def analyze(self, paths: list[str]):
        die_once()
        return super().analyze(paths)


class DyingNetWorker(NetWorker):
    """A NetWorker whose process dies in one `label` call (while the die-once marker is missing)."""

    def label(self, prepared):
        die_once()
        return super().label(prepared)


DYING_ACTORS = (DyingShardWorker, DyingNetWorker)
