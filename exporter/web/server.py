"""The exporter's HTTP endpoints: /metrics, /probe, the status page, its API and health checks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import payload, web
from aiohttp.abc import AbstractStreamWriter

from exporter import __version__
from exporter.catalogue.selfmetrics import SelfMetrics
from exporter.config.addresses import (
    Endpoint,
    Network,
    ProbeTarget,
    TargetError,
    allowed,
    parse_target,
    resolve_host,
)
from exporter.device.http import HttpClient
from exporter.device.poller import DeviceState, Poller, new_http
from exporter.outputs.prometheus import CONTENT_TYPE, Exposition, render_probe
from exporter.reading import Reading
from exporter.sessions.ledger import Session
from exporter.sessions.stage import SessionsStage
from exporter.web.status import PUBLIC_FIELDS, Query, StatusBoard

# The HTML pages (exporter.web.pages) and the sessions' statement (exporter.sessions.statement)
# are imported by the handlers that serve them: an exporter whose pages nobody opens, as on a
# small board scraped by Prometheus alone, does not load them.

log = logging.getLogger("lektrico.web")
PROBE_MARGIN = 0.5  # seconds kept from Prometheus's scrape timeout for the answer itself
MAX_TARGET = 255
# A connection that sends no complete request for this long is closed (aiohttp's own default is
# an hour), so half-open and slowloris clients cannot pile up connections.
IDLE_TIMEOUT = 75.0
RECENT_SESSIONS = 10  # on a device's page, from the last 30 days
RECENT_SESSIONS_DAYS = 30
# A configured device's background reading is served by /probe while younger than the poll
# interval plus this: the scheduler starts a poll up to a tick or so late, and a probe in that
# gap would otherwise poll the device itself just before the background poll does.
PROBE_GRACE = 0.25
BACKLOG = 128  # connections accepted per loop turn, before the cap sees them
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
        status: StatusBoard | None = None,
        grafana_url: str | None = None,
        telemetry_path: str = "/metrics",
        probe_concurrency: int = 20,
        lifecycle: bool = False,
    ) -> None:
        self.telemetry_path = telemetry_path
        self.status = status if status is not None else StatusBoard()
        self.grafana_url = grafana_url
        self.poller = poller
        self.exposition = exposition
        self.metrics = metrics
        self.policy = policy
        self.probe_timeout = probe_timeout
        self.ready = False
        self.idle_timeout = IDLE_TIMEOUT
        self._assets: dict[str, bytes] = {}
        self._reload = reload
        self.sessions: SessionsStage | None = None  # the session ledger, when the store is on
        self.lifecycle = lifecycle
        # Probes of unconfigured targets: at most this many in flight, on their own pool.
        self.probe_concurrency = probe_concurrency
        self._probing = 0
        self._probe_http: HttpClient | None = None

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=64 * 1024, handler_args={"keepalive_timeout": self.idle_timeout}
        )
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/api/devices", self.api_devices)
        app.router.add_get("/device/{name}", self.device_page)
        app.router.add_get(self.telemetry_path, self.metrics_handler)
        app.router.add_get("/probe", self.probe)
        app.router.add_get("/-/healthy", self.healthy)
        app.router.add_get("/-/ready", self.readiness)
        app.router.add_post("/-/reload", self.reload)
        app.router.add_put("/-/reload", self.reload)
        app.router.add_get("/sd", self.service_discovery)
        app.router.add_get("/api/sessions", self.api_sessions)
        app.router.add_get("/api/sessions.csv", self.api_sessions_csv)
        app.router.add_get("/sessions", self.sessions_page)
        return app

    @property
    def probe_http(self) -> HttpClient:
        if self._probe_http is None:
            size = self.probe_concurrency
            self._probe_http = new_http(size, limit=size)
        return self._probe_http

    async def close(self) -> None:
        if self._probe_http is not None:
            await self._probe_http.close()
            self._probe_http = None

    async def index(self, request: web.Request) -> web.Response:
        return await self._asset("status.html")

    async def static(self, request: web.Request) -> web.Response:
        return await self._asset(request.match_info["name"])

    async def _asset(self, name: str) -> web.Response:
        from exporter.web import pages

        if name not in pages.ASSETS:
            raise web.HTTPNotFound()
        if name not in self._assets:
            self._assets[name] = pages.asset(name)
        return web.Response(
            body=self._assets[name],
            content_type=pages.ASSETS[name].split(";")[0],
            charset="utf-8",
            headers=pages.SECURITY_HEADERS,
        )

    async def api_devices(self, request: web.Request) -> web.Response:
        """The status page's data: fleet summary and one page of filtered, sorted devices."""
        try:
            query = Query.parse(request.query, request.query.getall("label", []))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.status.sync(self.poller.devices)
        total, page = self.status.page(query)
        body = {
            "version": __version__,
            "now": time.time(),
            "summary": self.status.summary(),
            "total": total,
            "offset": query.offset,
            "limit": query.limit,
            "devices": [{k: row[k] for k in PUBLIC_FIELDS} for row in page],
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def device_page(self, request: web.Request) -> web.Response:
        from exporter.web import pages

        name = request.match_info["name"]
        dev = self.poller.devices.get(name)
        if dev is None:
            raise web.HTTPNotFound(text="no such device\n")
        now = time.time()
        recent: list[Session] = []
        if self.sessions is not None:
            found = await self.sessions.query(
                devices=[name], since=now - RECENT_SESSIONS_DAYS * 86400
            )
            recent = found[-RECENT_SESSIONS:][::-1]
        status = self.status.devices.get(name)
        page = pages.device_page(dev, status, self.grafana_url, now, recent)
        return web.Response(
            text=page, content_type="text/html", charset="utf-8", headers=pages.SECURITY_HEADERS
        )

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
        body = Parts(*await self.exposition.render_async(), own, content_type=CONTENT_TYPE)
        return web.Response(body=body, headers=VARY)

    async def api_sessions(self, request: web.Request) -> web.Response:
        found = await self._sessions_asked(request)
        if isinstance(found, web.Response):
            return found
        from exporter.sessions import statement

        return web.json_response({"sessions": [statement.row(s) for s in found]})

    async def api_sessions_csv(self, request: web.Request) -> web.Response:
        found = await self._sessions_asked(request)
        if isinstance(found, web.Response):
            return found
        from exporter.sessions import statement

        return web.Response(text=statement.to_csv(found), content_type="text/csv")

    async def _sessions_asked(self, request: web.Request) -> list[Session] | web.Response:
        """The sessions a request asks for, or the answer that says why there are none."""
        if self.sessions is None:
            return web.Response(status=404, text="the state store is off (state.enabled)\n")
        try:
            return await _query_sessions(self.sessions, request)
        except SessionQueryError as exc:
            return web.Response(status=400, text=f"{exc}\n")

    async def sessions_page(self, request: web.Request) -> web.Response:
        from exporter.sessions import statement

        if self.sessions is None:
            return web.Response(status=404, text="the state store is off (state.enabled)\n")
        month = request.query.get("month") or statement.current_month()
        group_by = request.query.get("group_by", "device")[:64]
        try:
            since, until = statement.month_bounds(month)
        except ValueError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        found = await self.sessions.query(since=since, until=until)
        labels = sorted({k for st in self.poller.devices.values() for k, _ in st.target.labels})
        page = statement.render_html(statement.statement(found, month, group_by), labels)
        return web.Response(text=page, content_type="text/html")

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
                st = self.poller.adhoc(target, url, self.probe_http)
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
            reading = self.poller.publish(reading)
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


class SessionQueryError(ValueError):
    pass


async def _query_sessions(stage: SessionsStage, request: web.Request) -> list[Session]:
    """The sessions a request asks for: ?device= (repeatable), from=, to= (ISO 8601), and any
    other parameter as a label filter (?site=home)."""
    from exporter.sessions import statement

    q = request.query
    filters: dict[str, Any] = {"devices": q.getall("device", [])}
    for key, name in (("from", "since"), ("to", "until")):
        if key in q:
            try:
                filters[name] = statement.parse_time(q[key])
            except ValueError:
                raise SessionQueryError(f"{key}: not an ISO 8601 time: {q[key][:40]!r}") from None
    labels = {k: v for k, v in q.items() if k not in ("device", "from", "to")}
    found = await stage.query(**filters)
    return [s for s in found if statement.matches(s, labels)]


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
        # Let go of the body once it is written: a kept-alive connection holds its last
        # response until the next request comes, and with it a 10,000-device body (74 MB,
        # RSS that glibc keeps once it is freed) from one scrape to the next.
        self._parts = self._value = ()
