"""The InfluxDB output against real databases: nothing lost, nothing duplicated, never stuck.

VictoriaMetrics stands in for InfluxDB 2.x/3.x (it accepts /api/v2/write). InfluxDB 1.6, the
Debian package, has no /api/v2/write (1.8 added it), so `WriteShim` serves that endpoint the way
InfluxDB 1.8 does (bucket "db/rp", token "user:pass") and passes the write on to the real
server's /write: the errors the writer sees (type conflict, 401, 404) are InfluxDB's own. The
shim can also answer the next requests itself with a status and headers (429/503 Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from exporter.app import Exporter
from exporter.catalogue.selfmetrics import SelfMetrics
from exporter.config.schema import InfluxConfig, parse_config
from exporter.outputs import Output
from exporter.outputs.influx import spool as influx_spool
from exporter.outputs.influx.lines import PRECISION_FACTOR, Serializer
from exporter.outputs.influx.writer import InfluxWriter, classify, retry_after
from exporter.reading import Reading
from exporter.simulator.server import DeviceSpec, SimulatedFleet
from harness.processes import free_port
from harness.servers import InfluxDB1, VictoriaMetrics
from tests.test_influx import T0, charger_reading, parse_line

pytestmark = pytest.mark.server
REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FLEET = [
    DeviceSpec("garage", "3p22k", seed=1),
    DeviceSpec("carport", "1p7k", seed=2),
    DeviceSpec("barn", "1p7k-old", seed=3),
    DeviceSpec("house", "3em", seed=4),
    DeviceSpec("flat", "em", seed=5),
    DeviceSpec("gone", "1p7k", fault="refuse"),
]
POLL = "poll: {interval: 0.2s, timeout: 0.15s, slow_interval: 1s, identity_interval: 5s}"

Key = tuple[str, tuple[tuple[str, str], ...], int]


# ---- what VictoriaMetrics should hold --------------------------------------------------------


def expected_samples(lines: Iterable[str], precision: str = "ms") -> tuple[Counter[Key], set[str]]:
    """VictoriaMetrics' view of line protocol: a series `<measurement>_<field>` per field.

    Also the names of string fields: the Debian VictoriaMetrics (1.79) stores them as 0, newer
    ones leave them out, so they are not compared.
    """
    to_ms = PRECISION_FACTOR[precision] / 1000
    out: Counter[Key] = Counter()
    strings = set()
    for line in lines:
        measurement, tags, fields, ts = parse_line(line)
        for field, value in fields.items():
            name = f"{measurement}_{field}"
            if value.startswith('"'):
                strings.add(name)
            else:
                out[name, tuple(sorted(tags.items())), round(ts / to_ms)] += 1
    return out, strings


async def stored_samples(
    vm: VictoriaMetrics, at_least: int = 0, ignore: set[str] | None = None
) -> Counter[Key]:
    """What VictoriaMetrics holds (series named in `ignore` left out).

    It may take VictoriaMetrics a moment to make fresh series searchable, so this waits (up to
    10 s) for `at_least` samples.
    """
    deadline = time.monotonic() + 10
    while True:
        out: Counter[Key] = Counter()
        for series in await vm.export('{__name__=~"lektrico_.*"}'):
            labels = dict(series["metric"])
            name = labels.pop("__name__")
            if ignore is None or name not in ignore:
                for ts in series["timestamps"]:
                    out[name, tuple(sorted(labels.items())), ts] += 1
        if out.total() >= at_least or time.monotonic() > deadline:
            return out
        await asyncio.sleep(0.2)


def lines_of(readings: Iterable[Reading], precision: str = "ms") -> list[str]:
    serializer = Serializer(precision)
    return [line for r in readings for line in serializer.lines(r)]


async def assert_stored(vm: VictoriaMetrics, lines: Iterable[str]) -> Counter[Key]:
    """VictoriaMetrics holds exactly these points: none missing, none extra or twice."""
    expected, strings = expected_samples(lines)
    stored = await stored_samples(vm, expected.total(), strings)
    missing = expected - stored
    extra = stored - expected
    assert not missing, f"{missing.total()} samples missing, e.g. {list(missing)[:3]}"
    assert not extra, f"{extra.total()} extra or duplicated, e.g. {list(extra)[:3]}"
    return stored


def counter_value(metrics: SelfMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


# ---- running the exporter --------------------------------------------------------------------


def devices_yaml(fleet: SimulatedFleet) -> str:
    return "devices:\n" + "".join(
        f"  - {{name: {n}, host: '{fleet.host(n)}', labels: {{site: farm}}}}\n" for n in fleet.names
    )


def influx_yaml(url: str, **settings: object) -> str:
    """An `influxdb:` section; a setting given as None is left out."""
    values = {
        "url": url,
        "bucket": "lektrico",
        "org": "home",
        "token": "secret",
        "precision": "ms",
        "flush_interval": "0.2s",
        "batch_size": 200,
        "max_retry_delay": "0.5s",
        "timeout": "2s",
        **settings,
    }
    inner = ", ".join(f"{k}: {v!r}" for k, v in values.items() if v is not None)
    return f"influxdb: {{{inner}}}\n"


def influx_config(url: str, **settings: object) -> InfluxConfig:
    config = parse_config(influx_yaml(url, **settings)).influxdb
    assert config is not None
    return config


@contextlib.asynccontextmanager
async def exporter_with(
    fleet: SimulatedFleet, outputs_yaml: str, metrics: SelfMetrics
) -> AsyncIterator[tuple[list[Output], list[Reading]]]:
    """The exporter polling the fleet with these outputs; every reading it published."""
    # Without the session ledger: its lektrico_session points are not readings' (they are
    # checked in test_sessions_e2e).
    config = parse_config(
        f"listen: 127.0.0.1:{free_port()}\n{POLL}\n{devices_yaml(fleet)}{outputs_yaml}"
        "state: {enabled: false}\n"
    )
    published: list[Reading] = []
    exporter = Exporter(config, metrics=metrics, extra_sinks=[published.append])
    await exporter.start()
    try:
        yield exporter.outputs, published
    finally:
        await exporter.stop()


@pytest.fixture
async def fleet() -> AsyncIterator[SimulatedFleet]:
    async with SimulatedFleet(FLEET, speed=60.0) as running:
        yield running


@pytest.fixture
async def vm(tmp_path: Path) -> AsyncIterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path / "vm")
    await server.start()
    yield server
    await server.stop()


# ---- end to end with VictoriaMetrics ---------------------------------------------------------


async def test_every_point_the_exporter_publishes_is_read_back(
    fleet: SimulatedFleet, vm: VictoriaMetrics
) -> None:
    metrics = SelfMetrics()

    async with exporter_with(fleet, influx_yaml(vm.url), metrics) as (_, published):
        await asyncio.sleep(1.5)

    lines = lines_of(published)
    assert {r.device for r in published} == set(fleet.names)
    await assert_stored(vm, lines)
    assert counter_value(metrics, "lektrico_influxdb_points_written_total") == len(lines)
    assert counter_value(metrics, "lektrico_influxdb_points_buffered") == 0
    assert counter_value(metrics, "lektrico_influxdb_last_write_success_timestamp_seconds") > 0


async def test_an_outage_loses_nothing_and_duplicates_nothing(
    fleet: SimulatedFleet, vm: VictoriaMetrics
) -> None:
    metrics = SelfMetrics()

    async with exporter_with(fleet, influx_yaml(vm.url), metrics) as (outputs, published):
        writer = next(o for o in outputs if isinstance(o, InfluxWriter))
        assert isinstance(writer, InfluxWriter)
        await asyncio.sleep(0.8)
        await vm.stop()
        polls_at_outage = len(published)
        await asyncio.sleep(1.5)
        buffered_during_outage = writer.points
        await vm.start()
        await wait_until(lambda: writer.points == 0, 10, "the backlog to be written")
        await asyncio.sleep(0.5)

    assert len(published) > polls_at_outage + 2 * len(FLEET)  # polling went on
    assert buffered_during_outage > 0
    assert counter_value(metrics, "lektrico_influxdb_write_errors_total", reason="connect") > 0
    await assert_stored(vm, lines_of(published))


async def test_buffer_full_drops_the_oldest_points_and_counts_them(
    vm: VictoriaMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = SelfMetrics()
    await vm.stop()
    writer = InfluxWriter(influx_config(vm.url, buffer_points=20, batch_size=20), metrics)
    readings = [charger_reading(time=T0 + i) for i in range(10)]  # 5 points each

    for reading in readings:
        writer.publish(reading)
    await vm.start()
    await writer.start()
    await writer.close()

    await assert_stored(vm, lines_of(readings[6:]))
    dropped = counter_value(metrics, "lektrico_influxdb_points_dropped_total", reason="buffer_full")
    assert dropped == 30
    assert refusals(caplog, "buffer_full") == 1


async def test_stop_writes_what_is_buffered(vm: VictoriaMetrics) -> None:
    writer = InfluxWriter(influx_config(vm.url, flush_interval="1h"))
    await writer.start()
    readings = [charger_reading(time=T0 + i) for i in range(3)]
    for reading in readings:
        writer.publish(reading)

    await writer.close()

    await assert_stored(vm, lines_of(readings))


async def test_a_restart_during_an_outage_keeps_the_points_in_the_spool(
    vm: VictoriaMetrics, tmp_path: Path
) -> None:
    await vm.stop()
    config = influx_config(vm.url, spool_dir=str(tmp_path / "spool"), timeout="1s")
    first = InfluxWriter(config)
    await first.start()
    readings = [charger_reading(time=T0 + i) for i in range(4)]
    for reading in readings:
        first.publish(reading)
    started = time.monotonic()
    await first.close()
    stop_took = time.monotonic() - started

    second = InfluxWriter(config)
    await vm.start()
    await second.start()
    await second.close()

    assert stop_took < 3
    assert second.points == 0
    assert not list((tmp_path / "spool").glob("*.lp"))
    await assert_stored(vm, lines_of(readings))


# ---- the exporter killed with SIGKILL during an outage ----------------------------------------


async def scrape(port: int) -> dict[str, float]:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            text = await resp.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("lektrico_influxdb_points_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def wait_scrape(port: int, check: Callable[[dict[str, float]], bool], what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if check(await scrape(port)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"exporter: timed out waiting for {what}")


async def test_a_crash_during_an_outage_loses_nothing_with_the_spool(
    fleet: SimulatedFleet, vm: VictoriaMetrics, tmp_path: Path
) -> None:
    port = free_port()
    record = tmp_path / "published.lp"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        f"listen: 127.0.0.1:{port}\n{POLL}\n{devices_yaml(fleet)}"
        + influx_yaml(vm.url, spool_dir=str(tmp_path / "spool"))
        + f"line_protocol: {{path: '{record}', precision: ms}}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = (tmp_path / "exporter.log").open("ab")

    def spawn() -> subprocess.Popen[bytes]:
        command = [PYTHON, "-m", "exporter", "--config", str(config_path)]
        return subprocess.Popen(command, cwd=REPO, env=env, stderr=log)

    written = "lektrico_influxdb_points_written_total"
    buffered = "lektrico_influxdb_points_buffered"
    first = spawn()
    try:
        await wait_scrape(port, lambda m: m.get(written, 0) > 0, "first writes")
        await vm.stop()
        await wait_scrape(port, lambda m: m.get(buffered, 0) > 100, "points to pile up")
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert list((tmp_path / "spool").glob("*.lp"))

        second = spawn()
        try:
            await wait_scrape(port, lambda m: m.get(buffered, 0) > 0, "the restart")
            await vm.start()
            await wait_scrape(port, lambda m: m.get(buffered, 1) == 0, "the backlog")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0
    finally:
        if first.poll() is None:
            first.kill()
        log.close()

    published = [line for line in record.read_text().splitlines() if line]
    expected, strings = expected_samples(published)
    stored = await stored_samples(vm, expected.total(), strings)
    missing = expected - stored
    assert not missing, f"{missing.total()} samples missing, e.g. {list(missing)[:3]}"
    assert max(stored.values()) == 1, "duplicated samples"


# ---- InfluxDB 1.x behind /api/v2/write: rejected writes ---------------------------------------


class WriteShim:
    """InfluxDB 1.8's /api/v2/write for a server without it, or a pass-through; injects faults."""

    def __init__(self, target: str, v1: bool = True) -> None:
        self.target = target
        self.v1 = v1
        self.faults: deque[tuple[int, dict[str, str]]] = deque()
        self.requests: list[float] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> WriteShim:
        app = web.Application()
        app.router.add_post("/api/v2/write", self.write)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        await self.runner.cleanup()

    async def write(self, request: web.Request) -> web.Response:
        self.requests.append(time.monotonic())
        if self.faults:
            status, headers = self.faults.popleft()
            return web.json_response({"message": "injected"}, status=status, headers=headers)
        params: dict[str, str] = dict(request.query)
        url = self.target + "/api/v2/write"
        if self.v1:
            db, _, rp = params["bucket"].partition("/")
            params = {"db": db, "precision": params.get("precision", "ns")}
            if rp:
                params["rp"] = rp
            token = request.headers.get("Authorization", "").removeprefix("Token ")
            if ":" in token:
                params["u"], params["p"] = token.split(":", 1)
            url = self.target + "/write"
        # aiohttp has already undone any Content-Encoding: gzip.
        async with self.session.post(url, params=params, data=await request.read()) as resp:
            body = await resp.read()
            return web.Response(status=resp.status, body=body, content_type="application/json")


@pytest.fixture
async def influx(tmp_path: Path) -> AsyncIterator[InfluxDB1]:
    server = InfluxDB1(tmp_path / "influx", auth=True)
    await server.start()
    await server.query("CREATE USER admin WITH PASSWORD 'admin' WITH ALL PRIVILEGES")
    yield server
    await server.stop()


ADMIN = ("admin", "admin")


def v1_config(url: str, **settings: object) -> InfluxConfig:
    """The InfluxDB 1.x form: database, retention policy, username and password."""
    v1 = {"bucket": None, "org": None, "token": None, "database": "lektrico"}
    v1 |= {"retention_policy": "autogen", "username": "writer", "password": "pw"}
    return influx_config(url, **v1, **settings)


async def influx_rows(influx: InfluxDB1, query: str) -> list[dict[str, Any]]:
    return await influx.rows(query, "lektrico", ADMIN)


def refusals(caplog: pytest.LogCaptureFixture, reason: str) -> int:
    return sum(
        1
        for r in caplog.records
        if r.name == "lektrico.influx" and r.levelno == logging.ERROR and reason in r.getMessage()
    )


async def test_a_type_conflict_drops_only_the_conflicting_points_and_is_reported_once(
    influx: InfluxDB1, caplog: pytest.LogCaptureFixture
) -> None:
    await influx.query("CREATE DATABASE lektrico", auth=ADMIN)
    await influx.query("CREATE USER writer WITH PASSWORD 'pw'", auth=ADMIN)
    await influx.query("GRANT WRITE ON lektrico TO writer", auth=ADMIN)
    now = time.time()
    # Another tool already wrote lektrico_charger power_watts as an integer.
    conflicting = f"lektrico_charger,device=other power_watts=1i {int(now)}"
    assert (await influx.write("lektrico", conflicting.encode(), auth=ADMIN))[0] == 204
    metrics = SelfMetrics()
    async with WriteShim(influx.url) as shim:
        writer = InfluxWriter(v1_config(shim.url, batch_size=10), metrics)
        await writer.start()
        for i in range(6):
            writer.publish(charger_reading(device="a", time=now + i))
            writer.publish(charger_reading(device="b", time=now + i))
        await writer.close()

    charger = await influx_rows(influx, "SELECT power_watts FROM lektrico_charger GROUP BY *")
    others = await influx_rows(influx, "SELECT * FROM /lektrico_.*/ WHERE device != 'other'")
    assert Counter(r["device"] for r in charger) == {"other": 1}
    assert Counter(r["device"] for r in others) == {"a": 6 * 4, "b": 6 * 4}
    assert writer.points == 0
    dropped = counter_value(
        metrics, "lektrico_influxdb_points_dropped_total", reason="type_conflict"
    )
    assert dropped == 12
    assert counter_value(metrics, "lektrico_influxdb_points_written_total") == 60 - 12
    assert (
        counter_value(metrics, "lektrico_influxdb_write_errors_total", reason="type_conflict") == 6
    )
    assert refusals(caplog, "type_conflict") == 1


@pytest.mark.parametrize("problem", ["not_found", "unauthorized"])
async def test_a_refused_write_is_reported_once_and_later_points_still_go_out(
    influx: InfluxDB1, caplog: pytest.LogCaptureFixture, problem: str
) -> None:
    if problem == "not_found":  # the user may write, but the database is missing
        await influx.query("CREATE USER writer WITH PASSWORD 'pw' WITH ALL PRIVILEGES", auth=ADMIN)
    else:  # the database is there, the user is not
        await influx.query("CREATE DATABASE lektrico", auth=ADMIN)
    metrics = SelfMetrics()
    async with WriteShim(influx.url) as shim:
        writer = InfluxWriter(v1_config(shim.url, batch_size=5), metrics)
        await writer.start()
        for i in range(4):
            writer.publish(charger_reading(time=T0 + i))
        await writer.flush()
        if problem == "not_found":
            await influx.query("CREATE DATABASE lektrico", auth=ADMIN)
        else:
            await influx.query("CREATE USER writer WITH PASSWORD 'pw'", auth=ADMIN)
            await influx.query("GRANT WRITE ON lektrico TO writer", auth=ADMIN)
        for i in range(4, 7):
            writer.publish(charger_reading(time=T0 + i))
        await writer.close()

    rows = await influx_rows(influx, "SELECT up FROM lektrico_device")
    assert [r["time"] for r in rows] == [round((T0 + i) * 1000) for i in range(4, 7)]
    assert counter_value(metrics, "lektrico_influxdb_points_dropped_total", reason=problem) == 20
    assert counter_value(metrics, "lektrico_influxdb_write_errors_total", reason=problem) == 4
    assert refusals(caplog, problem) == 1


async def test_retry_after_is_honoured(vm: VictoriaMetrics) -> None:
    metrics = SelfMetrics()
    async with WriteShim(vm.url, v1=False) as shim:
        shim.faults.extend([(503, {"Retry-After": "1"}), (429, {"Retry-After": "1"})])
        writer = InfluxWriter(influx_config(shim.url, max_retry_delay="2s"), metrics)
        await writer.start()
        readings = [charger_reading(time=T0 + i) for i in range(3)]
        for reading in readings:
            writer.publish(reading)
        await writer.flush()
        await writer.close()

    gaps = [b - a for a, b in zip(shim.requests, shim.requests[1:], strict=False)]
    assert len(shim.requests) == 3
    assert all(gap >= 0.95 for gap in gaps), gaps
    assert counter_value(metrics, "lektrico_influxdb_write_errors_total", reason="server") == 1
    assert counter_value(metrics, "lektrico_influxdb_write_errors_total", reason="throttled") == 1
    await assert_stored(vm, lines_of(readings))


# ---- error classification ---------------------------------------------------------------------


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(None) is None
    assert retry_after("soon") is None
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert math.isclose(retry_after(date) or 0, 30, abs_tol=2)


def test_connection_problems_are_retried() -> None:
    assert classify(ConnectionRefusedError()).retry
    assert classify(TimeoutError()).retry
    assert classify(aiohttp.ServerDisconnectedError()).retry


# ---- the spool bounds what waits, memory only its head ----------------------------------------


def dropped_total(metrics: SelfMetrics) -> float:
    return sum(
        s.value
        for family in metrics.registry.collect()
        if family.name == "lektrico_influxdb_points_dropped"
        for s in family.samples
        if s.name.endswith("_total")
    )


async def test_the_spool_keeps_more_than_buffer_points_through_an_outage(
    vm: VictoriaMetrics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(influx_spool, "SEGMENT_BYTES", 4096)  # several segments, some unloaded
    metrics = SelfMetrics()
    await vm.stop()
    config = influx_config(
        vm.url, spool_dir=str(tmp_path / "spool"), buffer_points=20, batch_size=20
    )
    writer = InfluxWriter(config, metrics)
    await writer.start()
    readings = [charger_reading(time=T0 + i) for i in range(30)]  # 150 points
    held = []
    for reading in readings:
        writer.publish(reading)
        held.append(getattr(writer, "_memory", writer.points))  # in memory
        await asyncio.sleep(0.01)
    assert writer.points == 150
    assert max(held) <= 20, "memory holds more than buffer_points"

    await vm.start()
    await wait_until(lambda: writer.points == 0, 20, "the spool to be written")
    await writer.close()

    await assert_stored(vm, lines_of(readings))
    assert dropped_total(metrics) == 0
    assert counter_value(metrics, "lektrico_influxdb_points_written_total") == 150
    assert not list((tmp_path / "spool").glob("*.lp"))


def break_directory(path: Path) -> None:
    """Make `path` unusable for new files, also for root: it is now a regular file."""
    path.rename(path.with_name(path.name + ".moved"))
    path.write_text("not a directory\n")


def spool_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "lektrico.influx" and r.levelno >= logging.ERROR and "spool" in r.getMessage()
    ]


async def test_points_the_spool_cannot_take_stay_in_memory_and_arrive(
    vm: VictoriaMetrics,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(influx_spool, "SEGMENT_BYTES", 2048)  # a new segment every 2 readings
    metrics = SelfMetrics()
    await vm.stop()
    spool_dir = tmp_path / "spool"
    writer = InfluxWriter(
        influx_config(vm.url, spool_dir=str(spool_dir), buffer_points=200), metrics
    )
    await writer.start()
    break_directory(spool_dir)  # the segment made at start takes 2 readings, then new ones
    readings = [charger_reading(time=T0 + i) for i in range(16)]
    for reading in readings:
        writer.publish(reading)
    assert writer.points == 80

    await vm.start()
    await wait_until(lambda: writer.points == 0, 20, "the points to be written")
    await writer.close()

    await assert_stored(vm, lines_of(readings))
    assert dropped_total(metrics) == 0
    assert len(spool_errors(caplog)) == 1, spool_errors(caplog)
    assert str(spool_dir) in spool_errors(caplog)[0]


async def test_points_beyond_the_buffer_when_the_spool_fails_are_counted_and_logged_once(
    vm: VictoriaMetrics,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(influx_spool, "SEGMENT_BYTES", 1)  # a new segment for every reading
    metrics = SelfMetrics()
    await vm.stop()
    spool_dir = tmp_path / "spool"
    config = influx_config(vm.url, spool_dir=str(spool_dir), buffer_points=20, batch_size=20)
    writer = InfluxWriter(config, metrics)
    break_directory(spool_dir)  # after the start: the first segment was made
    readings = [charger_reading(time=T0 + i) for i in range(12)]  # 60 points, 55 in memory
    for reading in readings:
        writer.publish(reading)
    assert writer._memory <= 20

    await vm.start()
    await writer.start()
    await writer.close()

    await assert_stored(vm, lines_of([readings[0], *readings[-4:]]))  # the spool's, the newest
    dropped = counter_value(
        metrics, "lektrico_influxdb_points_dropped_total", reason="spool_unwritable"
    )
    assert dropped == 35 and dropped_total(metrics) == 35
    assert len(spool_errors(caplog)) == 2, spool_errors(caplog)  # the spool, then the drops


# ---- Retry-After is a hint, error bodies are bounded ------------------------------------------


PAST = "Wed, 21 Oct 2015 07:28:00 GMT"


@pytest.mark.parametrize("header", ["0", "-5", PAST, "nan", "inf", "-inf", "1e999", "soon", ""])
async def test_no_retry_after_makes_the_writer_hammer_stall_or_crash(
    vm: VictoriaMetrics, caplog: pytest.LogCaptureFixture, header: str
) -> None:
    async with WriteShim(vm.url, v1=False) as shim:
        shim.faults.extend([(503, {"Retry-After": header})] * 1000)
        config = influx_config(shim.url, max_retry_delay="1s", flush_interval="0.1s")
        writer = InfluxWriter(config)
        await writer.start()
        readings = [charger_reading(time=T0 + i) for i in range(3)]
        for reading in readings:
            writer.publish(reading)
        writer._wake.set()
        await asyncio.sleep(3.0)
        during = len(shim.requests)
        shim.faults.clear()
        await wait_until(lambda: writer.points == 0, 5, "the points once the server is back")
        await writer.close()

    # Backoff within [0.5 s, 1 s]: at most 7 attempts in 3 s, at least one retry.
    assert 2 <= during <= 7, f"{during} requests in 3 s"
    assert not [r for r in caplog.records if "writer failed" in r.getMessage()]
    await assert_stored(vm, lines_of(readings))


def test_retry_delays_are_clamped_to_the_backoff_range() -> None:
    from exporter.outputs.influx.writer import RETRY_BASE, retry_delay

    for hint in (0.0, -5.0, float("-inf"), 0.1):
        assert retry_delay(hint, 1, 300.0) == RETRY_BASE
    assert retry_delay(float("inf"), 1, 300.0) == 300.0
    assert retry_delay(1e9, 1, 20.0) == 20.0
    assert retry_delay(7.0, 1, 300.0) == 7.0
    assert retry_after("nan") is None and retry_after("NaN") is None
    assert retry_after("Mon, 99 Foo 99999 99:99:99 GMT") is None
    assert (retry_after(PAST) or 0) < 0


HUGE_BODY_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b'{"message": "' + b"x" * (1 << 20) + b'"}'

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        except OSError:
            pass  # the client read what it wanted and hung up

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def huge_body_server(port: int) -> subprocess.Popen[bytes]:
    """In its own process, so that its allocations are not counted with the writer's."""
    return subprocess.Popen([PYTHON, "-c", HUGE_BODY_SERVER, str(port)])


async def test_a_huge_error_body_is_read_in_part_and_logged_short(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    server = huge_body_server(port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        metrics = SelfMetrics()
        writer = InfluxWriter(influx_config(f"http://127.0.0.1:{port}", batch_size=10), metrics)
        await writer.start()
        for i in range(4):
            writer.publish(charger_reading(time=T0 + i))  # 20 points: bisected, ~40 requests
        tracemalloc.start()
        try:
            await writer.flush()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await writer.close()
    finally:
        server.kill()
        server.wait()

    assert (
        counter_value(metrics, "lektrico_influxdb_points_dropped_total", reason="bad_request") == 20
    )
    # Bounded: about 2 MiB whatever the body size (16 MiB bodies too); 57-70 MiB when read whole.
    assert peak < 8 << 20, f"{peak} bytes allocated at the peak for 1 MiB error bodies"
    messages = [r.getMessage() for r in caplog.records if r.name == "lektrico.influx"]
    assert messages and max(map(len, messages)) < 1000, max(map(len, messages))
