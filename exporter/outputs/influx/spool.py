"""The InfluxDB spool: queued points on disk, so a crash, restart or long outage loses nothing.

Layout of `spool_dir`:

    lock               held (flock) by the running exporter; a second one refuses to start
    000000000001.lp    line protocol as queued, append-only, fsync'ed before each write attempt
    000000000001.ack   how many bytes of the .lp are done with (written, or dropped and counted)

The spool, not memory, bounds what waits: up to `max_bytes` on disk. Memory holds only its head
(the writer asks for chunks with `load()`); what follows stays on disk until it is needed.
Beyond `max_bytes` the oldest segment none of whose points are in memory is deleted, and its
points are counted as dropped. A segment is deleted once all of it is done with.

At start what follows each .ack offset is queued again, oldest segment first, and new points go
to a new segment. Damage that loses nothing is repaired, counted and logged (`damage`): a torn
last line (power lost mid-append) is skipped, an .ack that cannot be right (not a number,
negative, past the end of its segment, not at a line boundary) replays the whole segment.
What the spool cannot read (an unreadable segment, a directory or other non-file named like a
segment) stops the start with a SpoolError naming it: skipping it would leave points behind.
The .ack is not fsync'ed: after a power loss a batch may be sent twice, which InfluxDB absorbs
(a point with the same series and timestamp overwrites).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import stat
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from exporter.errors import StartupError

log = logging.getLogger("lektrico.influx")
SEGMENT_BYTES = 16 << 20
MIN_SEGMENT_BYTES = 64 << 10
MAX_BYTES = 1 << 30
LOAD_CHUNK_POINTS = 100
READ_BLOCK = 256 << 10
SEGMENT_NAME = re.compile(r"[0-9]{12}\.lp")  # other names in the directory are left alone

Dropped = Callable[[str, int, str], None]  # reason, points, message


class SpoolError(StartupError):
    pass


def reason_of(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


@dataclass(eq=False, slots=True)
class Chunk:
    """The points of one reading (or of a stretch of a segment read back), as line protocol."""

    data: bytes  # lines, each ending in "\n"
    points: int
    segment: Segment | None = None  # None: in memory only, the spool could not take it
    end: int = 0  # offset in the segment just after this chunk
    done: bool = False


class Segment:
    """One .lp file: [0, acked) done with, [acked, loaded) in memory, [loaded, size) on disk."""

    def __init__(self, path: Path, acked: int = 0, size: int = 0, writable: bool = False) -> None:
        self.path = path
        self.ack_path = path.with_suffix(".ack")
        # Open for as long as the segment lives, also to read it back: what is in it stays
        # readable when the directory goes away or cannot be used any more.
        if writable:
            # O_EXCL: never append to something already there under that name.
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL
            self.fd = os.open(path, flags, 0o600)
        else:
            self.fd = os.open(path, os.O_RDONLY)
        self.writable = writable
        try:
            self.ack_fd = os.open(self.ack_path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            os.close(self.fd)
            if writable:
                path.unlink(missing_ok=True)
            raise
        self.acked = acked
        self.loaded = acked
        self.size = size
        self.unloaded = 0  # points in [loaded, size)
        self.pending: deque[Chunk] = deque()  # loaded, not yet done with (some may be in flight)
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
        if self.dirty:
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


def _read_ack(path: Path) -> int | None:
    """The .ack offset: 0 when there is none, None when what is there is not an offset."""
    try:
        text = path.read_bytes().strip()
    except FileNotFoundError:
        return 0
    except IsADirectoryError:
        raise SpoolError(f"{path} is a directory, not a spool .ack file; move it away") from None
    except OSError as exc:
        raise SpoolError(f"cannot read spool file {path}: {reason_of(exc)}") from None
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 0 else None


class Spool:
    def __init__(
        self,
        directory: Path,
        max_bytes: int = MAX_BYTES,
        segment_bytes: int | None = None,
        on_drop: Dropped | None = None,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        # Sixteen segments or more fill the bound, so dropping the oldest frees a part, not all.
        self.segment_bytes = segment_bytes or min(
            SEGMENT_BYTES, max(MIN_SEGMENT_BYTES, max_bytes // 16)
        )
        self.on_drop = on_drop or (lambda reason, points, message: None)
        self.unloaded = 0  # points on disk and not in memory
        self.bytes = 0  # size of the segments
        self.damage: list[tuple[str, str]] = []  # (reason, one line naming the file) at open
        self._segments: list[Segment] = []
        self._current: Segment | None = None
        self._next = 1
        self._lock_fd = -1
        self._failed = False

    # ---- start ---------------------------------------------------------------------------------

    def open(self) -> int:
        """Lock the directory, scan what earlier runs left; the points still to write.

        Raises SpoolError (one line naming the file) when the spool cannot be used.
        """
        where = self.directory
        try:
            where.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(where / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot use spool_dir {where}: {reason_of(exc)}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SpoolError(f"spool_dir {where} is in use by another exporter") from None
        try:
            try:
                names = os.listdir(where)
            except OSError as exc:
                raise SpoolError(f"cannot list spool_dir {where}: {reason_of(exc)}") from None
            segments = sorted(n for n in names if SEGMENT_NAME.fullmatch(n))
            if segments:
                self._next = int(segments[-1][:-3]) + 1
            for name in segments:
                self._scan(where / name)
            try:
                self._rotate()  # now, so that an unwritable directory is found at start
            except OSError as exc:
                raise SpoolError(
                    f"cannot create a segment in spool_dir {where}: {reason_of(exc)}"
                ) from None
        except SpoolError:
            self.close()
            raise
        return self.unloaded

    def _scan(self, path: Path) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise SpoolError(f"cannot read spool segment {path}: {reason_of(exc)}") from None
        if stat.S_ISDIR(st.st_mode):
            raise SpoolError(f"{path} is a directory, not a spool segment; move it away")
        if not stat.S_ISREG(st.st_mode):
            raise SpoolError(f"{path} is not a regular file, not a spool segment; move it away")
        acked = _read_ack(path.with_suffix(".ack"))
        try:
            with path.open("rb") as f:
                points, end, acked = self._count(f, path, acked, st.st_size)
        except OSError as exc:
            raise SpoolError(f"cannot read spool segment {path}: {reason_of(exc)}") from None
        if end < st.st_size:
            self.damage.append(
                ("torn_line", f"{path}: skipped a torn last line of {st.st_size - end} bytes")
            )
        try:
            segment = Segment(path, acked, end)
        except OSError as exc:
            raise SpoolError(f"cannot open {path.with_suffix('.ack')}: {reason_of(exc)}") from None
        if not points:
            segment.remove()
            return
        segment.unloaded = points
        self.unloaded += points
        self.bytes += end
        self._segments.append(segment)

    def _count(self, f: BinaryIO, path: Path, acked: int | None, size: int) -> tuple[int, int, int]:
        """(complete lines after the ack, offset after the last one, the ack to use)."""
        bad = None
        if acked is None:
            bad = "is not a byte offset"
        elif acked > size:
            bad = f"is past the end of the segment ({acked} > {size} bytes)"
        elif acked > 0:
            f.seek(acked - 1)
            if f.read(1) != b"\n":
                bad = f"({acked}) is not at the end of a line"
        if bad is not None:
            self.damage.append(("ack_invalid", f"{path.with_suffix('.ack')} {bad}: replaying all"))
            acked = 0
        assert acked is not None
        f.seek(acked)
        points = 0
        end = offset = acked
        while block := f.read(READ_BLOCK):
            count = block.count(b"\n")
            if count:
                points += count
                end = offset + block.rfind(b"\n") + 1
            offset += len(block)
        return points, end, acked

    # ---- queueing ------------------------------------------------------------------------------

    def append(self, data: bytes, points: int, cache: bool) -> Chunk | None:
        """Queue `data` on disk.

        The chunk to keep in memory (and hand to `consumed()` once done with) when `cache` and
        nothing older waits on disk; None when it waits on disk only, or was dropped (counted
        through on_drop). A chunk without a segment when the spool could not take it: the
        writer holds it in memory.
        """
        try:
            if not self._make_room(len(data)):
                self.on_drop(
                    "spool_full", points, f"spool_dir {self.directory} holds spool_max_bytes"
                )
                return None
            if self._current is None or self._current.size >= self.segment_bytes:
                self._rotate()
            assert self._current is not None
            end = self._current.append(data)
        except OSError as exc:
            self._warn(f"cannot write to {self.directory}: {reason_of(exc)}")
            return Chunk(data, points)
        if self._failed:
            log.info("InfluxDB spool: %s can be written again", self.directory)
            self._failed = False
        segment = self._current
        self.bytes += len(data)
        if cache and not self.unloaded:
            chunk = Chunk(data, points, segment, end)
            segment.pending.append(chunk)
            segment.loaded = end
            return chunk
        segment.unloaded += points
        self.unloaded += points
        return None

    def load(self, max_points: int) -> list[Chunk]:
        """Chunks of at most about `max_points` points read back from disk, oldest first."""
        chunks: list[Chunk] = []
        wanted = max_points
        for segment in list(self._segments):
            if wanted <= 0:
                break
            if not segment.unloaded:
                continue
            try:
                got = self._load(segment, wanted)
            except OSError as exc:
                message = f"cannot read {segment.path}: {reason_of(exc)}"
                self._warn(message)
                self.on_drop("spool_unreadable", segment.unloaded, message)
                self.unloaded -= segment.unloaded
                self.bytes -= segment.size - segment.loaded
                segment.unloaded = 0
                segment.size = segment.loaded
                if not segment.pending and segment is not self._current:
                    self._remove(segment)
                continue
            chunks.extend(got)
            wanted -= sum(c.points for c in got)
        return chunks

    def _load(self, segment: Segment, wanted: int) -> list[Chunk]:
        chunks: list[Chunk] = []
        while segment.unloaded and wanted > 0:
            left = segment.size - segment.loaded
            block = os.pread(segment.fd, min(READ_BLOCK, left), segment.loaded)
            if b"\n" not in block:  # a line longer than a block
                block = os.pread(segment.fd, left, segment.loaded)
            block = block[: block.rfind(b"\n") + 1]
            if not block:
                raise OSError(0, f"ends before its {segment.unloaded} points")
            lines = block.splitlines(keepends=True)[:wanted]
            offset = segment.loaded
            for i in range(0, len(lines), LOAD_CHUNK_POINTS):
                part = lines[i : i + LOAD_CHUNK_POINTS]
                body = b"".join(part)
                offset += len(body)
                chunk = Chunk(body, len(part), segment, offset)
                segment.pending.append(chunk)
                chunks.append(chunk)
            segment.loaded = offset
            segment.unloaded -= len(lines)
            self.unloaded -= len(lines)
            wanted -= len(lines)
        return chunks

    def unload(self, chunk: Chunk) -> bool:
        """Forget the newest chunk loaded, which stays on disk, to free memory; False if not it."""
        segment = chunk.segment
        if segment is None or chunk.done or not segment.pending or segment.pending[-1] is not chunk:
            return False
        segment.pending.pop()
        segment.loaded = chunk.end - len(chunk.data)
        segment.unloaded += chunk.points
        self.unloaded += chunk.points
        return True

    def _make_room(self, size: int) -> bool:
        """Delete the oldest segments no point of which is in memory until `size` more fit."""
        for segment in list(self._segments):
            if self.bytes + size <= self.max_bytes:
                return True
            if segment is self._current or segment.pending or not segment.unloaded:
                continue
            message = f"spool_dir {self.directory} holds spool_max_bytes ({self.max_bytes} bytes)"
            self.on_drop("spool_full", segment.unloaded, message)
            self.unloaded -= segment.unloaded
            self._remove(segment)
        return self.bytes + size <= self.max_bytes

    def _rotate(self) -> None:
        number = self._next
        self._next += 1  # also on failure: a name taken by something else is not tried again
        new = Segment(self.directory / f"{number:012d}.lp", writable=True)
        old = self._current
        self._current = new
        self._segments.append(new)
        if old is not None:
            with contextlib.suppress(OSError):
                old.sync()
            old.writable = False
            if not (old.pending or old.unloaded):
                self._remove(old)

    def _remove(self, segment: Segment) -> None:
        self.bytes -= segment.size
        self._segments.remove(segment)
        if segment is self._current:
            self._current = None
        segment.remove()

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
                if not segment.pending and not segment.unloaded:
                    if segment in self._segments:
                        self._remove(segment)  # the next append starts a fresh segment
                elif end is not None:
                    segment.ack(end)
            except OSError as exc:
                self._warn(f"cannot update {segment.ack_path}: {reason_of(exc)}")

    def sync(self) -> None:
        if self._current is not None:
            try:
                self._current.sync()
            except OSError as exc:
                self._warn(f"cannot fsync {self._current.path}: {reason_of(exc)}")

    def _warn(self, message: str) -> None:
        """One line when the spool starts failing, not one a point."""
        if not self._failed:
            log.error(
                "InfluxDB spool: %s; points are held in memory (up to buffer_points) until it "
                "can be written, and counted when dropped",
                message,
            )
        self._failed = True

    def close(self) -> None:
        self.sync()
        current = self._current
        if current is not None and not current.size and not current.pending:
            with contextlib.suppress(OSError):
                self._remove(current)
        for segment in self._segments:
            segment.close()
        self._segments.clear()
        self._current = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def writable_problem(directory: Path) -> str | None:
    """Why the spool could not be used at `directory`, without creating anything; or None."""
    path = directory
    while not path.exists():
        if path.parent == path:
            break
        path = path.parent
    if not path.is_dir():
        return f"{path} is not a directory"
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return None
