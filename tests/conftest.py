"""Shared fixtures: simulated fleets on real sockets and exporters wired to them.

Every SimulatedFleet a test starts is checked when it stops: the exporter must only ever have
called read methods (`*.Get`). A test whose fleet saw anything else fails in its teardown.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import aiohttp
import pytest

from exporter.app import Exporter
from exporter.config.schema import Config, parse_config
from exporter.device.client import is_read_method
from exporter.simulator.device import encode
from exporter.simulator.server import DeviceSpec, SimulatedFleet
from harness.processes import free_port

WRITE_CALLS: list[str] = []
READ_CALLS_SEEN = [0]
_original_stop = SimulatedFleet.stop


async def _checked_stop(self: SimulatedFleet) -> None:
    for call in self.calls:
        if is_read_method(call.rpc_method):
            READ_CALLS_SEEN[0] += 1
        else:
            WRITE_CALLS.append(f"{call.device}: {call.http_method} {call.rpc_method}")
    await _original_stop(self)


SimulatedFleet.stop = _checked_stop  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def own_state_directory(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's exporters keep their state store (sessions, derived counters) in that
    test's own directory, never in a user's or another test's."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))


@pytest.fixture(autouse=True)
def only_read_methods() -> Iterator[None]:
    before = len(WRITE_CALLS)
    yield
    assert WRITE_CALLS[before:] == [], "the exporter sent non-read calls to a device"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(
        f"read-only check: {READ_CALLS_SEEN[0]} device calls, all *.Get; "
        f"{len(WRITE_CALLS)} other calls"
    )


FleetFactory = Callable[..., Awaitable[SimulatedFleet]]


@pytest.fixture
async def make_fleet() -> AsyncIterator[FleetFactory]:
    fleets: list[SimulatedFleet] = []

    async def start(specs: list[DeviceSpec], **kwargs: Any) -> SimulatedFleet:
        fleet = SimulatedFleet(specs, **kwargs)
        await fleet.start()
        fleets.append(fleet)
        return fleet

    yield start
    for fleet in fleets:
        await fleet.stop()


def fleet_config(fleet: SimulatedFleet, extra: str = "", poll: str = "", **labels: str) -> Config:
    """A config polling every device of the fleet, listening on a free loopback port."""
    devices = [
        {"name": name, "host": fleet.host(name), "labels": dict(labels)} for name in fleet.names
    ]
    body = "\n".join(
        [
            f"listen: '127.0.0.1:{free_port()}'",
            "devices: " + json.dumps(devices),
            "poll: " + (poll or "{interval: 1s, timeout: 500ms}"),
            extra,
        ]
    )
    return parse_config(body)


ExporterFactory = Callable[..., Awaitable[Exporter]]


@pytest.fixture
async def make_exporter() -> AsyncIterator[ExporterFactory]:
    exporters: list[Exporter] = []

    async def start(config: Config, **kwargs: Any) -> Exporter:
        exp = Exporter(config, **kwargs)
        await exp.start()
        exporters.append(exp)
        return exp

    yield start
    for exp in exporters:
        await exp.stop()


def override_replies(fleet: SimulatedFleet, name: str, replies: Mapping[str, Any]) -> None:
    """Make one simulated device answer chosen methods with fixed replies (for edge cases)."""
    device = fleet.device(name)
    original = device.reply

    def reply(method: str) -> bytes:
        if method in replies:
            value = replies[method]
            return encode(value() if callable(value) else value)
        return original(method)

    device.reply = reply  # type: ignore[method-assign]


async def fetch(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers or {}) as resp,
    ):
        return resp.status, await resp.text()
