"""The exporter's HTTP endpoints: /metrics, /probe, the landing page and health checks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import payload, web
from aiohttp.abc import AbstractStreamWriter

from . import landing
from .addresses import (
    Endpoint,
    Network,
    ProbeTarget,
    TargetError,
    allowed,
    parse_target,
    resolve_host,
)
from .poller import DeviceState, Poller, new_session
from .prometheus import CONTENT_TYPE, Exposition, render_probe
from .reading import Reading
from .selfmetrics import SelfMetrics

log = logging.getLogger("lektrico.web")
PROBE_MARGIN = 0.5  # seconds kept from Prometheus's scrape timeout for the answer itself
MAX_TARGET = 255
# A connection that sends no complete request for this long is closed (aiohttp's own default is
# an hour), so half-open and slowloris clients cannot pile up connections.
IDLE_TIMEOUT = 75.0
# A configured device's background reading is served by /probe while younger than the poll
# interval plus this: the scheduler starts a poll up to a tick or so late, and a probe in that
# gap would otherwise poll the device itself just before the background poll does.
PROBE_GRACE = 0.25
BACKLOG = 128  # connections accepted per loop turn, before the cap sees them
PAGE_TTL = 1.0  # the landing page is made at most once a second, off the event loop
LIFECYCLE_OFF = (
    "Lifecycle API is not enabled: start with --web.enable-lifecycle (or set"
    " web.enable_lifecycle: true) to reload over HTTP; SIGHUP always reloads\n"
)
VARY = {"Vary": "Accept-Encoding"}


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding header (RFC 9110 12.5.3) accepts gzip: codings compared
    case-insensitively, `q=0` refuses, `*` covers gzip unless gzip is listed itself."""
    if not header:
        return False
    gzip_q: float | None = None
    star_q: float | None = None
    for item in header.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        coding = coding.lower()
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0  # not a weight: not an acceptance either
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        if coding in ("gzip", "x-gzip"):
            gzip_q = q if gzip_q is None else max(gzip_q, q)
        elif coding == "*":
            star_q = q
    if gzip_q is not None:
        return gzip_q > 0
    return star_q is not None and star_q > 0


@dataclass(frozen=True)
class ProbePolicy:
    """Which unconfigured targets /probe may reach: addresses inside `allow` only."""

    allow: Sequence[Network] = ()
    default_port: int = 80
    resolve_timeout: float = 2.0

    async def url_for(self, target: ProbeTarget) -> str:
        """The device URL for an unconfigured target, built from its checked address only;
        TargetError (403) when any address it would reach is outside `allow`."""
        if not self.allow:
            raise TargetError("target is not a configured device", status=403)
        if target.ip is not None:
            ips = [target.ip]
        else:
            # Resolved once here and connected to by address, so a second lookup cannot
            # answer differently (DNS rebinding) between the check and the connection.
            ips = await resolve_host(target.host, target.port, self.resolve_timeout)
        if not all(allowed(ip, self.allow) for ip in ips):
            raise TargetError("target is not in probe.allow", status=403)
        return Endpoint("http", str(ips[0]), target.port).base_url


class Web:
    def __init__(
        self,
        poller: Poller,
        exposition: Exposition,
        metrics: SelfMetrics,
        policy: ProbePolicy,
        probe_timeout: float,
        reload: Callable[[], Awaitable[str | None]] | None = None,
        probe_concurrency: int = 20,
        lifecycle: bool = False,
    ) -> None:
        self.poller = poller
        self.exposition = exposition
        self.metrics = metrics
        self.policy = policy
        self.probe_timeout = probe_timeout
        self.ready = False
        self.idle_timeout = IDLE_TIMEOUT
        self.lifecycle = lifecycle
        self._reload = reload
        # Probes of unconfigured targets: at most this many in flight, on their own pool.
        self.probe_concurrency = probe_concurrency
        self._probing = 0
        self._probe_session: aiohttp.ClientSession | None = None
        self._page: tuple[float, bytes] | None = None
        self._page_task: asyncio.Task[bytes] | None = None

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=64 * 1024, handler_args={"keepalive_timeout": self.idle_timeout}
        )
        app.router.add_get("/", self.index)
        app.router.add_get("/metrics", self.metrics_handler)
        app.router.add_get("/probe", self.probe)
        app.router.add_get("/-/healthy", self.healthy)
        app.router.add_get("/-/ready", self.readiness)
        app.router.add_post("/-/reload", self.reload)
        app.router.add_put("/-/reload", self.reload)
        app.router.add_get("/sd", self.service_discovery)
        return app

    @property
    def probe_session(self) -> aiohttp.ClientSession:
        if self._probe_session is None:
            size = self.probe_concurrency
            self._probe_session = new_session(size, limit=size)
        return self._probe_session

    async def close(self) -> None:
        if self._page_task is not None:
            self._page_task.cancel()
        if self._probe_session is not None:
            await self._probe_session.close()
            self._probe_session = None

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(
            body=Parts(await self._landing(), content_type="text/html; charset=utf-8")
        )

    async def _landing(self) -> bytes:
        """The landing page, made at most once a PAGE_TTL in a worker thread and shared: at
        10,000 devices it is 1.5 MB and ~70 ms of work, which on the event loop would hold up
        every scrape for as long, once per request."""
        page = self._page
        if page is not None and time.monotonic() - page[0] < PAGE_TTL:
            return page[1]
        if self._page_task is None:
            devices = list(self.poller.devices.values())  # a snapshot: reloads change the dict
            self._page_task = asyncio.ensure_future(asyncio.to_thread(self._make_page, devices))
            self._page_task.add_done_callback(self._page_made)
        if page is not None:
            return page[1]  # a page at most a render old, rather than waiting for the next
        return await asyncio.shield(self._page_task)

    @staticmethod
    def _make_page(devices: list[DeviceState]) -> bytes:
        return landing.render(devices).encode()

    def _page_made(self, task: asyncio.Task[bytes]) -> None:
        self._page_task = None
        if not task.cancelled() and task.exception() is None:
            self._page = (time.monotonic(), task.result())

    async def healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="Healthy\n")

    async def readiness(self, request: web.Request) -> web.Response:
        if not self.ready:
            return web.Response(status=503, text="Not ready\n")
        return web.Response(text="Ready\n")

    async def reload(self, request: web.Request) -> web.Response:
        if not self.lifecycle:
            return web.Response(status=403, text=LIFECYCLE_OFF)
        if self._reload is None:
            return web.Response(status=503, text="reload is not available\n")
        problem = await self._reload()
        if problem is not None:
            return web.Response(status=400, text=f"reload rejected: {problem}\n")
        return web.Response(text="reloaded\n")

    async def service_discovery(self, request: web.Request) -> web.Response:
        """Prometheus http_sd_configs: one group per device, scraped through /probe."""
        groups = [
            {
                "targets": [request.host],
                "labels": {
                    "__metrics_path__": "/probe",
                    "__param_target": st.name,
                    "device": st.name,
                    **dict(st.target.labels),
                },
            }
            for st in self.poller.devices.values()
        ]
        return web.json_response(groups)

    async def metrics_handler(self, request: web.Request) -> web.Response:
        own = self.metrics.render()
        if accepts_gzip(request.headers.get("Accept-Encoding")):
            zipped = await self.exposition.render_gzip_async(own)
            body = Parts(zipped, content_type=CONTENT_TYPE)
            return web.Response(body=body, headers={"Content-Encoding": "gzip", **VARY})
        body = Parts(self.exposition.render(), own, content_type=CONTENT_TYPE)
        return web.Response(body=body, headers=VARY)

    def _budget(self, request: web.Request) -> float:
        header = request.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
        budget = self.probe_timeout
        if header:
            with contextlib.suppress(ValueError):
                budget = min(budget, float(header) - PROBE_MARGIN)
        return max(budget, 0.1)

    async def probe(self, request: web.Request) -> web.Response:
        target = request.query.get("target", "")
        if not target or len(target) > MAX_TARGET:
            return web.Response(status=400, text="probe needs ?target=HOST[:PORT]\n")
        st = self.poller.find(target)
        if st is None:
            try:
                parsed = parse_target(target, self.policy.default_port)
            except TargetError as exc:
                return self._refused(target, exc)
            st = self.poller.find(parsed.address)
        if st is not None:
            reading = await self._configured(st, request)
        else:
            if self._probing >= self.probe_concurrency:
                busy = f"too many probes in flight (probe.concurrency {self.probe_concurrency})"
                headers = {"Retry-After": "1", **VARY}
                return web.Response(status=503, text=busy + "\n", headers=headers)
            self._probing += 1
            try:
                url = await self.policy.url_for(parsed)
                st = self.poller.adhoc(target, url, self.probe_session)
                reading = await self.poller.poll(st, timeout=self._budget(request))
            except TargetError as exc:
                return self._refused(target, exc)
            finally:
                self._probing -= 1
        return web.Response(
            body=render_probe(reading), headers={"Content-Type": CONTENT_TYPE, **VARY}
        )

    def _refused(self, target: str, exc: TargetError) -> web.Response:
        log.info("probe refused for %r: %s", target[:64], exc)
        return web.Response(status=exc.status, text=f"probe refused: {exc}\n")

    async def _configured(self, st: DeviceState, request: web.Request) -> Reading:
        """A configured device: its background reading while younger than the poll interval,
        else a poll now (or the one in flight), published as a background poll would be."""
        reading = st.reading
        fresh_for = self.poller.settings.interval + PROBE_GRACE
        if reading is not None and time.time() - reading.time < fresh_for:
            return reading
        reading = await self.poller.poll(st, timeout=self._budget(request))
        if self.poller.devices.get(st.name) is st:
            self.poller.publish(reading)
        return reading


class ListenError(Exception):
    """The listen address cannot be used: one line, naming it."""


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.abort()  # a reset frees the descriptor now; a polite close waits for the peer


class ConnectionCap:
    """A protocol factory for the HTTP server that closes connections past `limit` at once.

    Idle clients cost a file descriptor each; past the process's limit, the device polls could
    no longer open sockets ("Too many open files") and the whole fleet would be reported down.
    """

    def __init__(self, server: web.Server, limit: int) -> None:
        self.server = server
        self.limit = limit
        self.refused = 0

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self.server.connections) >= self.limit:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning(
                    "%d client connections open, the most allowed (web.max_connections or the"
                    " file descriptor limit): new ones are closed (%d so far)",
                    self.limit,
                    self.refused,
                )
            return _Refuse()
        return self.server()


async def listen(
    runner: web.AppRunner, host: str, port: int, tls: ssl.SSLContext | None, limit: int
) -> tuple[asyncio.Server, ConnectionCap]:
    """Serve `runner` on host:port with at most `limit` client connections at once."""
    assert runner.server is not None, "runner.setup() first"
    cap = ConnectionCap(runner.server, limit)
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            cap,
            host or None,
            port,
            ssl=tls,
            reuse_address=True,
            backlog=BACKLOG,
            ssl_handshake_timeout=10.0 if tls is not None else None,
        )
    except OSError as exc:
        shown = f"[{host}]" if ":" in host else (host or "0.0.0.0")
        raise ListenError(f"cannot listen on {shown}:{port}: {exc.strerror or exc}") from None
    return server, cap


class Parts(payload.Payload):
    """A body sent as slices of shared bytes objects: nothing copied per request.

    Given as one bytes object, a body is written to the socket at once, and the transport keeps
    a copy of whatever the client has not read yet; with /metrics built as exposition + own
    metrics, every request would also allocate the whole body afresh. A client that asks for a
    fleet's /metrics and never reads would then pin megabytes. Sent in slices, each waiting for
    the client to take the one before (aiohttp drains past 64 KiB), a reader that stalls holds
    back one slice.
    """

    SLICE = 64 * 1024

    def __init__(self, *parts: bytes, content_type: str) -> None:
        super().__init__(parts, content_type=content_type)
        self._parts = parts
        self._size = sum(len(part) for part in parts)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._parts).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        for part in self._parts:
            view = memoryview(part)
            for start in range(0, len(view), self.SLICE):
                await writer.write(view[start : start + self.SLICE])
