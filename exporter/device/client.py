"""The device wire protocol: `GET http://HOST/rpc/<Method>`, bare JSON objects back.

Knows nothing about metrics. Every failure becomes a `PollError` with one of the reasons
timeout, connect, http, json, rpc, schema, and a one-line message naming the method. A failure
where the device answered, but not with the method's reply (an error frame of any code, an
HTTP error status, a body that is not JSON), is a `MethodUnknown`: firmware answers a method it
does not have in any of these ways. Only read methods (`*.Get`) can be sent: `DeviceClient.get`
refuses anything else.

Method names are sent in one spelling per device, learned from its first answer: `Device_id.Get`
or `device_id.get` (real clients use both, and real firmware takes both). Until a device has
answered once, a method it does not know in one spelling is asked in the other.

Replies compressed with gzip or deflate (a device, or a proxy in front of it) are decoded; the
size cap applies to the decoded reply.
"""

from __future__ import annotations

import json
import logging
import re
import time
import zlib
from typing import Any

import orjson
from yarl import URL

from exporter.device.http import HttpClient, HttpFailure

log = logging.getLogger("lektrico.device")

MAX_REPLY_BYTES = 64 * 1024
# The encodings asked for, and decoded; anything else a device sends is an http error.
ACCEPT_ENCODING = "gzip, deflate"
USER_AGENT = "User-Agent: lektrico-exporter"
# HTTP statuses that say something about the request or the moment, not that the device lacks
# the method: unauthorised, rate-limited, busy. Any other error status means "unknown method".
TRANSIENT_STATUSES = frozenset({401, 403, 407, 408, 429, 503})


class PollError(Exception):
    """A failed request; `reason` is one of catalogue.POLL_ERROR_REASONS."""

    def __init__(self, reason: str, message: str, method: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.method = method
        self.message = message

    def __str__(self) -> str:
        return f"{self.method}: {self.message}" if self.method else self.message


class MethodUnknown(PollError):
    """The device answered, but not with the method's reply: it does not have the method."""


def spellings(method: str) -> tuple[str, str]:
    """Canonical `Charger_info.Get` first, then lowercase `charger_info.get` as some clients."""
    return method, method.lower()


# The whole name, not a suffix: "Charge.Start#.Get" or "Charge.Start?.Get" end in ".Get" but
# would reach the device as Charge.Start.
_READ_METHOD = re.compile(r"[A-Za-z][A-Za-z0-9_]*\.get", re.IGNORECASE)


def is_read_method(method: str) -> bool:
    return _READ_METHOD.fullmatch(method) is not None


def one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class DeviceClient:
    """Reads from one device, one request at a time, each on a connection of its own."""

    def __init__(
        self,
        http: HttpClient,
        base_url: str,
        *,
        auth: str | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        name: str = "",
    ) -> None:
        self.name = name  # the device's, for debug logs
        self._http = http
        self._base = base_url.rstrip("/")
        url = URL(self._base)
        self._tls = url.scheme == "https"
        self._host = url.raw_host or ""
        self._port = url.port or (443 if self._tls else 80)
        self._prefix = url.raw_path.rstrip("/")
        # Everything of a request but its first line, kept as bytes: a request is then one
        # concatenation (about 150 bytes a device).
        lines = [
            f"Host: {url.host_port_subcomponent}",
            USER_AGENT,
            f"Accept-Encoding: {ACCEPT_ENCODING}",
            "Connection: close",
        ]
        if auth is not None:  # the Authorization header's value, "Basic ..."
            lines.append(f"Authorization: {auth}")
        self._head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._max = max_reply_bytes
        # Index into spellings() of the one this device answered; None until it answered once.
        self.spelling: int | None = None
        self.requests = 0

    @property
    def base_url(self) -> str:
        return self._base

    async def get(self, method: str) -> dict[str, Any]:
        if not is_read_method(method):
            raise ValueError(f"refusing to send non-read method {method!r}")
        names = spellings(method)
        if self.spelling is not None:
            return await self._request(names[self.spelling], method)
        try:
            reply = await self._request(names[0], method)
        except MethodUnknown as unknown:
            try:
                reply = await self._request(names[1], method)
            except MethodUnknown:
                raise unknown from None
            self.spelling = 1
            return reply
        self.spelling = 0
        return reply

    async def _request(self, wire_name: str, method: str) -> dict[str, Any]:
        self.requests += 1
        started = time.perf_counter()
        try:
            reply = await self._send(wire_name, method)
        except PollError as exc:
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s %s failed: %s",
                    self.name,
                    wire_name,
                    exc.message,
                    extra={
                        "device": self.name,
                        "method": wire_name,
                        "reason": exc.reason,
                        "duration": round(time.perf_counter() - started, 4),
                    },
                )
            raise
        if log.isEnabledFor(logging.DEBUG):
            took = time.perf_counter() - started
            log.debug(
                "%s %s answered in %.3f s",
                self.name,
                wire_name,
                took,
                extra={"device": self.name, "method": wire_name, "duration": round(took, 4)},
            )
        return reply

    async def _send(self, wire_name: str, method: str) -> dict[str, Any]:
        # The method name is a checked read method (letters, digits, _ and one dot): it needs
        # no escaping in a path.
        request = f"GET {self._prefix}/rpc/{wire_name} HTTP/1.1\r\n".encode() + self._head
        try:
            resp = await self._http.get(self._tls, self._host, self._port, request, self._max)
        except HttpFailure as exc:
            raise PollError(exc.reason, exc.message, method) from None
        if resp.status != 200:
            error = PollError if self._transient(resp.status) else MethodUnknown
            raise error("http", f"HTTP {resp.status} {one_line(resp.reason)}".rstrip(), method)
        body = self._decoded(resp.body, resp.headers.get("content-encoding", ""), method)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s: %d bytes",
                self.name,
                wire_name,
                len(body),
                extra={"device": self.name, "method": wire_name, "bytes": len(body)},
            )
        return decode_reply(body, method)

    @staticmethod
    def _transient(status: int) -> bool:
        return status in TRANSIENT_STATUSES or status < 400

    def _decoded(self, body: bytes, encoding: str, method: str) -> bytes:
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding in ("gzip", "x-gzip"):
            wbits = 16 + zlib.MAX_WBITS
        elif encoding == "deflate":
            # RFC 9110 deflate is zlib-wrapped; some servers send raw deflate: take either.
            wbits = zlib.MAX_WBITS if body[:1] and (body[0] & 0x0F) == 8 else -zlib.MAX_WBITS
        else:
            raise PollError("http", f"reply in an encoding not asked for ({encoding})", method)
        decoder = zlib.decompressobj(wbits)
        try:
            plain = decoder.decompress(body, self._max + 1)
        except zlib.error as exc:
            raise PollError("http", f"{encoding} reply is corrupt ({exc})", method) from None
        if len(plain) > self._max:
            raise PollError("http", f"reply exceeds the {self._max} byte cap", method)
        return plain


# orjson parses a reply several times faster than json, but not always to the same values: a
# number of 19 digits or more can be beyond 64 bits, where orjson gives a float and json the
# exact int (a serial number, a label). Such bodies, and every body orjson refuses (NaN and
# Infinity, a byte order mark, UTF-16, lone surrogates, deep nesting), are json's: the result,
# or the error and its message, are json.loads' whichever parses.
_DIGITS = bytes(ord("0") if chr(i).isdigit() and i < 128 else ord(" ") for i in range(256))
_LONG_NUMBER = b"0" * 19


def parse_json(body: bytes) -> Any:
    """json.loads(body), faster."""
    if _LONG_NUMBER not in body.translate(_DIGITS):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body)


def decode_reply(body: bytes, method: str) -> dict[str, Any]:
    """Parse a reply body; an error frame or anything but a JSON object is a PollError."""
    try:
        data = parse_json(body)
    except (ValueError, RecursionError) as exc:
        raise MethodUnknown(
            "json", f"reply is not JSON ({one_line(str(exc), 80)})", method
        ) from None
    if not isinstance(data, dict):
        raise PollError("schema", f"reply is a JSON {type(data).__name__}, not an object", method)
    error = data.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        message = one_line(str(error.get("message", "")), 120)
        # Firmware answers a method it lacks with -1, -6 or -32601 alike: any code counts.
        raise MethodUnknown("rpc", f"error {code}: {message}", method)
    return data
