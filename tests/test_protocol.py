"""The device wire protocol against real HTTP servers on 127.0.0.1, one scenario per path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.device.client import (
    MAX_REPLY_BYTES,
    DeviceClient,
    MethodUnknown,
    PollError,
    parse_json,
)
from exporter.device.http import HttpClient

CHARGER_INFO = {"charger_state": "C", "instant_power": 1179.57, "currents": [5.468, 0, 0]}
BOUND = 5.0  # no test may wait longer than this for a reply

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Servers:
    port: int
    elsewhere_port: int
    hits: list[str] = field(default_factory=list)
    elsewhere_hits: list[str] = field(default_factory=list)

    def url(self, scenario: str) -> str:
        return f"http://127.0.0.1:{self.port}/{scenario}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def start(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = runner.addresses[0][1]
    return runner, port


def scenarios(servers: Servers, release: asyncio.Event) -> dict[str, Handler]:
    async def good(request: web.Request) -> web.StreamResponse:
        return web.json_response(CHARGER_INFO)

    async def lowercase_only(request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        if method != method.lower():
            raise web.HTTPNotFound()
        return web.json_response(CHARGER_INFO)

    async def unknown(request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound()

    async def error_frame(request: web.Request) -> web.StreamResponse:
        frame = {"id": 1, "src": "1p7k_500006", "error": {"code": -1, "message": "General fail"}}
        return web.json_response(frame)

    async def server_error(request: web.Request) -> web.StreamResponse:
        raise web.HTTPInternalServerError()

    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html><body>Lektrico</body></html>", content_type="text/html")

    async def json_list(request: web.Request) -> web.StreamResponse:
        return web.json_response([CHARGER_INFO])

    async def oversized(request: web.Request) -> web.StreamResponse:
        return web.Response(body=big_json(), content_type="application/json")

    async def oversized_chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        body = big_json()
        with contextlib.suppress(ConnectionError):
            for start_at in range(0, len(body), 4096):
                await resp.write(body[start_at : start_at + 4096])
            await resp.write_eof()
        return resp

    async def redirect(request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        raise web.HTTPFound(f"http://127.0.0.1:{servers.elsewhere_port}/rpc/{method}")

    async def truncated(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b'{"charger_state": "C", ')
        assert request.transport is not None
        request.transport.close()
        return resp

    async def hang(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response(CHARGER_INFO)

    async def bad_utf8(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"charger_state": "\xff\xfe"}', content_type="application/json")

    async def deep(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"[" * 100_000, content_type="application/json")

    def compressed(wbits: int, body: bytes, encoding: str) -> web.Response:
        packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
        return web.Response(
            body=packer.compress(body) + packer.flush(),
            headers={"Content-Type": "application/json", "Content-Encoding": encoding},
        )

    async def gzipped(request: web.Request) -> web.StreamResponse:
        return compressed(16 + zlib.MAX_WBITS, json.dumps(CHARGER_INFO).encode(), "gzip")

    async def deflated(request: web.Request) -> web.StreamResponse:
        return compressed(zlib.MAX_WBITS, json.dumps(CHARGER_INFO).encode(), "deflate")

    async def raw_deflated(request: web.Request) -> web.StreamResponse:
        return compressed(-zlib.MAX_WBITS, json.dumps(CHARGER_INFO).encode(), "deflate")

    async def gzip_bomb(request: web.Request) -> web.StreamResponse:
        return compressed(16 + zlib.MAX_WBITS, big_json(), "gzip")

    async def brotli(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=b"\x0b\x02\x80{}\x03",
            headers={"Content-Type": "application/json", "Content-Encoding": "br"},
        )

    async def busy(request: web.Request) -> web.StreamResponse:
        raise web.HTTPServiceUnavailable()

    async def encodings(request: web.Request) -> web.StreamResponse:
        return web.json_response({"accept": request.headers.get("Accept-Encoding", "")})

    return {
        "good": good,
        "lowercase_only": lowercase_only,
        "unknown": unknown,
        "error_frame": error_frame,
        "server_error": server_error,
        "html": html,
        "json_list": json_list,
        "oversized": oversized,
        "oversized_chunked": oversized_chunked,
        "redirect": redirect,
        "truncated": truncated,
        "hang": hang,
        "bad_utf8": bad_utf8,
        "deep": deep,
        "gzipped": gzipped,
        "deflated": deflated,
        "raw_deflated": raw_deflated,
        "gzip_bomb": gzip_bomb,
        "brotli": brotli,
        "busy": busy,
        "encodings": encodings,
    }


def big_json() -> bytes:
    return json.dumps({"pad": "x" * (MAX_REPLY_BYTES + 1024)}).encode()


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    release = asyncio.Event()
    servers = Servers(port=0, elsewhere_port=0)

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        servers.elsewhere_hits.append(request.path_qs)
        return web.json_response(CHARGER_INFO)

    other_app = web.Application()
    other_app.router.add_route("*", "/{tail:.*}", elsewhere)
    other_runner, servers.elsewhere_port = await start(other_app)

    handlers = scenarios(servers, release)

    async def dispatch(request: web.Request) -> web.StreamResponse:
        servers.hits.append(request.path_qs)
        return await handlers[request.match_info["scenario"]](request)

    app = web.Application()
    app.router.add_route("*", "/{scenario}/rpc/{method}", dispatch)
    app.router.add_route("*", "/{tail:.*}", dispatch_unmatched(servers))
    runner, servers.port = await start(app)
    yield servers
    release.set()
    await runner.cleanup()
    await other_runner.cleanup()


def dispatch_unmatched(servers: Servers) -> Handler:
    async def unmatched(request: web.Request) -> web.StreamResponse:
        servers.hits.append(request.path_qs)
        raise web.HTTPNotFound()

    return unmatched


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    # The poller's own client, with its own connection limit; the caller bounds each poll.
    client = HttpClient(100)
    yield client
    await client.close()


async def get(client: DeviceClient, method: str = "Charger_info.Get") -> dict[str, Any]:
    async with asyncio.timeout(BOUND):
        return await client.get(method)


async def poll_error(client: DeviceClient, method: str = "Charger_info.Get") -> PollError:
    with pytest.raises(PollError) as caught:
        await get(client, method)
    return caught.value


async def test_good_reply_is_returned_as_the_bare_json_object(
    servers: Servers, http: HttpClient
) -> None:
    client = DeviceClient(http, servers.url("good"))

    reply = await get(client)

    assert reply == CHARGER_INFO
    assert servers.hits == ["/good/rpc/Charger_info.Get"]


async def test_lowercase_spelling_is_tried_when_the_canonical_one_is_unknown(
    servers: Servers, http: HttpClient
) -> None:
    client = DeviceClient(http, servers.url("lowercase_only"))

    reply = await get(client)

    assert reply == CHARGER_INFO
    assert servers.hits == [
        "/lowercase_only/rpc/Charger_info.Get",
        "/lowercase_only/rpc/charger_info.get",
    ]


async def test_spelling_that_worked_is_asked_first_next_time(
    servers: Servers, http: HttpClient
) -> None:
    client = DeviceClient(http, servers.url("lowercase_only"))
    await get(client)
    servers.hits.clear()

    await get(client, "Meter_info.Get")

    assert servers.hits == ["/lowercase_only/rpc/meter_info.get"]
    assert client.requests == 3


async def test_method_unknown_in_both_spellings_raises_method_unknown(
    servers: Servers, http: HttpClient
) -> None:
    client = DeviceClient(http, servers.url("unknown"))

    with pytest.raises(MethodUnknown) as caught:
        await get(client, "Device_info.Get")

    assert caught.value.method == "Device_info.Get"
    assert servers.hits == ["/unknown/rpc/Device_info.Get", "/unknown/rpc/device_info.get"]


async def test_error_frame_of_any_code_is_an_rpc_error_for_an_unknown_method(
    servers: Servers, http: HttpClient
) -> None:
    client = DeviceClient(http, servers.url("error_frame"))

    error = await poll_error(client)

    assert error.reason == "rpc"
    assert isinstance(error, MethodUnknown)  # firmware answers a method it lacks with -1 too
    assert "-1" in str(error)


async def test_http_500_is_an_http_error_for_an_unknown_method(
    servers: Servers, http: HttpClient
) -> None:
    client = DeviceClient(http, servers.url("server_error"))

    error = await poll_error(client)

    assert error.reason == "http" and isinstance(error, MethodUnknown)
    assert "500" in str(error)


async def test_http_503_is_a_busy_device_not_an_unknown_method(
    servers: Servers, http: HttpClient
) -> None:
    client = DeviceClient(http, servers.url("busy"))

    error = await poll_error(client)

    assert error.reason == "http" and not isinstance(error, MethodUnknown)
    assert len(servers.hits) == 1


async def test_html_body_is_a_json_error_for_an_unknown_method(
    servers: Servers, http: HttpClient
) -> None:
    client = DeviceClient(http, servers.url("html"))

    error = await poll_error(client)

    assert error.reason == "json" and isinstance(error, MethodUnknown)


async def test_once_a_spelling_answered_an_unknown_method_costs_one_request(
    servers: Servers, http: HttpClient
) -> None:
    client = DeviceClient(http, servers.url("lowercase_only"))
    await get(client)  # canonical unknown, lowercase answers: the device's spelling
    servers.hits.clear()
    unknown = DeviceClient(http, servers.url("unknown"))
    unknown.spelling = client.spelling

    with pytest.raises(MethodUnknown):
        await get(unknown, "Dynamic_current.Get")

    assert servers.hits == ["/unknown/rpc/dynamic_current.get"]


@pytest.mark.parametrize("scenario", ["gzipped", "deflated", "raw_deflated"])
async def test_compressed_reply_is_decoded(
    servers: Servers, http: HttpClient, scenario: str
) -> None:
    client = DeviceClient(http, servers.url(scenario))

    reply = await get(client)

    assert reply == CHARGER_INFO


async def test_only_gzip_and_deflate_are_asked_for(servers: Servers, http: HttpClient) -> None:
    client = DeviceClient(http, servers.url("encodings"))

    reply = await get(client)

    assert reply == {"accept": "gzip, deflate"}


async def test_compressed_reply_over_the_cap_once_decoded_is_an_http_error(
    servers: Servers, http: HttpClient
) -> None:
    client = DeviceClient(http, servers.url("gzip_bomb"))

    error = await poll_error(client)

    assert error.reason == "http" and "cap" in str(error)


async def test_reply_in_an_encoding_not_asked_for_is_an_http_error(
    servers: Servers, http: HttpClient
) -> None:
    client = DeviceClient(http, servers.url("brotli"))

    error = await poll_error(client)

    assert error.reason == "http" and "br" in str(error)


async def test_json_list_is_a_schema_error(servers: Servers, http: HttpClient) -> None:
    client = DeviceClient(http, servers.url("json_list"))

    error = await poll_error(client)

    assert error.reason == "schema"


@pytest.mark.parametrize(
    ("scenario", "refused_by"),
    [
        ("oversized", f"bytes exceeds the {MAX_REPLY_BYTES} byte cap"),  # by Content-Length
        ("oversized_chunked", f"reply exceeds the {MAX_REPLY_BYTES} byte cap"),  # while reading
    ],
)
async def test_reply_over_the_size_cap_is_an_http_error(
    servers: Servers, http: HttpClient, scenario: str, refused_by: str
) -> None:
    client = DeviceClient(http, servers.url(scenario))

    error = await poll_error(client)

    assert error.reason == "http"
    assert refused_by in str(error)


async def test_redirect_is_not_followed(servers: Servers, http: HttpClient) -> None:
    client = DeviceClient(http, servers.url("redirect"))

    error = await poll_error(client)

    assert error.reason == "http"
    assert "302" in str(error)
    assert servers.elsewhere_hits == []


async def test_body_shorter_than_its_content_length_is_an_http_error(
    servers: Servers, http: HttpClient
) -> None:
    client = DeviceClient(http, servers.url("truncated"))

    error = await poll_error(client)

    assert error.reason == "http"
    assert "cut short" in str(error)


async def test_closed_port_is_a_connect_error(http: HttpClient) -> None:
    client = DeviceClient(http, f"http://127.0.0.1:{closed_port()}")

    error = await poll_error(client)

    assert error.reason == "connect"


async def test_hanging_device_gives_the_caller_timeout_error_promptly(
    servers: Servers, http: HttpClient
) -> None:
    client = DeviceClient(http, servers.url("hang"))
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await client.get("Charger_info.Get")

    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "method",
    ["Charge.Start", "App_config.Set", "Charge.Start#.Get", "Charge.Start?x=.Get", "../a.Get"],
)
async def test_non_read_method_is_refused_and_nothing_is_sent(
    servers: Servers, http: HttpClient, method: str
) -> None:
    client = DeviceClient(http, servers.url("good"))

    with pytest.raises(ValueError):
        await get(client, method)

    assert servers.hits == []
    assert client.requests == 0


async def test_invalid_utf8_body_is_a_json_error(servers: Servers, http: HttpClient) -> None:
    client = DeviceClient(http, servers.url("bad_utf8"))

    error = await poll_error(client)

    assert error.reason == "json"


async def test_deeply_nested_json_is_a_json_error_not_a_recursion_error(
    servers: Servers, http: HttpClient
) -> None:
    client = DeviceClient(http, servers.url("deep"), max_reply_bytes=200_000)

    error = await poll_error(client)

    assert error.reason == "json"


# ---- decoding: json.loads' result, whichever parser gives it ------------------------------

JSON_BODIES = [
    b'{"a": 123456789012345678901234567890}',  # beyond 64 bits: json keeps the exact int
    b'{"a": -9223372036854775809, "b": 18446744073709551616}',
    b'{"a": 9223372036854775807, "b": -9223372036854775808}',
    b'{"serial": 1234567890123456789}',
    b'{"a": 0.1234567890123456789012, "b": 1e-7, "c": 2.5E+3, "d": -0.0, "e": -0}',
    b'{"a": NaN, "b": Infinity, "c": -Infinity}',
    b'{"a": 1e999, "b": -1e999, "c": 1e-999}',
    b'{"a": 1, "b": 2, "a": 3}',
    b'\xef\xbb\xbf{"a": 1}',
    '{"a": "é"}'.encode("utf-16"),
    b'{"a": "\\ud800", "b": "\\ud83d\\ude00", "c": "\\u00e9"}',
    b'{"a": "\xff"}',
    b'{"a": "tab\there"}',
    b"[" * 1100 + b"]" * 1100,
    b'{"a": [' + b"[" * 400 + b"]" * 400 + b"]}",
    b' \t\r\n{"a": [1, 2.0, "3", true, false, null, {}]} \n',
    b'{"a": 1} x',
    b"",
    b"\x00",
]


@pytest.mark.parametrize("body", JSON_BODIES)
def test_reply_decodes_as_json_loads_decodes_it(body: bytes) -> None:
    try:
        expected: object = json.loads(body)
    except (ValueError, RecursionError) as exc:
        expected = (type(exc), str(exc))
    try:
        got: object = parse_json(body)
    except (ValueError, RecursionError) as exc:
        got = (type(exc), str(exc))

    assert repr(got) == repr(expected)  # repr: NaN, -0.0 and int against float told apart
    assert [type(v) for v in _values(got)] == [type(v) for v in _values(expected)]


@settings(max_examples=300, deadline=None)
@given(
    value=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    )
)
def test_any_json_decodes_as_json_loads_decodes_it(value: object) -> None:
    body = json.dumps(value).encode()

    assert repr(parse_json(body)) == repr(json.loads(body))


def _values(data: object) -> list[object]:
    if isinstance(data, dict):
        return [v for value in data.values() for v in _values(value)]
    if isinstance(data, list):
        return [v for value in data for v in _values(value)]
    return [data]
