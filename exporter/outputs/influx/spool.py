"""The InfluxDB spool: queued points on disk, so a crash or restart during an outage loses nothing.

Layout of `spool_dir`:

    lock               held (flock) by the running exporter; a second one refuses to start
    000000000001.lp    line protocol as queued, append-only, fsync'ed before each write attempt
    000000000001.ack   how many bytes of the .lp are done with (written, or dropped and counted)

A segment is deleted once all of it is done with. At start, what follows each .ack offset is
queued again, oldest segment first, and new points go to a new segment. A torn last line (power
lost mid-append) is skipped. The .ack is not fsync'ed: after a power loss a batch may be sent
twice, which InfluxDB absorbs (a point with the same series and timestamp overwrites).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("lektrico.influx")
SEGMENT_BYTES = 16 << 20
REPLAY_CHUNK_POINTS = 100


class SpoolError(RuntimeError):
    pass


@dataclass(eq=False, slots=True)
class Chunk:
    """The points of one reading (or of a replayed stretch of a segment), as line protocol."""

    data: bytes  # lines, each ending in "\n"
    points: int
    segment: Segment | None = None
    end: int = 0  # offset in the segment just after this chunk
    done: bool = False


class Segment:
    def __init__(self, path: Path, acked: int = 0, size: int = 0, writable: bool = False) -> None:
        self.path = path
        self.ack_path = path.with_suffix(".ack")
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if writable else -1
        self.ack_fd = os.open(self.ack_path, os.O_WRONLY | os.O_CREAT, 0o600)
        self.acked = acked
        self.size = size
        self.pending: deque[Chunk] = deque()
        self.dirty = False

    def append(self, data: bytes) -> int:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)  # never leave half a line behind
            raise
        self.size += len(data)
        self.dirty = True
        return self.size

    def sync(self) -> None:
        if self.dirty and self.fd >= 0:
            os.fsync(self.fd)
            self.dirty = False

    def ack(self, offset: int) -> None:
        self.acked = offset
        os.pwrite(self.ack_fd, b"%020d\n" % offset, 0)

    def close(self) -> None:
        for fd in (self.fd, self.ack_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.ack_fd = -1

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
        self.ack_path.unlink(missing_ok=True)


def _read_ack(path: Path) -> int:
    try:
        return int(path.read_bytes().strip() or b"0")
    except (OSError, ValueError):
        return 0


class Spool:
    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._segments: list[Segment] = []
        self._current: Segment | None = None
        self._next = 1
        self._lock_fd = -1
        self._failed = False

    def open(self) -> list[Chunk]:
        """Lock the directory; the chunks still to write from earlier runs, oldest first."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SpoolError(f"spool_dir {self.directory} is in use by another exporter") from None
        chunks: list[Chunk] = []
        for path in sorted(self.directory.glob("*.lp")):
            if not path.stem.isdigit():
                continue
            self._next = max(self._next, int(path.stem) + 1)
            chunks.extend(self._replay(path))
        return chunks

    def _replay(self, path: Path) -> list[Chunk]:
        acked = _read_ack(path.with_suffix(".ack"))
        with path.open("rb") as f:
            f.seek(acked)
            data = f.read()
        segment = Segment(path, acked, acked + len(data))
        lines = data[: data.rfind(b"\n") + 1].splitlines(keepends=True)
        if not lines:
            segment.remove()
            return []
        offset = acked
        for i in range(0, len(lines), REPLAY_CHUNK_POINTS):
            part = lines[i : i + REPLAY_CHUNK_POINTS]
            body = b"".join(part)
            offset += len(body)
            segment.pending.append(Chunk(body, len(part), segment, offset))
        self._segments.append(segment)
        return list(segment.pending)

    def append(self, data: bytes, points: int) -> Chunk:
        """Queue `data` on disk; the chunk to hand back to `consumed()` once done with."""
        if self._current is None or self._current.size >= self.segment_bytes:
            self._rotate()
        assert self._current is not None
        try:
            end = self._current.append(data)
        except OSError as exc:
            self._warn(f"cannot append to {self._current.path}, keeping points in memory: {exc}")
            with contextlib.suppress(OSError):
                self._rotate()
            return Chunk(data, points)
        self._failed = False
        chunk = Chunk(data, points, self._current, end)
        self._current.pending.append(chunk)
        return chunk

    def _rotate(self) -> None:
        old = self._current
        if old is not None:
            old.sync()
            if old.pending:
                os.close(old.fd)
                old.fd = -1
            else:
                self._drop(old)
        self._current = Segment(self.directory / f"{self._next:012d}.lp", writable=True)
        self._next += 1
        self._segments.append(self._current)

    def _drop(self, segment: Segment) -> None:
        segment.remove()
        self._segments.remove(segment)
        if segment is self._current:
            self._current = None

    def consumed(self, chunks: Iterable[Chunk]) -> None:
        """The chunks are done with: advance the .ack files, delete finished segments."""
        touched: dict[int, Segment] = {}
        for chunk in chunks:
            chunk.done = True
            if chunk.segment is not None:
                touched[id(chunk.segment)] = chunk.segment
        for segment in touched.values():
            end = None
            while segment.pending and segment.pending[0].done:
                end = segment.pending.popleft().end
            try:
                if not segment.pending:
                    self._drop(segment)  # the next append starts a fresh segment
                elif end is not None:
                    segment.ack(end)
            except OSError as exc:
                self._warn(f"cannot update {segment.ack_path}: {exc}")

    def sync(self) -> None:
        if self._current is not None:
            try:
                self._current.sync()
            except OSError as exc:
                self._warn(f"cannot fsync {self._current.path}: {exc}")

    def _warn(self, message: str) -> None:
        if not self._failed:
            log.error("InfluxDB spool: %s", message)
        self._failed = True

    def close(self) -> None:
        self.sync()
        for segment in self._segments:
            segment.close()
        self._segments.clear()
        self._current = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
