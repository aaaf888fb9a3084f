"""Child processes, free loopback ports and readiness waits, for tests and benchmarks.

Every child leads its own process group, so that stopping it also stops the workers it forked
(the simulator's), and `kill_all` ends every child still running, also when a test fails or a
benchmark is interrupted. Each child's stdout and stderr go to `<name>.out` and `<name>.err` in
the working directory given to `Processes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_fd_limit() -> int:
    """Raise this process's open-files limit to the hard limit (children inherit it); the
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


class Processes:
    """Children started here, each leading its own process group; `kill_all` ends every one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: dict[int, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(
        self, args: Sequence[str], name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = (self.workdir / f"{name}.out").open("ab")
        err = (self.workdir / f"{name}.err").open("ab")
        self._logs += [out, err]
        proc = subprocess.Popen(
            list(args),
            cwd=ROOT,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.running[proc.pid] = proc
        return proc

    def output(self, name: str) -> bytes:
        """What the child started as `name` has written to stdout so far."""
        return (self.workdir / f"{name}.out").read_bytes()

    async def wait_output(
        self, proc: subprocess.Popen[bytes], name: str, marker: bytes, seconds: float
    ) -> bool:
        """Until `marker` is in the child's stdout (True), it exits or `seconds` pass (False)."""
        deadline = time.monotonic() + seconds
        while proc.poll() is None and time.monotonic() < deadline:
            if marker in self.output(name):
                return True
            await asyncio.sleep(0.1)
        return marker in self.output(name)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the process group at once, as a crash or the OOM killer would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self.running.pop(proc.pid, None)

    async def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `grace` seconds; the exit code."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, grace)
        code = proc.poll()
        self.kill(proc)  # also reaps workers left in the group
        return code if code is not None else -9

    async def stop_all(self, grace: float = 5.0) -> None:
        """`stop` every child still running, one after the other."""
        for proc in list(self.running.values()):
            await self.stop(proc, grace)

    def kill_all(self) -> None:
        for proc in list(self.running.values()):
            self.kill(proc)
        for log in self._logs:
            log.close()
        self._logs.clear()


async def start_exporter(
    procs: Processes, config: Path, port: int, name: str, seconds: float = 30.0
) -> subprocess.Popen[bytes]:
    """`python -m exporter --config CONFIG` as a child named `name`, once it answers
    /-/ready on 127.0.0.1:`port` (at most `seconds`)."""
    proc = procs.start([PY, "-m", "exporter", "--config", str(config)], name)
    await wait_http(f"http://127.0.0.1:{port}/-/ready", seconds, proc)
    return proc


async def wait_http(url: str, seconds: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until `url` answers 200, at most `seconds`; fails early if `proc` exits."""
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready within {seconds:g}s")
            await asyncio.sleep(0.1)
