"""Addresses: the one parser for host, port and URL, and the strict grammar of `/probe` targets.

Everything that turns a string into somewhere to connect goes through here: a device's `host`,
the exporter's `listen`, InfluxDB's `url`, `/probe?target=`, discovered devices and `--once`.
A URL is only ever built from parsed parts (`Endpoint.base_url`), never by pasting user text
into a template, so nothing a user or a scraper writes can become userinfo, a path or a
fragment of the URL that is really connected to.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 1123 labels; `_` is tolerated because DHCP and mDNS names carry it and it is no URL
# metacharacter.
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
MAX_HOSTNAME = 253

# A /probe target, whole: optional http://, one host form, optional port, optional final "/".
# The IPv6 form admits hex digits, colons and dots only: no zone id ("%"), so nothing after
# the address can be read as userinfo, host or fragment.
_TARGET = re.compile(
    r"(?:http://)?"
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]{2,45})\]|(?P<bare6>[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)|(?P<name>[A-Za-z0-9_.-]{1,253}))"
    r"(?::(?P<port>[0-9]{1,5}))?/?",
    re.ASCII,
)


@dataclass(frozen=True)
class Endpoint:
    """Where a device answers HTTP: scheme, host (IPv6 without brackets) and port."""

    scheme: str
    host: str
    port: int

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.address}"

    @property
    def names(self) -> tuple[str, str, str]:
        """What a probe may call the device by: host:port, the host alone, the base URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return self.address, host, self.base_url


def parse_port(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return port


def split_host_port(text: str, default_port: int | None) -> tuple[str, int]:
    """Split "host", "host:port", "[v6]:port" or a bare IPv6 address."""
    port_text: str | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not [IPv6 address]:port")
        port_text = rest[1:] if rest else None
        if "%" in host:
            raise ValueError(f"{host!r}: IPv6 zone ids are not supported")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif text.count(":") > 1:
        try:
            if "%" in text:
                raise ValueError
            ipaddress.IPv6Address(text)
        except ValueError:
            raise ValueError("write IPv6 with a port in brackets: [fd00::1]:80") from None
        if default_port is None:
            raise ValueError("write IPv6 in brackets with a port, like [::1]:9654")
        host = text
    else:
        host, colon, port_text = text.partition(":")
        port_text = port_text if colon else None
    if port_text is not None:
        return host, parse_port(port_text)
    if default_port is None:
        raise ValueError(f"{text!r} has no port; write host:port, like 0.0.0.0:9654 or [::1]:9654")
    return host, default_port


def is_hostname(text: str) -> bool:
    """A syntactically valid DNS name that is not an IP address in disguise."""
    return (
        len(text) <= MAX_HOSTNAME
        and HOSTNAME.fullmatch(text) is not None
        and re.fullmatch(r"[\d.]+", text) is None
    )


def check_hostname(host: str) -> str:
    """The host in canonical form (IP addresses compressed, names lower-case), or ValueError."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not is_hostname(host):
        raise ValueError(f"{host!r} is not a valid hostname or IP address")
    return host.lower()


def parse_url(url: str, *, what: str) -> tuple[str, str, int, str]:
    """Scheme, host, port and path of an http(s) URL. Never echoes a URL with credentials."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"{what} is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{what} must start with http:// or https://, got {parts.scheme!r}")
    if "@" in parts.netloc:
        raise ValueError(f"{what} must not contain credentials; use the username and password keys")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"{what} must not have a query string or fragment")
    host, port = split_host_port(parts.netloc, 443 if parts.scheme == "https" else 80)
    return parts.scheme, check_hostname(host), port, parts.path


def parse_endpoint(value: str) -> Endpoint:
    """A device's `host`: "host", "host:port", "[v6]:port" or an http(s):// URL without path."""
    text = value.strip()
    if not text:
        raise ValueError("must not be empty")
    if "://" in text:
        scheme, host, port, path = parse_url(text, what="URL")
        if path not in ("", "/"):
            raise ValueError(f"URL must not have a path, got {path!r}")
        return Endpoint(scheme, host, port)
    if "@" in text:
        raise ValueError("must not contain credentials; use the username and password keys")
    host, port = split_host_port(text, 80)
    return Endpoint("http", check_hostname(host), port)


def written_address(value: str) -> str:
    """A device address as the user wrote it, without scheme or trailing slash: its name when
    it is given on the command line."""
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    return (rest if sep else scheme).rstrip("/")


def parse_listen(text: str) -> tuple[str, int]:
    """The exporter's own `listen` address: host:port or [v6]:port, the port required."""
    host, port = split_host_port(text.strip(), None)
    if host:
        check_hostname(host)
    return host, port


# ---- /probe targets ----------------------------------------------------------------------------


class TargetError(ValueError):
    """A /probe target refused; `status` is the HTTP status to answer with (400 or 403)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ProbeTarget:
    """A /probe target as parsed: an IP address or a hostname, and a port."""

    host: str  # canonical: compressed IP address, or lower-case hostname
    port: int
    ip: IPAddress | None  # None for a hostname

    @property
    def address(self) -> str:
        return Endpoint("http", self.host, self.port).address


def parse_target(text: str, default_port: int = 80) -> ProbeTarget:
    """A /probe target by the strict grammar: IPv4, [IPv6] without zone id, or an RFC 1123
    hostname, each with an optional port; TargetError (400) for anything else."""
    m = _TARGET.fullmatch(text)
    if m is None:
        raise TargetError("target must be IPv4, [IPv6] or a hostname, with an optional :port")
    try:
        port = parse_port(m["port"]) if m["port"] else default_port
    except ValueError as exc:
        raise TargetError(f"target {exc}") from None
    v6 = m["v6"] if m["v6"] is not None else m["bare6"]
    if v6 is not None:
        try:
            ip6 = ipaddress.IPv6Address(v6)
        except ValueError:
            raise TargetError("target is not a valid IPv6 address") from None
        return ProbeTarget(str(ip6), port, ip6)
    name = m["name"]
    if re.fullmatch(r"[\d.]+", name):
        try:
            ip4 = ipaddress.IPv4Address(name)
        except ValueError:
            raise TargetError("target is not a valid IPv4 address") from None
        return ProbeTarget(str(ip4), port, ip4)
    if not is_hostname(name):
        raise TargetError("target is not a valid hostname")
    return ProbeTarget(name.lower().rstrip("."), port, None)


def connected_address(ip: IPAddress) -> IPAddress:
    """The address a connection to `ip` really reaches: an IPv4-mapped IPv6 address
    (::ffff:10.0.0.1) reaches its IPv4 address, and must be allowed as that."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def allowed(ip: IPAddress, networks: Sequence[Network]) -> bool:
    real = connected_address(ip)
    return any(real.version == net.version and real in net for net in networks)


async def resolve_host(host: str, port: int, timeout: float) -> list[IPAddress]:
    """Every address a hostname resolves to, within `timeout`; TargetError when it does not."""
    try:
        async with asyncio.timeout(timeout):
            infos = await LOOKUPS.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise TargetError(f"resolving {host} timed out", status=403) from None
    except OSError as exc:
        raise TargetError(f"{host} does not resolve: {exc.strerror or exc}", status=403) from None
    found: list[IPAddress] = []
    for family, *_, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in found:
            found.append(ip)
    if not found:
        raise TargetError(f"{host} does not resolve to an IP address", status=403)
    return found


AddrInfo = list[tuple[Any, ...]]


class Lookups:
    """getaddrinfo in its own small thread pool, with a bound on lookups waiting at once.

    Without uvloop, asyncio resolves names in the loop's default executor, a handful of
    threads that also compress gzip scrapes and parse reloads: a DNS server that never
    answers would fill it, and every later gzip /metrics would wait. Here lookups have their
    own threads; a name already being looked up is shared, not asked again; past `pending`
    distinct lookups in flight, the next fails at once (the poll is down for `connect`).
    """

    def __init__(self, threads: int = 8, pending: int = 64) -> None:
        self.threads = threads
        self.pending = pending
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: dict[tuple[Any, ...], asyncio.Future[AddrInfo]] = {}

    async def getaddrinfo(
        self, host: str, port: int, family: int = 0, type: int = 0, flags: int = 0
    ) -> AddrInfo:
        key = (host, port, family, type, flags, asyncio.get_running_loop())
        future = self._inflight.get(key)
        if future is None:
            if len(self._inflight) >= self.pending:
                raise socket.gaierror(errno.EAGAIN, f"too many DNS lookups in progress ({host})")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="dns")
            future = asyncio.get_running_loop().run_in_executor(
                self._pool, socket.getaddrinfo, host, port, family, type, 0, flags
            )
            self._inflight[key] = future
            future.add_done_callback(lambda done: self._done(key, done))
        return await asyncio.shield(future)

    def _done(self, key: tuple[Any, ...], future: asyncio.Future[AddrInfo]) -> None:
        self._inflight.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved: a lookup nobody waits for any more is not an error


LOOKUPS = Lookups()
