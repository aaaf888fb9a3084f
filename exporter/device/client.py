"""The device wire protocol: `GET http://HOST/rpc/<Method>`, bare JSON objects back.

Knows nothing about metrics. Every failure becomes a `PollError` with one of the reasons
timeout, connect, http, json, rpc, schema, and a one-line message naming the method.
Only read methods (`*.Get`) can be sent: `DeviceClient.get` refuses anything else.
"""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
from yarl import URL

MAX_REPLY_BYTES = 64 * 1024
# Lektrico firmware answers an unknown method with HTTP 404 or error code -6 ("unknown key").
UNKNOWN_METHOD_CODES = frozenset({-6, -32601})


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
    """The device does not know the method in either spelling (old firmware)."""


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
    """Reads from one device; one connection at a time (the session's per-host limit is 1)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        auth: aiohttp.BasicAuth | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._auth = auth
        self._max = max_reply_bytes
        # Index into spellings(): which one this device answered last; tried first next time.
        self._spelling = 0
        self.requests = 0
        self._base_url = URL(self._base)
        self._prefix = self._base_url.raw_path.rstrip("/")

    @property
    def base_url(self) -> str:
        return self._base

    async def get(self, method: str) -> dict[str, Any]:
        if not is_read_method(method):
            raise ValueError(f"refusing to send non-read method {method!r}")
        names = spellings(method)
        first = names[self._spelling]
        try:
            return await self._request(first, method)
        except MethodUnknown as unknown:
            other = names[1 - self._spelling]
            try:
                reply = await self._request(other, method)
            except MethodUnknown:
                raise unknown from None
            self._spelling = 1 - self._spelling
            return reply

    async def _request(self, wire_name: str, method: str) -> dict[str, Any]:
        # Built from the base parsed once, not parsed from a string: yarl's small host cache
        # misses on a large fleet. Not kept per method either (~6 KB a device).
        url = self._base_url.with_path(f"{self._prefix}/rpc/{wire_name}", encoded=True)
        self.requests += 1
        try:
            async with self._session.get(url, allow_redirects=False, auth=self._auth) as resp:
                if resp.status == 404:
                    raise MethodUnknown("http", "HTTP 404: method unknown to the device", method)
                if resp.status != 200:
                    raise PollError(
                        "http", f"HTTP {resp.status} {one_line(resp.reason or '')}", method
                    )
                body = await self._read_capped(resp, method)
        except PollError:
            raise
        except TimeoutError:
            raise PollError("timeout", "no reply in time", method) from None
        except aiohttp.ClientPayloadError as exc:
            raise PollError("http", f"reply cut short ({one_line(str(exc), 80)})", method) from None
        except aiohttp.ClientResponseError as exc:
            raise PollError(
                "http", f"bad HTTP reply ({one_line(exc.message, 80)})", method
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise PollError(
                "connect", one_line(str(exc) or type(exc).__name__, 120), method
            ) from None
        return decode_reply(body, method)

    async def _read_capped(self, resp: aiohttp.ClientResponse, method: str) -> bytes:
        length = resp.content_length
        if length is not None and length > self._max:
            raise PollError(
                "http", f"reply of {length} bytes exceeds the {self._max} byte cap", method
            )
        body = bytearray()
        async for chunk in resp.content.iter_any():
            body += chunk
            if len(body) > self._max:
                raise PollError("http", f"reply exceeds the {self._max} byte cap", method)
        return bytes(body)


def decode_reply(body: bytes, method: str) -> dict[str, Any]:
    """Parse a reply body; an error frame or anything but a JSON object is a PollError."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise PollError("json", f"reply is not JSON ({one_line(str(exc), 80)})", method) from None
    if not isinstance(data, dict):
        raise PollError("schema", f"reply is a JSON {type(data).__name__}, not an object", method)
    error = data.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        message = one_line(str(error.get("message", "")), 120)
        if code in UNKNOWN_METHOD_CODES:
            raise MethodUnknown("rpc", f"error {code}: {message}", method)
        raise PollError("rpc", f"error {code}: {message}", method)
    return data
