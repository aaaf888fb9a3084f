"""HTTP/1.1 GETs to devices: one request a connection, read to its end, then reset.

The devices' HTTP is the plainest there is: a GET with no body, a small reply, the connection
ended after it (a charger's small server keeps no idle socket for us, and the exporter keeps
none per device; why reset, not closed: _Exchange._finish). aiohttp's client session does the
same exchange with a connection pool, per-host queues, cookie handling, tracing hooks and a
streaming response object, which cost about four times the CPU of the exchange itself (0.21
against 0.05 ms a request flat out on the development machine); at 10,000 devices that was most
of the exporter's CPU. So the devices are asked here, on an asyncio protocol that keeps the
reply in one buffer and parses it once it is whole.

Every reply is bounded: at most MAX_HEAD_BYTES of status line and headers, at most
`max_body` of body whatever its framing (Content-Length, chunked, or until the connection
closes); a larger one is refused as soon as it is seen, and the connection dropped. The
caller bounds the time (asyncio.timeout around the poll): a cancelled request aborts its
connection. Names are resolved in the bounded lookup threads (config.addresses.LOOKUPS), each
answer kept for DNS_TTL seconds; an address literal is connected to as it is.

Every failure is an `HttpFailure` whose reason is "connect" (no reply began: refused,
unreachable, reset, closed before answering, TLS) or "http" (a reply that is not valid
HTTP/1.x, cut short, or over a cap), with a one-line message.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from exporter.config.addresses import LOOKUPS

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
DNS_TTL = 300.0
DNS_CACHE_MAX = 65_536  # names; past it the cache starts over
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: closing the socket resets the connection

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) (\d{3})(?: ([^\r\n]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,8})[ \t]*(?:;[^\r\n]*)?")


class HttpFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names; a repeated header's values joined by ", "
    body: bytes


def _bad(what: str) -> HttpFailure:
    return HttpFailure("http", f"bad HTTP reply ({what})")


class _Exchange(asyncio.Protocol):
    """One request's connection: buffers the reply and resolves `done` once it is whole."""

    __slots__ = (
        "at",
        "body",
        "buf",
        "chunked",
        "done",
        "head_end",
        "headers",
        "length",
        "max_body",
        "reason",
        "status",
        "transport",
    )

    def __init__(self, done: asyncio.Future[Response], max_body: int) -> None:
        self.done = done
        self.max_body = max_body
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.head_end = -1  # index past the blank line ending the head, once parsed
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.length: int | None = None  # Content-Length, when the reply has one
        self.chunked = False
        self.body = bytearray()  # the decoded chunks of a chunked body
        self.at = 0  # the chunked body's parse position in buf

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one, not a subclass

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.buf += data
        try:
            reply = self._reply(eof=False)
        except HttpFailure as failure:
            self._fail(failure)
            return
        if reply is not None:
            self._finish(reply)

    def eof_received(self) -> bool:
        if not self.done.done():
            try:
                reply = self._reply(eof=True)
            except HttpFailure as failure:
                self._fail(failure)
            else:
                if reply is None:
                    self._fail(self._ended_early())
                else:
                    self._finish(reply)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if exc is None:
            self.eof_received()
            return
        if self.buf:
            self.done.set_exception(HttpFailure("http", f"reply cut short ({_oneline(exc)})"))
        else:
            self.done.set_exception(HttpFailure("connect", _oneline(exc)))

    def _ended_early(self) -> HttpFailure:
        if not self.buf:
            return HttpFailure("connect", "the device closed the connection without a reply")
        if self.head_end < 0:
            return _bad("the connection closed inside the headers")
        return HttpFailure("http", "reply cut short (the connection closed inside the body)")

    def _fail(self, failure: HttpFailure) -> None:
        self.done.set_exception(failure)
        if self.transport is not None:
            self.transport.abort()

    def _finish(self, reply: Response) -> None:
        self.done.set_result(reply)
        if self.transport is not None:
            # Reset, not closed: the reply is whole and nothing more is to be said. A closed
            # connection stays in the host's connection tracking for 120 s (TIME_WAIT), 80,000
            # entries at 10,000 devices; a reset one for 10 s. Polling flat out on loopback
            # (4,500 connections a second) filled this machine's table of 262,144 within a
            # minute when closing, and the kernel dropped packets (polls timed out). abort()
            # alone closes with a FIN like close(); a linger time of 0 makes it a reset. The
            # device's socket is freed at once as well.
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):  # then it is closed as usual
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            self.transport.abort()

    # ---- parsing ----

    def _reply(self, eof: bool) -> Response | None:
        """The whole reply once it is in, None while more is to come."""
        if self.head_end < 0 and not self._head():
            return None
        start = self.head_end
        if self.status in (204, 304):
            return self._response(b"")
        if self.chunked:
            return self._chunks(eof)
        if self.length is not None:
            if len(self.buf) - start >= self.length:
                return self._response(bytes(self.buf[start : start + self.length]))
            return None
        if len(self.buf) - start > self.max_body:
            raise HttpFailure("http", f"reply exceeds the {self.max_body} byte cap")
        return self._response(bytes(self.buf[start:])) if eof else None

    def _response(self, body: bytes) -> Response:
        return Response(self.status, self.reason, self.headers, body)

    def _head(self) -> bool:
        """Parses the status line and headers once they are in; False while they are not."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD_BYTES:
                    raise _bad(f"headers over {MAX_HEAD_BYTES} bytes")
                return False
            if end > MAX_HEAD_BYTES:
                raise _bad(f"headers over {MAX_HEAD_BYTES} bytes")
            lines = bytes(self.buf[:end]).split(b"\r\n")
            status = _STATUS_LINE.fullmatch(lines[0])
            if status is None:
                raise _bad(f"status line {_shown(lines[0])}")
            code = int(status[2])
            if 100 <= code < 200:  # an interim reply (100 Continue): the real one follows
                del self.buf[: end + 4]
                continue
            if len(lines) - 1 > MAX_HEADERS:
                raise _bad(f"more than {MAX_HEADERS} headers")
            self.status = code
            self.reason = (status[3] or b"").decode("latin-1").strip()
            self.headers = _headers(lines[1:])
            self.head_end = end + 4
            self._framing()
            return True

    def _framing(self) -> None:
        coding = self.headers.get("transfer-encoding")
        if coding is not None:
            if coding.strip().lower() != "chunked":
                raise _bad(f"transfer encoding {_shown(coding.encode('latin-1'))}")
            self.chunked = True
            self.at = self.head_end
            return
        length = self.headers.get("content-length")
        if length is None:
            return
        values = {v.strip() for v in length.split(",")}
        if len(values) != 1 or not (value := values.pop()).isdigit() or len(value) > 18:
            raise _bad(f"Content-Length {_shown(length.encode('latin-1'))}")
        self.length = int(value)
        if self.length > self.max_body:
            raise HttpFailure(
                "http", f"reply of {self.length} bytes exceeds the {self.max_body} byte cap"
            )

    def _chunks(self, eof: bool) -> Response | None:
        buf = self.buf
        while True:
            line_end = buf.find(b"\r\n", self.at)
            if line_end < 0:
                if len(buf) - self.at > 1024:
                    raise _bad("chunk size line too long")
                return None
            size_line = _CHUNK_SIZE.fullmatch(buf, self.at, line_end)
            if size_line is None:
                raise _bad(f"chunk size {_shown(bytes(buf[self.at : line_end]))}")
            size = int(size_line[1], 16)
            if size == 0:
                trailers_end = buf.find(b"\r\n\r\n", line_end)
                if buf[line_end : line_end + 4] == b"\r\n\r\n" or trailers_end >= 0:
                    return self._response(bytes(self.body))
                if len(buf) - line_end > MAX_HEAD_BYTES:
                    raise _bad(f"trailers over {MAX_HEAD_BYTES} bytes")
                return None
            if len(self.body) + size > self.max_body:
                raise HttpFailure("http", f"reply exceeds the {self.max_body} byte cap")
            data_start = line_end + 2
            data_end = data_start + size
            if len(buf) < data_end + 2:
                return None
            if buf[data_end : data_end + 2] != b"\r\n":
                raise _bad("chunk not followed by CRLF")
            self.body += buf[data_start:data_end]
            self.at = data_end + 2


def _headers(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise _bad(f"header line {_shown(line)}")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _shown(raw: bytes, limit: int = 60) -> str:
    text = raw[:limit].decode("ascii", "backslashreplace")
    return repr(text + ("…" if len(raw) > limit else ""))


def _oneline(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:120] if text else type(exc).__name__


def _is_address(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


class HttpClient:
    """The exporter's HTTP client for devices: at most `limit` connections open at once."""

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._tls: ssl.SSLContext | None = None
        self.closed = False

    async def get(self, tls: bool, host: str, port: int, request: bytes, max_body: int) -> Response:
        """Sends `request` (the whole GET, head and blank line) and reads the reply."""
        if self.closed:
            raise HttpFailure("connect", "the exporter is shutting down")
        loop = asyncio.get_running_loop()
        addresses = [host] if _is_address(host) else await self._resolve(host, port)
        ssl_context = self._tls_context() if tls else None
        async with self._slots:
            failure: HttpFailure | None = None
            for address in addresses:
                done: asyncio.Future[Response] = loop.create_future()
                try:
                    transport, _ = await loop.create_connection(
                        partial(_Exchange, done, max_body),
                        address,
                        port,
                        ssl=ssl_context,
                        server_hostname=host if tls else None,
                    )
                except OSError as exc:
                    failure = HttpFailure(
                        "connect", f"Cannot connect to {host}:{port} ({_oneline(exc)})"
                    )
                    continue
                try:
                    transport.write(request)
                    return await done
                except BaseException:  # cancelled (the poll's time is up), or failed
                    transport.abort()
                    raise
            assert failure is not None
            raise failure

    async def _resolve(self, host: str, port: int) -> list[str]:
        key = (host, port)
        cached = self._dns.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            infos: list[Any] = await LOOKUPS.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG
            )
        except OSError as exc:
            raise HttpFailure("connect", f"cannot resolve {host} ({_oneline(exc)})") from None
        addresses = list(
            dict.fromkeys(
                str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)
            )
        )
        if not addresses:
            raise HttpFailure("connect", f"cannot resolve {host} (no address)")
        if len(self._dns) >= DNS_CACHE_MAX:
            self._dns.clear()
        self._dns[key] = (now + DNS_TTL, addresses)
        return addresses

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:  # made on first use: most fleets never speak TLS to a device
            self._tls = ssl.create_default_context()
        return self._tls

    async def close(self) -> None:
        self.closed = True
