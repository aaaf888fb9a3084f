"""Line protocol to a file or stdout: for Telegraf (`inputs.tail`, `inputs.execd`) and debugging.

Each reading is one write of whole lines, so a reader never sees half a point. A file is opened
for appending and reopened when it was rotated away (logrotate `create`, or deleted); `path: "-"`
writes to stdout, where the exporter's logs never go (they go to stderr). A path that cannot be
opened stops the start (StartupError, one line); failures later are logged once and counted by
nobody else: Telegraf reading the file sees the gap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO

from exporter.config.schema import LineProtocolConfig
from exporter.errors import StartupError
from exporter.outputs.influx.lines import Serializer
from exporter.reading import Reading

log = logging.getLogger("lektrico.lineproto")
REOPEN_CHECK = 1.0  # seconds between checks that the file is still the one at `path`


class LineProtocolFile:
    def __init__(
        self,
        config: LineProtocolConfig,
        prefix: str = "lektrico",
        stdout: BinaryIO | None = None,
    ) -> None:
        self.path = config.path
        self.serializer = Serializer(config.precision, prefix)
        self._stdout = stdout
        self._fd = -1
        self._checked = 0.0
        self._broken: str | None = None
        if self.path != "-":
            # At construction, before anything runs: a path that cannot be written stops the
            # start with one line instead of a traceback out of a half-started exporter.
            try:
                self._open()
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise StartupError(
                    f"line_protocol.path: cannot open {self.path}: {reason}"
                ) from None

    async def start(self) -> None:
        if self.path != "-" and self._fd < 0:
            self._open()

    def remove(self, device: str) -> None:
        """Nothing to forget: the file keeps what was written of a removed device."""

    async def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        elif self.path == "-":
            self._flush_stdout()

    def publish(self, reading: Reading) -> None:
        data = self.serializer.encode(reading)
        if not data:
            return
        try:
            if self.path == "-":
                out = self._stdout or sys.stdout.buffer
                out.write(data)
                out.flush()
            else:
                self._reopen_if_rotated()
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._failed(exc)
            return
        if self._broken is not None:
            log.info("line protocol output to %s works again", self.path)
            self._broken = None

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._checked = time.monotonic()

    def _reopen_if_rotated(self) -> None:
        now = time.monotonic()
        if self._fd >= 0 and now - self._checked < REOPEN_CHECK:
            return
        self._checked = now
        if self._fd >= 0:
            try:
                same = os.path.samestat(os.stat(self.path), os.fstat(self._fd))
            except FileNotFoundError:
                same = False
            if same:
                return
            os.close(self._fd)
            self._fd = -1
        self._open()

    def _flush_stdout(self) -> None:
        with contextlib.suppress(OSError):
            (self._stdout or sys.stdout.buffer).flush()

    def _failed(self, exc: OSError) -> None:
        kind = type(exc).__name__
        if self._broken != kind:
            log.error("line protocol output to %s failed, points dropped: %s", self.path, exc)
        self._broken = kind


def writable_problem(path: str) -> str | None:
    """Why `path` could not be appended to, without creating it; or None."""
    if path == "-":
        return None
    target = Path(path)
    if target.is_dir():
        return f"{path} is a directory"
    if target.exists():
        return None if os.access(target, os.W_OK) else f"{path} is not writable"
    parent = target.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable, so {target.name} cannot be created"
    return None
