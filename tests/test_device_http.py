"""The devices' HTTP client against raw TCP servers on 127.0.0.1: framing, bounds, connections.

tests/test_protocol.py and tests/test_hostile_replies.py drive it through DeviceClient against
aiohttp servers and random bytes; here each HTTP/1.1 framing a device or a proxy may use is
checked on its own, byte by byte where delivery matters, and so are the client's promises about
connections: one a request, ended when the reply is in, aborted when the caller gives up, at
most `limit` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.device.client import DeviceClient, PollError
from exporter.device.http import MAX_HEAD_BYTES, HttpClient, HttpFailure
from harness.tcp import hang_up, tcp_server

BOUND = 5.0
REQUEST = b"GET /rpc/Charger_info.Get HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    """Runs `script` on each connection; records requests and how each connection ended."""

    script: Script | None = None
    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    open_now: int = 0
    most_open: int = 0
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)
    reset_by_client: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                async with asyncio.timeout(BOUND):
                    self.requests.append(await reader.readuntil(b"\r\n\r\n"))
                    assert self.script is not None
                    await self.script(reader, writer)
                    await writer.drain()
                    # Keep the connection open: the client must end it once the reply is in.
                    try:
                        if await reader.read(1) == b"":
                            self.closed_by_client.set()
                    except ConnectionResetError:
                        self.closed_by_client.set()
                        self.reset_by_client.set()
        finally:
            self.open_now -= 1
            await hang_up(writer)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    async with tcp_server(s.handle) as s.port:
        yield s


def sends(*parts: bytes, close: bool = False) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for part in parts:
            writer.write(part)
            await writer.drain()
        if close:
            writer.close()

    return script


async def get(server: Server, max_body: int = 65536, http: HttpClient | None = None) -> bytes:
    client = http or HttpClient(10)
    async with asyncio.timeout(BOUND):
        reply = await client.get(False, "127.0.0.1", server.port, REQUEST, max_body)
    assert reply.status == 200, reply
    return reply.body


async def failure(server: Server, max_body: int = 65536) -> HttpFailure:
    with pytest.raises(HttpFailure) as caught:
        await get(server, max_body)
    return caught.value


BODY = b'{"charger_state": "C", "instant_power": 1179.57}'
LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"a;name=value\r\n"
    + BODY[:10]
    + b"\r\n"
    + b"%x\r\n" % (len(BODY) - 10)
    + BODY[10:]
    + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
)


async def test_reply_with_a_length_is_read_without_waiting_for_the_close(server: Server) -> None:
    server.script = sends(LENGTH)  # and then the server keeps the connection open

    assert await get(server) == BODY
    async with asyncio.timeout(BOUND):
        await server.closed_by_client.wait()


async def test_connection_is_reset_once_the_reply_is_whole(server: Server) -> None:
    """A reset, not a close: a closed connection would sit in the host's connection tracking
    for 120 s (TIME_WAIT), and polling fast fills the table."""
    server.script = sends(LENGTH)

    assert await get(server) == BODY
    async with asyncio.timeout(BOUND):
        await server.closed_by_client.wait()

    assert server.reset_by_client.is_set()


async def test_chunked_reply_with_extensions_and_trailers_is_decoded(server: Server) -> None:
    server.script = sends(CHUNKED)

    assert await get(server) == BODY
    async with asyncio.timeout(BOUND):
        await server.closed_by_client.wait()


async def test_reply_without_length_is_read_until_the_device_closes(server: Server) -> None:
    server.script = sends(b"HTTP/1.0 200 OK\r\n\r\n", BODY, close=True)

    assert await get(server) == BODY


async def test_interim_100_continue_is_skipped(server: Server) -> None:
    server.script = sends(b"HTTP/1.1 100 Continue\r\n\r\n", LENGTH)

    assert await get(server) == BODY


async def test_repeated_headers_are_joined_and_names_lower_cased(server: Server) -> None:
    server.script = sends(
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    reply = await HttpClient(1).get(False, "127.0.0.1", server.port, REQUEST, 100)

    assert reply.headers == {"x-a": "1, 2", "content-encoding": "gzip", "content-length": "2"}


@settings(max_examples=40, deadline=None)
@given(
    wire=st.sampled_from([LENGTH, CHUNKED]),
    cuts=st.lists(st.integers(1, len(CHUNKED) - 1), max_size=12, unique=True),
)
async def test_reply_is_the_same_however_the_bytes_arrive(wire: bytes, cuts: list[int]) -> None:
    s = Server()
    points = sorted(c for c in cuts if c < len(wire))
    parts = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.001)  # each part its own segment

    s.script = trickle
    async with tcp_server(s.handle) as s.port:
        assert await get(s) == BODY


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n", "reply of 99999 bytes exceeds"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffff\r\n", "byte cap"),
        (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 2000, "byte cap"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES, "headers over"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n{}", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "transfer encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}xx", "CRLF"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header line"),
        (b"ICY 200 OK\r\n\r\n", "status line"),
        (b"HTTP/2 200\r\n\r\n", "status line"),
    ],
)
async def test_reply_over_a_bound_or_malformed_is_refused_at_once(
    server: Server, wire: bytes, words: str
) -> None:
    server.script = sends(wire)  # the server then waits: the client must not

    error = await failure(server, max_body=1000)

    assert error.reason == "http" and words in error.message, error.message
    assert "\n" not in error.message


@pytest.mark.parametrize(
    ("wire", "reason", "words"),
    [
        (b"", "connect", "without a reply"),
        (b"HTTP/1.1 200 OK\r\nContent-", "http", "inside the headers"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", "http", "cut short"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n", "http", "cut short"),
    ],
)
async def test_connection_closed_early_says_where(
    server: Server, wire: bytes, reason: str, words: str
) -> None:
    server.script = sends(wire, close=True)

    error = await failure(server)

    assert error.reason == reason and words in error.message, error.message


async def test_refused_connection_is_a_connect_failure() -> None:
    async def nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with tcp_server(nothing) as port:
        pass  # closed again: nothing listens on the port now

    with pytest.raises(HttpFailure) as caught:
        await HttpClient(1).get(False, "127.0.0.1", port, REQUEST, 100)

    assert caught.value.reason == "connect"
    assert f"127.0.0.1:{port}" in caught.value.message


async def test_a_caller_that_gives_up_aborts_the_connection(server: Server) -> None:
    gone = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{")
        await writer.drain()
        try:
            if await reader.read(1) == b"":
                gone.set()
        except ConnectionResetError:
            gone.set()

    server.script = hang
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await HttpClient(1).get(False, "127.0.0.1", server.port, REQUEST, 100)

    async with asyncio.timeout(1.0):
        await gone.wait()


async def test_connections_open_at_once_are_bounded_by_the_limit(server: Server) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.write(LENGTH)

    server.script = slow
    http = HttpClient(2)

    bodies = await asyncio.gather(*(get(server, http=http) for _ in range(7)))

    assert bodies == [BODY] * 7
    assert server.most_open == 2


async def test_a_name_is_resolved_once_and_kept(server: Server) -> None:
    server.script = sends(LENGTH)
    http = HttpClient(1)

    for _ in range(2):
        reply = await http.get(False, "localhost", server.port, REQUEST, 1000)
        assert reply.body == BODY

    assert list(http._dns) == [("localhost", server.port)]


async def test_an_unresolvable_name_is_a_connect_failure() -> None:
    with pytest.raises(HttpFailure) as caught:
        await HttpClient(1).get(False, "no-such-device.invalid", 80, REQUEST, 100)

    assert caught.value.reason == "connect" and "no-such-device.invalid" in caught.value.message


async def test_device_client_sends_one_plain_get_with_its_headers(server: Server) -> None:
    server.script = sends(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    base = f"http://127.0.0.1:{server.port}/behind/proxy"
    client = DeviceClient(HttpClient(1), base, auth="Basic dTpw")

    assert await client.get("Charger_info.Get") == {}

    lines = server.requests[0].decode().split("\r\n")
    assert lines[0] == "GET /behind/proxy/rpc/Charger_info.Get HTTP/1.1"
    assert set(lines[1:-2]) == {
        f"Host: 127.0.0.1:{server.port}",
        "User-Agent: lektrico-exporter",
        "Accept-Encoding: gzip, deflate",
        "Connection: close",
        "Authorization: Basic dTpw",
    }


async def test_device_client_names_the_method_in_a_wire_failure(server: Server) -> None:
    server.script = sends(b"ICY 200 OK\r\n\r\n")
    client = DeviceClient(HttpClient(1), f"http://127.0.0.1:{server.port}")

    with pytest.raises(PollError) as caught:
        await client.get("Charger_info.Get")

    assert caught.value.reason == "http" and caught.value.method == "Charger_info.Get"
    assert str(caught.value).startswith("Charger_info.Get: bad HTTP reply")
