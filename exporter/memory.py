"""The C library's allocator, kept in check for a large fleet (glibc; elsewhere nothing).

Two things make a large fleet's exporter hold memory it no longer uses. glibc raises its mmap
threshold after freeing a large block, so the blocks each scrape builds and drops come from the
heap, which gives little back (`fix_malloc_thresholds`). And a plain scrape of a large fleet leaves
free pages inside the heap, between blocks still in use, which glibc returns only from the
heap's top. At 10,000 devices scraped plain every 3 s, RSS climbed from 426 to 501 MB
within a minute, and malloc_trim brought it back to 426 MB each time. `Trimmer` gives such
pages back after each /metrics of a large fleet, at most once a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger("lektrico.memory")

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter (malloc.h)
TRIM_THRESHOLD = 128 * 1024  # glibc's default
# A plain /metrics body passes that 128 KiB from about 22 devices (5.8 KB each). A smaller fleet
# never frees a block that large, so it leaves ctypes (0.24 MB) unloaded.
MALLOC_FROM = 32
# A trim at 10,000 devices costs about 7 ms of CPU (gdb: clock() around malloc_trim), so one a
# second at most is 0.7 % of a core however often /metrics is asked for; at Prometheus's
# 15 s, 0.05 %.
TRIM_EVERY = 1.0  # s: at most one malloc_trim this often
TRIM_DELAY = 0.2  # s after a large body is sent: by then the buffers that sent it are freed


def glibc() -> Any | None:
    """The process's C library where it is glibc, else None."""
    import ctypes  # here: a small fleet never needs it (0.24 MB)

    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, the C library's among them
    except OSError:
        return None
    # gnu_get_libc_version is glibc's own: another C library's mallopt takes other numbers.
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def fix_malloc_thresholds() -> bool:
    """Keep glibc's malloc thresholds where they start (memory above 128 KiB mapped on its own
    and given back when freed), and say whether it took. By default, freeing a block of more
    than 128 KiB raises the mmap threshold to that block's size, up to 32 MiB: after the first
    scrapes of a large fleet, the blocks each scrape builds and drops (the gzip body, each
    family's text) come from the heap instead, which gives little back. Measured at 4,000
    devices scraped every 3 s: 5 KB a device of RSS for nothing. Setting any threshold turns
    that adjustment off. Not glibc (musl, macOS): nothing to do."""
    libc = glibc()
    return libc is not None and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


class Trimmer:
    """malloc_trim(0) in a worker thread when asked (`soon`), at most once every `every` s.

    malloc_trim walks each arena's free chunks and gives their whole pages back to the kernel;
    it takes the arena's lock, not the GIL (ctypes lets go of it), so polls go on meanwhile."""

    def __init__(self, libc: Any, every: float = TRIM_EVERY, delay: float = TRIM_DELAY) -> None:
        import ctypes

        self._trim = libc.malloc_trim
        self._trim.argtypes = [ctypes.c_size_t]
        self.every = every
        self.delay = delay
        self._last = -float("inf")
        self._task: asyncio.Future[Any] | None = None
        self.trims = 0

    @classmethod
    def for_this_process(cls) -> Trimmer | None:
        libc = glibc()
        return cls(libc) if libc is not None and hasattr(libc, "malloc_trim") else None

    def soon(self) -> None:
        """A trim `delay` s from now, unless one is due or ran within `every` s."""
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now + self.delay
        asyncio.get_running_loop().call_later(self.delay, self._start)

    def _start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self.trims += 1
        self._task = asyncio.get_running_loop().run_in_executor(None, self._trim, 0)
        self._task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("malloc_trim failed: %s", task.exception())
