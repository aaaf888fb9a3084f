"""The exporter's HTTP endpoints: /metrics, /probe, the landing page and health checks."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import payload, web
from aiohttp.abc import AbstractStreamWriter

from . import landing
from .poller import Poller
from .prometheus import CONTENT_TYPE, Exposition, render_probe
from .selfmetrics import SelfMetrics
from .sessions import statement
from .sessions.ledger import Session
from .sessions.stage import SessionsStage

log = logging.getLogger("lektrico.web")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PROBE_MARGIN = 0.5  # seconds kept from Prometheus's scrape timeout for the answer itself
MAX_TARGET = 255
# A connection that sends no complete request for this long is closed (aiohttp's own default is
# an hour), so half-open and slowloris clients cannot pile up connections.
IDLE_TIMEOUT = 75.0


@dataclass(frozen=True)
class ProbePolicy:
    allow: Sequence[Network] = ()
    default_port: int = 80

    def resolve(self, target: str) -> str:
        """The device URL for an unconfigured target, or ValueError saying why it is refused."""
        text = target.strip()
        if text.startswith("http://"):
            text = text[len("http://") :].rstrip("/")
        host, port = text, self.default_port
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest:
                port = int(rest.removeprefix(":"))
        elif text.count(":") == 1:
            host, port_text = text.split(":")
            port = int(port_text)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError("target is not a configured device nor an IP address") from None
        if not 0 < port < 65536:
            raise ValueError("target port out of range")
        if not any(ip in net for net in self.allow):
            raise ValueError("target is not in probe.allow")
        shown = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"http://{shown}:{port}"


class Web:
    def __init__(
        self,
        poller: Poller,
        exposition: Exposition,
        metrics: SelfMetrics,
        policy: ProbePolicy,
        probe_timeout: float,
        reload: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        self.poller = poller
        self.exposition = exposition
        self.metrics = metrics
        self.policy = policy
        self.probe_timeout = probe_timeout
        self.ready = False
        self.idle_timeout = IDLE_TIMEOUT
        self._reload = reload
        self.sessions: SessionsStage | None = None  # the session ledger, when the store is on

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
        app.router.add_get("/api/sessions", self.api_sessions)
        app.router.add_get("/api/sessions.csv", self.api_sessions_csv)
        app.router.add_get("/sessions", self.sessions_page)
        return app

    async def index(self, request: web.Request) -> web.Response:
        page = landing.render(self.poller.devices.values()).encode()
        return web.Response(body=Parts(page, content_type="text/html; charset=utf-8"))

    async def healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="Healthy\n")

    async def readiness(self, request: web.Request) -> web.Response:
        if not self.ready:
            return web.Response(status=503, text="Not ready\n")
        return web.Response(text="Ready\n")

    async def reload(self, request: web.Request) -> web.Response:
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
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            zipped = await self.exposition.render_gzip_async(own)
            body = Parts(zipped, content_type=CONTENT_TYPE)
            return web.Response(body=body, headers={"Content-Encoding": "gzip"})
        return web.Response(body=Parts(self.exposition.render(), own, content_type=CONTENT_TYPE))

    async def api_sessions(self, request: web.Request) -> web.Response:
        if self.sessions is None:
            return web.Response(status=404, text="the state store is off (state.enabled)\n")
        try:
            found = await _query_sessions(self.sessions, request)
        except SessionQueryError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        return web.json_response({"sessions": [statement.row(s) for s in found]})

    async def api_sessions_csv(self, request: web.Request) -> web.Response:
        if self.sessions is None:
            return web.Response(status=404, text="the state store is off (state.enabled)\n")
        try:
            found = await _query_sessions(self.sessions, request)
        except SessionQueryError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        return web.Response(text=statement.to_csv(found), content_type="text/csv")

    async def sessions_page(self, request: web.Request) -> web.Response:
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
        configured = st is not None
        if st is None:
            try:
                url = self.policy.resolve(target)
            except ValueError as exc:
                log.info("probe refused for %r: %s", target[:64], exc)
                return web.Response(status=403, text=f"probe refused: {exc}\n")
            st = self.poller.adhoc(target, url)
        reading = await self.poller.poll(st, timeout=self._budget(request))
        if configured and self.poller.devices.get(st.name) is st:
            self.poller.publish(reading)
        return web.Response(body=render_probe(reading), headers={"Content-Type": CONTENT_TYPE})


class SessionQueryError(ValueError):
    pass


async def _query_sessions(stage: SessionsStage, request: web.Request) -> list[Session]:
    """The sessions a request asks for: ?device= (repeatable), from=, to= (ISO 8601), and any
    other parameter as a label filter (?site=home)."""
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
