"""A plain TCP server on loopback for tests that play a device byte by byte."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def tcp_server(handle: Handler) -> AsyncIterator[int]:
    """Runs `handle` on each connection to 127.0.0.1:PORT while open; yields PORT."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def hang_up(writer: asyncio.StreamWriter) -> None:
    """Closes a server's side of a connection, whatever state the client left it in."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
