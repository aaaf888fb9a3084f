"""Operations: reload, service discovery, sharding, watched device files, state-change logs."""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import time
from pathlib import Path

import aiohttp
import pytest

import exporter.app as app_module
from exporter.app import MALLOC_FROM, Exporter, fix_malloc_thresholds
from exporter.config.schema import load_config, parse_config
from exporter.device import sharding
from exporter.simulator.server import DeviceSpec, SimulatedFleet
from harness.processes import free_port

from .conftest import ExporterFactory, FleetFactory, fetch


def write_config(
    path: Path, fleet: SimulatedFleet, names: list[str], port: int, extra: str = ""
) -> None:
    devices = [{"name": n, "host": fleet.host(n), "labels": {"site": "lab"}} for n in names]
    path.write_text(
        f"listen: '127.0.0.1:{port}'\n"
        f"devices: {json.dumps(devices)}\n"
        "poll: {interval: 500ms, timeout: 300ms}\n"
        "web: {enable_lifecycle: true}\n" + extra
    )


async def post(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.post(url) as resp:
        return resp.status, await resp.text()


async def until(check: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_reload_adds_and_removes_devices_and_keeps_the_others(
    tmp_path: Path, make_fleet: FleetFactory, make_exporter: ExporterFactory
) -> None:
    fleet = await make_fleet([DeviceSpec(n, "1p7k", seed=i) for i, n in enumerate("abc")])
    path, port = tmp_path / "config.yml", free_port()
    write_config(path, fleet, ["a", "b"], port)
    exp = await make_exporter(load_config(path), config_path=str(path))
    await until(lambda: all(st.reading for st in exp.poller.devices.values()))
    kept = exp.poller.devices["a"]
    write_config(path, fleet, ["a", "c"], port)
    status, text = await post(f"http://127.0.0.1:{exp.port}/-/reload")
    assert (status, text) == (200, "reloaded\n")
    assert set(exp.poller.devices) == {"a", "c"}
    assert exp.poller.devices["a"] is kept
    await until(lambda: exp.poller.devices["c"].reading is not None)
    _, metrics = await fetch(f"http://127.0.0.1:{exp.port}/metrics")
    assert 'device="b"' not in metrics and 'lektrico_up{device="c"' in metrics


async def test_invalid_reload_is_rejected_and_old_config_keeps_running(
    tmp_path: Path,
    make_fleet: FleetFactory,
    make_exporter: ExporterFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = await make_fleet([DeviceSpec("a", "1p7k")])
    path, port = tmp_path / "config.yml", free_port()
    write_config(path, fleet, ["a"], port)
    exp = await make_exporter(load_config(path), config_path=str(path))
    path.write_text("devices: [{name: a}]\n")
    with caplog.at_level(logging.ERROR):
        status, text = await post(f"http://127.0.0.1:{exp.port}/-/reload")
    assert status == 400 and "devices[0].host" in text
    assert set(exp.poller.devices) == {"a"}
    rejected = [r for r in caplog.records if "reload rejected" in r.getMessage()]
    assert len(rejected) == 1 and "\n" not in rejected[0].getMessage()


async def test_service_discovery_lists_devices_for_probe(
    tmp_path: Path, make_fleet: FleetFactory, make_exporter: ExporterFactory
) -> None:
    fleet = await make_fleet([DeviceSpec("a", "1p7k"), DeviceSpec("m", "em")])
    path, port = tmp_path / "config.yml", free_port()
    write_config(path, fleet, ["a", "m"], port)
    exp = await make_exporter(load_config(path))
    status, body = await fetch(f"http://127.0.0.1:{exp.port}/sd")
    groups = json.loads(body)
    assert status == 200
    assert sorted(g["labels"]["__param_target"] for g in groups) == ["a", "m"]
    assert all(g["targets"] == [f"127.0.0.1:{exp.port}"] for g in groups)
    assert all(
        g["labels"]["__metrics_path__"] == "/probe" and g["labels"]["site"] == "lab" for g in groups
    )


def test_shards_split_a_fleet_exactly_once() -> None:
    names = [f"charger-{i}" for i in range(3000)]
    shares = [sharding.select(names, i, 3) for i in range(3)]
    assert set().union(*shares) == set(names)
    assert sum(len(s) for s in shares) == len(names)
    assert all(900 < len(s) < 1100 for s in shares)
    grown = [sharding.select(names, i, 4) for i in range(4)]
    moved = sum(1 for n in names if sharding.owner(n, 3) != sharding.owner(n, 4))
    assert moved < len(names) * 0.35  # rendezvous hashing moves ~1/4, not everything
    assert set().union(*grown) == set(names)


async def test_replicas_poll_every_device_exactly_once(
    tmp_path: Path, make_fleet: FleetFactory, make_exporter: ExporterFactory
) -> None:
    names = [f"d{i}" for i in range(12)]
    fleet = await make_fleet(
        [DeviceSpec(n, "1p7k", seed=i) for i, n in enumerate(names)], frozen=True
    )
    replicas: list[Exporter] = []
    for i in range(3):
        path = tmp_path / f"r{i}.yml"
        write_config(path, fleet, names, free_port(), extra=f"shard: {{index: {i}, count: 3}}\n")
        replicas.append(await make_exporter(load_config(path)))
    await asyncio.sleep(1.2)
    owned = [set(r.poller.devices) for r in replicas]
    assert set().union(*owned) == set(names) and sum(map(len, owned)) == len(names)
    polled_by: dict[str, int] = {}
    for i, r in enumerate(replicas):
        for name, st in r.poller.devices.items():
            assert st.reading is not None and st.reading.up
            polled_by[name] = i
    assert len(polled_by) == len(names)


async def test_device_files_are_watched(tmp_path: Path, make_fleet: FleetFactory) -> None:
    fleet = await make_fleet([DeviceSpec("a", "1p7k"), DeviceSpec("b", "em")])
    fleet_dir = tmp_path / "fleet.d"
    fleet_dir.mkdir()
    (fleet_dir / "one.yml").write_text(f"devices: [{{name: a, host: '{fleet.host('a')}'}}]\n")
    path = tmp_path / "config.yml"
    path.write_text(
        f"listen: '127.0.0.1:{free_port()}'\ndevice_files: ['fleet.d/*.yml']\n"
        "poll: {interval: 500ms, timeout: 300ms}\n"
    )
    exp = Exporter(load_config(path), config_path=str(path), watch_interval=0.2)
    await exp.start()
    try:
        assert set(exp.poller.devices) == {"a"}
        (fleet_dir / "two.yml").write_text(
            json.dumps({"devices": [{"name": "b", "host": fleet.host("b")}]})
        )
        await until(lambda: set(exp.poller.devices) == {"a", "b"})
        (fleet_dir / "one.yml").unlink()
        await until(lambda: set(exp.poller.devices) == {"b"})
    finally:
        await exp.stop()


async def test_state_changes_are_logged_once(
    make_fleet: FleetFactory,
    make_exporter: ExporterFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = await make_fleet([DeviceSpec("a", "1p7k")])
    path, port = tmp_path / "config.yml", free_port()
    write_config(path, fleet, ["a"], port)
    with caplog.at_level(logging.INFO, logger="lektrico"):
        exp = await make_exporter(load_config(path))
        st = exp.poller.devices["a"]
        await until(lambda: st.reading is not None and st.reading.up)
        fleet.set_fault("a", "http500")
        await until(lambda: st.failures >= 3)
        fleet.set_fault("a", "none")
        await until(lambda: st.failures == 0, seconds=8)
    lines = [r.getMessage() for r in caplog.records if r.name == "lektrico.poller"]
    assert len(lines) == 2, lines
    assert "device a is down: http: " in lines[0] and "HTTP 500" in lines[0]
    assert "device a is up again" in lines[1]


def test_malloc_thresholds_are_fixed_on_glibc_and_left_alone_elsewhere() -> None:
    """On glibc the thresholds are fixed; on another C library (musl, macOS) nothing is tried."""
    glibc = platform.libc_ver()[0] == "glibc"

    assert fix_malloc_thresholds() is glibc


@pytest.mark.parametrize("devices", [1, MALLOC_FROM])
async def test_only_a_fleet_whose_metrics_can_pass_128_kib_fixes_the_malloc_thresholds(
    devices: int, make_exporter: ExporterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[None] = []
    monkeypatch.setattr(app_module, "fix_malloc_thresholds", lambda: calls.append(None) or True)
    hosts = [{"name": f"d{i}", "host": f"127.0.0.{i + 2}:9"} for i in range(devices)]
    config = parse_config(
        f"listen: '127.0.0.1:{free_port()}'\ndevices: {json.dumps(hosts)}\n"
        f"poll: {{interval: 60s, timeout: 1s}}\nstate: {{enabled: false}}"
    )

    await make_exporter(config)

    assert len(calls) == (1 if devices >= MALLOC_FROM else 0)
