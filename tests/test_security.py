"""Security: secrets stay secret, devices cannot send the exporter elsewhere, and the HTTP port
keeps serving through slow, half-open and oversized requests.

`/probe` refusing targets outside the allow-list and the device page escaping device strings
are proven in tests/test_web.py; broken configs in tests/test_cli.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter
from exporter.config.schema import parse_config
from exporter.simulator.server import DeviceSpec
from harness.processes import PY, Processes, free_port, wait_http
from harness.procfs import fd_count, rss_bytes
from harness.servers import require_binary

from .conftest import ExporterFactory, FleetFactory, fetch, fleet_config, override_replies

# ---- secrets never leave --------------------------------------------------------------------


@dataclass
class Secrets:
    """Fresh secrets for one run, each recognisable wherever it would turn up."""

    influx_token: str = field(default_factory=lambda: "influxtok-" + secrets.token_hex(12))
    device_env: str = field(default_factory=lambda: "devenvpw-" + secrets.token_hex(12))
    device_file: str = field(default_factory=lambda: "devfilepw-" + secrets.token_hex(12))
    web_password: str = field(default_factory=lambda: "webpw-" + secrets.token_hex(12))
    web_hash: str = ""

    def __post_init__(self) -> None:
        self.web_hash = bcrypt.hashpw(self.web_password.encode(), bcrypt.gensalt(4)).decode()

    def forms(self) -> dict[str, str]:
        """Every spelling of a secret that must never appear: plain, and as sent on the wire."""
        out = {
            "influx token": self.influx_token,
            "device password (env)": self.device_env,
            "device password (file)": self.device_file,
            "web password": self.web_password,
            "web password hash": self.web_hash,
        }
        for name, user, password in (
            ("device basic auth (env)", "admin", self.device_env),
            ("device basic auth (file)", "admin", self.device_file),
            ("web basic auth", "prom", self.web_password),
        ):
            out[name] = base64.b64encode(f"{user}:{password}".encode()).decode()
        # Fragments too: a message cut at 80 or 120 characters may keep only the start.
        for name, value in list(out.items()):
            out[f"{name} (tail)"] = value[-16:]
        return out


GOOD = """\
listen: 127.0.0.1:{port}
devices:
  - {{name: c1, host: "{c1}", username: admin, password: "${{LEKTRICO_SEC_DEVICE_PASSWORD}}"}}
  - {{name: c2, host: "{c2}", username: admin, password: !file device-password}}
  - {{name: m1, host: "{m1}"}}
  - {{name: gone, host: "127.0.0.1:{closed}", username: admin,
      password: "${{LEKTRICO_SEC_DEVICE_PASSWORD}}"}}
poll: {{interval: 1s, timeout: 500ms}}
probe: {{allow: [127.0.0.0/8]}}
influxdb:
  url: http://127.0.0.1:{closed}
  token: ${{LEKTRICO_SEC_INFLUX_TOKEN}}
  org: lab
  bucket: lektrico
  flush_interval: 1s
  max_retry_delay: 2s
web: {{config_file: web.yml}}
log: {{level: debug}}
"""


def bad_configs(good: str, sec: Secrets, c1: str) -> dict[str, str]:
    """Broken configs a user could reload by mistake, each with a secret close to the error."""
    token_ref, password_ref = "${LEKTRICO_SEC_INFLUX_TOKEN}", "${LEKTRICO_SEC_DEVICE_PASSWORD}"
    edits = {
        "password of the wrong type": (
            f'password: "{password_ref}"}}',
            f'password: ["{password_ref}"]}}',
        ),
        "password as a mapping": (
            "password: !file device-password}",
            f'password: {{pw: "{password_ref}"}}}}',
        ),
        "credentials in the InfluxDB URL": ("url: http://", f"url: http://u:{token_ref}@"),
        "credentials in a device URL": (
            f'host: "{c1}"',
            f'host: "http://admin:{password_ref}@{c1}"',
        ),
        "misspelt key holding the token": ("  org: lab", f"  tokn: {token_ref}\n  org: lab"),
        "token and token_file": ("  org: lab", "  token_file: device-password\n  org: lab"),
        "token in a list": ("  org: lab", f'  org: ["{token_ref}"]'),
        "unclosed quote on the token's line": (
            f"token: {token_ref}",
            f'token: "{sec.influx_token}',
        ),
        "token given twice": (
            f"token: {token_ref}",
            f"token: {sec.influx_token}\n  token: {sec.influx_token}",
        ),
        "password file missing": ("!file device-password", "!file no-such-file"),
    }
    out = {}
    for name, (old, new) in edits.items():
        assert old in good, name
        out[name] = good.replace(old, new, 1)
    return out


@dataclass
class Transcript:
    """Everything a run showed the outside world, by where it was seen."""

    parts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, text: str) -> None:
        self.parts.append((where, text))

    def leaks(self, forms: dict[str, str]) -> list[str]:
        return [
            f"{name} in {where}"
            for where, text in self.parts
            for name, value in forms.items()
            if value in text
        ]


async def record(
    transcript: Transcript,
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    auth: dict[str, str],
    **kwargs: Any,
) -> int:
    headers = {**auth, **kwargs.pop("headers", {})}
    async with session.request(
        method, url, headers=headers, auto_decompress=False, **kwargs
    ) as resp:
        raw = await resp.read()
        if resp.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        headers = "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
        transcript.add(f"{method} {url} ({resp.status})", headers + "\n" + raw.decode("latin-1"))
        return resp.status


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.kill_all()


@pytest.mark.timeout(120)
async def test_secrets_never_appear_in_logs_pages_metrics_or_errors(
    tmp_path: Path, make_fleet: FleetFactory, procs: Processes
) -> None:
    sec = Secrets()
    fleet = await make_fleet(
        [DeviceSpec("c1", "1p7k", seed=1), DeviceSpec("c2", "3p22k"), DeviceSpec("m1", "em")]
    )
    port, closed = free_port(), free_port()
    (tmp_path / "device-password").write_text(sec.device_file + "\n")
    (tmp_path / "web.yml").write_text(yaml.safe_dump({"basic_auth_users": {"prom": sec.web_hash}}))
    hosts = {n: fleet.host(n) for n in fleet.names}
    good = GOOD.format(port=port, closed=closed, **hosts)
    bad = bad_configs(good, sec, hosts["c1"])
    config = tmp_path / "exporter.yml"
    config.write_text(good)
    env = {
        "LEKTRICO_SEC_INFLUX_TOKEN": sec.influx_token,
        "LEKTRICO_SEC_DEVICE_PASSWORD": sec.device_env,
    }
    seen = Transcript()
    base = f"http://127.0.0.1:{port}"
    auth = basic("prom", sec.web_password)

    exporter = procs.start(
        [PY, "-m", "exporter", "--config", str(config), "--web.enable-lifecycle"], "exporter", env
    )
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await wait_for_up(session, base, auth, ("c1", "c2", "m1"), exporter)
        fleet.set_fault("c1", "http500")  # a device failing while it has credentials
        await asyncio.sleep(1.5)
        fleet.set_fault("c1", "none")
        for path in (
            "/",
            "/metrics",
            "/probe?target=c1",
            f"/probe?target={hosts['c2']}",
            f"/probe?target=127.0.0.1:{closed}",
            "/probe?target=10.1.2.3",
            "/probe",
            "/sd",
            "/-/healthy",
            "/-/ready",
            "/nothing-here",
        ):
            await record(seen, session, "GET", base + path, auth)
        await record(seen, session, "GET", base + "/metrics", auth, headers=GZIP)
        for wrong in ({}, basic("prom", "nope"), basic("x", "y"), {"Authorization": "Basic !"}):
            assert await record(seen, session, "GET", base + "/metrics", wrong) == 401

        for name, broken in bad.items():
            config.write_text(broken)
            status = await record(seen, session, "POST", base + "/-/reload", auth)
            assert status == 400, name
        config.write_text(bad["token in a list"])
        os.kill(exporter.pid, signal.SIGHUP)  # the same, by signal: it goes to the log only
        await asyncio.sleep(0.5)
        config.write_text(good)
        assert await record(seen, session, "POST", base + "/-/reload", auth) == 200
        await record(seen, session, "GET", base + "/metrics", auth)

    for name, broken in bad.items():
        path = tmp_path / "broken.yml"
        path.write_text(broken)
        check = await asyncio.to_thread(
            subprocess.run,
            [PY, "-m", "exporter", "--config", str(path), "--check-config"],
            cwd=tmp_path,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 2, (name, check.stderr)
        seen.add(f"--check-config ({name}) stdout", check.stdout)
        seen.add(f"--check-config ({name}) stderr", check.stderr)

    assert await procs.stop(exporter) == 0
    log = (tmp_path / "exporter.err").read_text()
    seen.add("exporter stderr", log)
    seen.add("exporter stdout", (tmp_path / "exporter.out").read_text())

    # The run did what it meant to: devices polled with credentials, InfluxDB failing, every
    # bad reload refused with a reason, at debug level.
    assert "level=debug" in log
    assert "InfluxDB" in log and "reload rejected" in log and "device c1 is down" in log
    assert seen.leaks(sec.forms()) == []
    assert "Traceback" not in log


GZIP = {"Accept-Encoding": "gzip"}


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def wait_for_up(
    session: aiohttp.ClientSession,
    base: str,
    auth: dict[str, str],
    names: tuple[str, ...],
    proc: subprocess.Popen[bytes],
    seconds: float = 20.0,
) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, "the exporter exited"
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(base + "/metrics", headers=auth) as resp:
                text = await resp.text()
            if all(f'lektrico_up{{device="{n}"}} 1' in text for n in names):
                return
        assert time.monotonic() < deadline, "devices not up in time"
        await asyncio.sleep(0.2)


# ---- redirects are never followed ------------------------------------------------------------

REDIRECTS = (301, 302, 303, 307, 308)


@dataclass
class Redirector:
    """A device that answers every request with a redirect to another host (127.0.0.2)."""

    elsewhere_port: int = 0
    status: int = 302
    seen_auth: list[str] = field(default_factory=list)
    elsewhere_hits: list[str] = field(default_factory=list)

    async def device(self, request: web.Request) -> web.StreamResponse:
        self.seen_auth.append(request.headers.get("Authorization", ""))
        location = f"http://127.0.0.2:{self.elsewhere_port}{request.path_qs}"
        return web.Response(status=self.status, headers={"Location": location})

    async def elsewhere(self, request: web.Request) -> web.StreamResponse:
        self.elsewhere_hits.append(f"{request.path_qs} {request.headers.get('Authorization')}")
        return web.json_response({"charger_state": "A", "device_id": "1p7k_500001"})


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str) -> AsyncIterator[int]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("status", REDIRECTS)
async def test_device_redirect_to_another_host_is_never_followed(
    make_exporter: ExporterFactory, status: int
) -> None:
    redirector = Redirector(status=status)
    device_app, elsewhere_app = web.Application(), web.Application()
    device_app.router.add_route("*", "/{tail:.*}", redirector.device)
    elsewhere_app.router.add_route("*", "/{tail:.*}", redirector.elsewhere)
    async with (
        serving(elsewhere_app, "127.0.0.2") as elsewhere_port,
        serving(device_app, "127.0.0.1") as device_port,
    ):
        redirector.elsewhere_port = elsewhere_port
        config = parse_config(
            f"listen: '127.0.0.1:{free_port()}'\n"
            f"devices: [{{name: c1, host: '127.0.0.1:{device_port}', username: admin,"
            " password: s3cret}]\n"
            "poll: {interval: 1s, timeout: 500ms}\n"
            "probe: {allow: [127.0.0.0/8]}\n"
        )
        exp = await make_exporter(config)
        base = f"http://127.0.0.1:{exp.port}"
        await asyncio.sleep(1.5)  # a background poll or two
        probed = [
            await fetch(f"{base}/probe?target={target}")
            for target in ("c1", f"127.0.0.1:{device_port}")
        ]
        _, metrics = await fetch(f"{base}/metrics")

    assert redirector.seen_auth, "the device was never asked"
    assert all(a.startswith("Basic ") for a in redirector.seen_auth)
    assert redirector.elsewhere_hits == []
    for status_code, body in probed:
        assert status_code == 200 and 'lektrico_up{device="' in body and "} 0\n" in body
    http_errors = re.search(
        r'lektrico_poll_errors_total\{device="c1",reason="http"\} (\S+)', metrics
    )
    assert http_errors and float(http_errors.group(1)) >= 1, metrics
    assert str(status) in exp.poller.devices["c1"].reading.error  # type: ignore[union-attr]


# ---- slow, half-open and oversized clients ---------------------------------------------------


def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


@dataclass
class Hostile:
    """Connections that take a socket each and give nothing back, of four kinds."""

    port: int
    socks: dict[str, list[socket.socket]] = field(default_factory=dict)

    def open(self, half_open: int, slowloris: int, half_closed: int, slow_readers: int) -> None:
        self.socks["half-open"] = [connect(self.port) for _ in range(half_open)]
        self.socks["slowloris"] = []
        for _ in range(slowloris):
            sock = connect(self.port)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            self.socks["slowloris"].append(sock)
        self.socks["half-closed"] = []
        for _ in range(half_closed):
            sock = connect(self.port)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHo")
            sock.shutdown(socket.SHUT_WR)
            self.socks["half-closed"].append(sock)
        # A full request for the largest page, then never a byte read.
        self.socks["slow readers"] = []
        for _ in range(slow_readers):
            sock = connect(self.port, rcvbuf=4096)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            self.socks["slow readers"].append(sock)

    def drip(self) -> None:
        """One more header byte from every slowloris connection."""
        for sock in self.socks.get("slowloris", []):
            with contextlib.suppress(OSError):
                sock.send(b"a")

    def count(self) -> int:
        return sum(len(s) for s in self.socks.values())

    def close(self) -> None:
        for socks in self.socks.values():
            for sock in socks:
                sock.close()
        self.socks.clear()


OVERSIZED = {
    "request line of 100 KiB": b"GET /metrics?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header of 100 KiB": b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"a" * 100_000
    + b"\r\n\r\n",
    "500 headers": b"GET /metrics HTTP/1.1\r\n"
    + b"".join(b"X-H%d: y\r\n" % i for i in range(500))
    + b"\r\n",
    "probe target of 10 KiB": b"GET /probe?target=" + b"1" * 10_000 + b" HTTP/1.1\r\n\r\n",
    "reload body of 100 MB": b"POST /-/reload HTTP/1.1\r\nHost: x\r\n"
    + b"Content-Length: 100000000\r\n\r\n"
    + b"a" * 1_000_000,
    "chunked reload body": b"POST /-/reload HTTP/1.1\r\nHost: x\r\n"
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + b"10000\r\n"
    + b"a" * 0x10000
    + b"\r\n" * 20,
}


def oversized_status(port: int, request: bytes) -> int:
    """The status the server answers an oversized request with (0: it just closed)."""
    with connect(port) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(request)
        try:
            head = sock.recv(64)
        except OSError:
            return 0
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(match.group(1)) if match else 0


async def steady(pid: int, seconds: float = 1.0) -> tuple[int, int]:
    """Median fd count and RSS over a second (connections to devices come and go)."""
    fds, rss = [], []
    for _ in range(5):
        fds.append(fd_count(pid))
        rss.append(rss_bytes(pid))
        await asyncio.sleep(seconds / 5)
    return sorted(fds)[2], sorted(rss)[2]


@pytest.mark.timeout(120)
async def test_slow_half_open_and_oversized_clients_do_not_stop_the_server(
    tmp_path: Path, procs: Processes
) -> None:
    port = free_port()
    devices = 150  # /metrics of ~1 MB: what a slow reader would pin if it were copied
    exporter = procs.start(
        [PY, "-m", "exporter", "--demo", str(devices), "--listen", f"127.0.0.1:{port}"], "demo"
    )
    base = f"http://127.0.0.1:{port}"
    await wait_http(base + "/-/ready", 30, exporter)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        deadline = time.monotonic() + 30
        while (await (await session.get(base + "/metrics")).text()).count("lektrico_up{") < devices:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.5)
        body_size = len(await (await session.get(base + "/metrics")).read())
        fds0, rss0 = await steady(exporter.pid)

        hostile = Hostile(port)
        try:
            await asyncio.to_thread(hostile.open, 200, 100, 50, 100)
            latencies = []
            for _ in range(20):  # the well-behaved client is served all along
                hostile.drip()
                started = time.monotonic()
                async with session.get(base + "/metrics") as resp:
                    assert resp.status == 200
                    assert len(await resp.read()) > body_size // 2
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.1)
            for path in ("/", "/probe?target=demo-001", "/-/healthy"):
                async with session.get(base + path) as resp:
                    assert resp.status == 200, path
            fds1, rss1 = await steady(exporter.pid)
            statuses = {
                name: await asyncio.to_thread(oversized_status, port, request)
                for name, request in OVERSIZED.items()
            }
            async with session.get(base + "/metrics") as resp:
                assert resp.status == 200
        finally:
            held = hostile.count()
            hostile.close()

        deadline = time.monotonic() + 15
        while True:  # every hostile connection is let go once its client is gone
            fds2, rss2 = await steady(exporter.pid)
            if fds2 <= fds0 + 40 or time.monotonic() > deadline:
                break
        async with session.get(base + "/metrics") as resp:
            assert resp.status == 200

    print(
        f"body {body_size} B; fds {fds0} -> {fds1} with {held} hostile -> {fds2}; "
        f"RSS MiB {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} -> {rss2 / 2**20:.0f}; "
        f"latency max {max(latencies):.3f}s; oversized {statuses}"
    )
    assert max(latencies) < 2.0, latencies
    # One socket per hostile connection and nothing more; memory per connection well under one
    # copy of the body (100 slow readers would pin 100 copies of it otherwise).
    assert fds1 <= fds0 + held + 40, (fds0, fds1, held)
    assert rss1 - rss0 < 100 * body_size // 4, (rss0, rss1, body_size)
    assert all(status in (0, 400, 403, 413, 414, 431) for status in statuses.values()), statuses
    assert fds2 <= fds0 + 40, (fds0, fds2)
    assert rss2 - rss0 < 32 * 2**20, (rss0, rss2)
    assert exporter.poll() is None
    assert "Traceback" not in (tmp_path / "demo.err").read_text()


async def test_idle_and_half_open_connections_are_closed_by_the_server(
    make_fleet: FleetFactory,
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k")], frozen=True)
    exp = Exporter(fleet_config(fleet))
    exp.web.idle_timeout = 1.0  # IDLE_TIMEOUT in production; short so the test is
    await exp.start()
    try:
        hostile = Hostile(exp.port)
        await asyncio.to_thread(hostile.open, 10, 10, 10, 0)
        idle = connect(exp.port)  # one good request, then silence on a kept-alive connection
        idle.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        hostile.socks["idle keep-alive"] = [idle]
        started = time.monotonic()
        closed = await asyncio.to_thread(wait_all_closed, hostile, 5.0)
        hostile.close()
    finally:
        await exp.stop()

    assert closed == {"half-open": 10, "slowloris": 10, "half-closed": 10, "idle keep-alive": 1}
    assert time.monotonic() - started < 5.0


def wait_all_closed(hostile: Hostile, seconds: float) -> dict[str, int]:
    """How many connections of each kind the server closed (EOF or reset) within `seconds`."""
    deadline = time.monotonic() + seconds
    closed: dict[str, int] = {}
    for kind, socks in hostile.socks.items():
        if not socks:
            continue
        closed[kind] = 0
        for sock in socks:
            while True:
                if kind == "slowloris":
                    with contextlib.suppress(OSError):
                        sock.send(b"a")  # still dripping: the header never ends
                sock.settimeout(max(0.05, min(0.3, deadline - time.monotonic())))
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    if time.monotonic() > deadline:
                        break
                    continue
                except OSError:
                    closed[kind] += 1
                    break
                if not data:
                    closed[kind] += 1
                    break
    return closed


# ---- device strings: markup and exposition injection -----------------------------------------

INJECTED_SSID = 'Home"} 1\nlektrico_up{device="evil"} 1\n# <b>\\'
INJECTED_ALIAS = '<img src=x onerror=alert(1)>"\n'
INJECTED_ERROR = "<script>alert('error')</script>"


async def test_device_strings_cannot_inject_markup_or_series(
    make_fleet: FleetFactory, make_exporter: ExporterFactory
) -> None:
    # tests/test_web.py covers an alias on the device page; here the SSID (a label of
    # lektrico_wifi_info) tries to forge a series, and a device's own error message (shown as
    # "last error" on its device page) carries markup.
    promtool = require_binary("/usr/bin/promtool")
    fleet = await make_fleet(
        [DeviceSpec("c1", "1p7k", ssid=INJECTED_SSID, alias=INJECTED_ALIAS), DeviceSpec("c2")],
        frozen=True,
    )
    frame = {"id": 1, "src": "x", "error": {"code": -1, "message": INJECTED_ERROR}}
    override_replies(fleet, "c2", {"Charger_info.Get": frame})
    exp = await make_exporter(fleet_config(fleet))
    base = f"http://127.0.0.1:{exp.port}"
    deadline = time.monotonic() + 10
    while True:
        _, metrics = await fetch(base + "/metrics")
        if "lektrico_wifi_info{" in metrics and 'device="c2"' in metrics:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    page = (await fetch(base + "/device/c1"))[1] + (await fetch(base + "/device/c2"))[1]
    _, probe = await fetch(base + "/probe?target=c1")

    for body in (metrics, probe):
        check = await asyncio.to_thread(
            subprocess.run,
            [promtool, "check", "metrics"],
            input=body,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        ups = [line for line in body.splitlines() if line.startswith("lektrico_up{")]
        assert not any("evil" in line for line in ups), ups
    assert sum(1 for line in metrics.splitlines() if line.startswith("lektrico_up{")) == 2
    ssids = [
        s.labels["ssid"]
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "lektrico_wifi_info"
    ]
    assert ssids == [INJECTED_SSID.replace("\n", "")], ssids  # newlines cannot be labels
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;" in page and "&lt;img src=x" in page


async def test_influxdb_error_that_echoes_the_token_does_not_put_it_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from exporter.outputs.influx.writer import InfluxWriter
    from exporter.reading import Reading, Sample

    token = "influxtok-" + secrets.token_hex(12)

    async def echo(request: web.Request) -> web.Response:
        said = request.headers.get("Authorization")
        return web.json_response({"code": "unauthorized", "message": f"bad: {said}"}, status=401)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    async with serving(app, "127.0.0.1") as port:
        config = parse_config(
            f"influxdb: {{url: 'http://127.0.0.1:{port}', token: {token}, org: o, bucket: b,"
            " flush_interval: 1s}"
        )
        assert config.influxdb is not None
        writer = InfluxWriter(config.influxdb)
        with caplog.at_level(logging.DEBUG):
            await writer.start()
            writer.publish(
                Reading("d", (), 1.7e9, True, 0.1, "1p7k", (Sample("lektrico_up", (), 1),))
            )
            await asyncio.sleep(2.0)
            await writer.close()

    assert "401" in caplog.text  # the failure was logged
    assert token not in caplog.text
