"""Real time-series servers for tests and benchmarks: VictoriaMetrics, InfluxDB 1.x, Prometheus.

Each server runs as a subprocess on 127.0.0.1 on a free port, with its data in a directory the
test owns, and is ready when `start()` returns. `stop()` ends it gracefully, `kill()` with
SIGKILL, and `start()` again brings it back on the same port with the same data, which is how
the outage tests take a database away and return it.

A missing binary skips the test with the reason, except under CI (env `CI` set), where it fails:
CI installs the Debian packages (scripts/install-system-deps.sh), so a missing one is a bug.

    vm = VictoriaMetrics(tmp_path / "vm")
    await vm.start()
    ...  # write to vm.url + "/api/v2/write"
    series = await vm.export('{__name__=~"lektrico_.*"}')
    await vm.stop()
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import pytest

from harness.processes import free_port

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def unavailable(reason: str) -> NoReturn:
    """Something a test needs is not on this machine: skip it here, fail it under CI (env `CI`
    set), where .ci/run installs everything the suite needs and a missing piece is a bug."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def require_binary(path: str) -> str:
    """The binary's path; skip (fail under CI) the calling test when it is not installed."""
    found = shutil.which(path)
    if found:
        return found
    unavailable(f"{path} is not installed (Debian package; see scripts/install-system-deps.sh)")


class Server:
    """One server subprocess; subclasses give the command line and the readiness check."""

    name = "server"
    binary = ""
    ready_path = "/"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.path = require_binary(self.binary)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log_path = self.workdir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> Sequence[str]:
        raise NotImplementedError

    def spawn(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(self.command()),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def is_ready(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(self.url + self.ready_path) as resp:
                return resp.status < 300
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        self.spawn()
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
            while time.monotonic() < deadline:
                if not self.running:
                    raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
                if await self.is_ready(session):
                    return
                await asyncio.sleep(0.05)
        await self.kill()
        raise RuntimeError(f"{self.name} not ready within {timeout:g}s:\n{self.log_tail()}")

    async def _wait_exit(self, timeout: float) -> bool:
        assert self.process is not None
        try:
            await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    async def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after STOP_TIMEOUT)."""
        if self.process is None:
            return
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            if not await self._wait_exit(STOP_TIMEOUT):
                self.process.kill()
        self.process.wait()
        self.process = None

    async def kill(self) -> None:
        if self.process is None:
            return
        if self.running:
            self.process.kill()
        self.process.wait()
        self.process = None

    async def get_json(self, path: str, **params: str) -> Any:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(self.url + path, params=params) as resp,
        ):
            text = await resp.text()
            if resp.status >= 300:
                raise RuntimeError(f"{self.name} GET {path}: {resp.status} {text}")
            return json.loads(text)


class VictoriaMetrics(Server):
    """Single-node VictoriaMetrics; accepts InfluxDB line protocol on /write and /api/v2/write.

    It maps measurement `m` and field `f` to the metric `m_f`, tags to labels, booleans to 0/1,
    and ignores string fields. Its samples have millisecond timestamps.
    """

    name = "victoria-metrics"
    binary = "/usr/bin/victoria-metrics"
    ready_path = "/health"

    def __init__(self, workdir: Path, port: int | None = None, *extra: str) -> None:
        super().__init__(workdir, port)
        self.extra = extra

    def command(self) -> Sequence[str]:
        return (
            self.path,
            f"-storageDataPath={self.workdir / 'data'}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-loggerLevel=WARN",
            *self.extra,
        )

    async def flush(self) -> None:
        """Make every accepted sample searchable now (VictoriaMetrics buffers for ~1 s)."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(self.url + "/internal/force_flush") as resp,
        ):
            resp.raise_for_status()

    async def export(self, match: str = '{__name__!=""}') -> list[dict[str, Any]]:
        """Raw samples: one {"metric": labels, "values": [...], "timestamps": [ms...]} a series."""
        await self.flush()
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.get(
                self.url + "/api/v1/export",
                params={"match[]": match, "start": "0", "reduce_mem_usage": "1"},
            ) as resp,
        ):
            text = await resp.text()
            if resp.status >= 300:
                raise RuntimeError(f"export {match}: {resp.status} {text}")
        return [json.loads(line) for line in text.splitlines() if line.strip()]


class InfluxDB1(Server):
    """InfluxDB 1.x (Debian `influxdb`): line protocol on /write, InfluxQL on /query."""

    name = "influxdb"
    binary = "/usr/bin/influxd"
    ready_path = "/ping"

    def __init__(self, workdir: Path, port: int | None = None, auth: bool = False) -> None:
        super().__init__(workdir, port)
        self.rpc_port = free_port()
        self.auth = auth
        self.config_path = self.workdir / "influxdb.conf"

    def command(self) -> Sequence[str]:
        w = self.workdir
        self.config_path.write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{w / "meta"}"
  logging-enabled = false
[data]
  dir = "{w / "data"}"
  wal-dir = "{w / "wal"}"
  query-log-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = {"true" if self.auth else "false"}
  log-enabled = false
  pprof-enabled = false
[logging]
  level = "warn"
  suppress-logo = true
"""
        )
        return (self.path, "-config", str(self.config_path))

    async def is_ready(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(self.url + "/ping") as resp:
                return resp.status == 204
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def query(
        self, q: str, db: str | None = None, auth: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """Run InfluxQL (POST /query, epoch=ms); the parsed JSON reply, errors raised."""
        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = db
        credentials = {"u": auth[0], "p": auth[1]} if auth else {}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(self.url + "/query", params=credentials, data=params) as resp,
        ):
            body: dict[str, Any] = await resp.json(content_type=None)
        errors = [r["error"] for r in body.get("results", []) if "error" in r]
        if "error" in body or errors:
            raise RuntimeError(f"InfluxQL {q!r}: {body.get('error') or errors}")
        return body

    async def rows(
        self, q: str, db: str, auth: tuple[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The rows of an InfluxQL SELECT as dicts: column → value, the series' tags, and
        "_series", the series' name (the measurement)."""
        out: list[dict[str, Any]] = []
        for result in (await self.query(q, db, auth))["results"]:
            for series in result.get("series", []):
                tags = {"_series": series.get("name"), **series.get("tags", {})}
                for values in series["values"]:
                    out.append({**tags, **dict(zip(series["columns"], values, strict=True))})
        return out

    async def write(
        self, db: str, body: bytes, precision: str = "s", auth: tuple[str, str] | None = None
    ) -> tuple[int, str]:
        """POST /write; (status, body)."""
        params = {"db": db, "precision": precision}
        if auth:
            params.update(u=auth[0], p=auth[1])
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(self.url + "/write", params=params, data=body) as resp,
        ):
            return resp.status, await resp.text()


class Prometheus(Server):
    """Prometheus with a given configuration file text; query with `query()`."""

    name = "prometheus"
    binary = "/usr/bin/prometheus"
    ready_path = "/-/ready"

    def __init__(self, workdir: Path, config: str, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(config)

    def command(self) -> Sequence[str]:
        return (
            self.path,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        )

    async def query(self, promql: str) -> list[dict[str, Any]]:
        body = await self.get_json("/api/v1/query", query=promql)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result
