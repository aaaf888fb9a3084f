"""Sessions end to end: simulated chargers and meters over real sockets, the exporter, its
state store, /metrics, /api/sessions(.csv), /sessions, the sessions command and InfluxDB
(a real VictoriaMetrics, read back) all telling the same story."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import shutil
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from exporter.app import Exporter
from exporter.catalogue import table as cat
from exporter.cli import main as cli_main
from exporter.config.schema import Config, parse_config
from exporter.reading import Reading
from exporter.simulator.device import Anomalies
from exporter.simulator.server import ControlServer, DeviceSpec, SimulatedFleet
from harness.processes import free_port
from harness.servers import VictoriaMetrics, unavailable
from tests.conftest import fetch, override_replies

SPEED = 240.0  # simulated seconds a second: a session in a few seconds
POLL = "poll: {interval: 250ms, timeout: 200ms}"
POLL_SECONDS = 0.25
JITTER = 0.1  # a poll may start this late on a loaded machine
TARIFFS = (
    "tariffs: {default: home, table: {home: {currency: EUR, timezone: Europe/Bucharest,"
    " periods: [{name: night, price: 0.1, from: '22:00', to: '07:00'}, {name: day, price: 0.2}]}}}"
)
CHARGERS = [DeviceSpec(f"car-{i}", "1p7k" if i % 2 else "3p22k", seed=40 + i) for i in range(6)]


def config_of(fleet: SimulatedFleet, state: Path, extra: str = "", poll: str = POLL) -> Config:
    devices = [
        {"name": n, "host": fleet.host(n), "labels": {"owner": f"o{i % 2}"}}
        for i, n in enumerate(fleet.names)
    ]
    return parse_config(
        "\n".join(
            [
                f"listen: '127.0.0.1:{free_port()}'",
                "devices: " + json.dumps(devices),
                poll,
                TARIFFS,
                f"state: {{path: '{state}'}}",
                extra,
            ]
        )
    )


def finished_truth(fleet: SimulatedFleet, since: float, until: float) -> list[dict[str, Any]]:
    out = []
    for name in fleet.names:
        for s in fleet.generated_sessions(name):
            if s["end"] is not None and s["start"] > since and s["end"] < until:
                out.append({**s, "device": name})
    return out


async def wait_for(predicate: Any, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


@pytest.fixture
async def vm(tmp_path: Path) -> AsyncIterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path / "vm")
    await server.start()
    yield server
    await server.stop()


def influx_yaml(url: str) -> str:
    return (
        f"influxdb: {{url: '{url}', bucket: lektrico, org: home, token: t, precision: ms,"
        " flush_interval: 0.2s, timeout: 2s}"
    )


async def test_statement_command_csv_api_and_influxdb_agree(
    tmp_path: Path, vm: VictoriaMetrics, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state.db"
    async with SimulatedFleet(CHARGERS, speed=SPEED) as fleet:
        config = config_of(fleet, state, influx_yaml(vm.url))
        exporter = Exporter(config)
        await exporter.start()
        began = fleet.clock.unix(fleet.clock.now())
        try:
            stage = exporter.sessions
            assert stage is not None

            def finished() -> list[dict[str, Any]]:
                # Sessions that ended before the third idle poll may still be open.
                now = fleet.clock.unix(fleet.clock.now())
                return finished_truth(fleet, began + 0.5, now - 1.0)

            # Until the exporter saw sessions begin and end: how soon depends on where the
            # simulated chargers' histories put their next sessions, not only on the count.
            await wait_for(
                lambda: (
                    stage.ledger.devices
                    and sum(d.counters.sessions for d in stage.ledger.devices.values()) >= 8
                    and len(finished()) >= 3
                ),
                90,
            )
            truth = finished()
            for name in fleet.names:  # nothing changes from here on
                fleet.set_fault(name, "refuse")
            await asyncio.sleep(1.0)  # the store catches up (it is at most a second behind)
            base = f"http://127.0.0.1:{exporter.port}"
            status, text = await fetch(f"{base}/api/sessions.csv")
            assert status == 200
            csv_rows = list(csv.DictReader(io.StringIO(text)))
            status, body = await fetch(f"{base}/api/sessions?owner=o1")
            api = json.loads(body)["sessions"]
            status, metrics = await fetch(f"{base}/metrics")
            status, page = await fetch(f"{base}/sessions?group_by=owner")
            device_pages = [(await fetch(f"{base}/device/{name}"))[1] for name in fleet.names]
        finally:
            await exporter.stop()

    closed = [r for r in csv_rows if r["open"] == "false"]
    assert len(closed) >= 8
    # Over real sockets too, the records are the simulator's: each session once, its energy
    # within 1 Wh, its start and end within a poll interval (and the scheduler's jitter).
    assert len(truth) >= 3
    for want in truth:
        [got] = [
            r
            for r in closed
            if (r["device"], r["session_id"]) == (want["device"], str(want["session_id"]))
        ]
        assert abs(float(got["energy_wh"]) - want["wh"]) <= 1.0
        assert 0.0 <= float(got["start_unix"]) - want["start"] < POLL_SECONDS + JITTER
        assert 0.0 <= float(got["end_unix"]) - want["end"] < POLL_SECONDS + JITTER
    assert {r["label_owner"] for r in api_rows(api)} <= {"o1"}
    assert {(a["device"], a["start_unix"]) for a in api} == {
        (r["device"], float(r["start_unix"])) for r in csv_rows if r["label_owner"] == "o1"
    }
    # /metrics: sessions recorded and energy per tariff are the records' sums.
    recorded = metric_sum(metrics, "lektrico_sessions_recorded_total")
    assert recorded == len(closed)
    tariff_j = metric_sum(metrics, "lektrico_tariff_energy_joules_total")
    assert tariff_j / 3600 == pytest.approx(sum(float(r["energy_wh"]) for r in csv_rows), abs=1.0)
    assert "Charging statement" in page and "owner" in page
    # Each device's page lists its recent sessions (a charger that charged has some).
    with_sessions = [p for p in device_pages if "Recent sessions" in p]
    assert with_sessions and all("kWh" in p for p in with_sessions)

    # The statement command, from the store, without the exporter.
    months = sorted({p.split("/")[0] for r in csv_rows for p in r["parts"].split(";") if p})
    statement_rows: dict[tuple[str, str], float] = {}
    for month in months:
        code = cli_main(
            [
                "sessions",
                "--config",
                str(write_config(tmp_path, config)),
                "--month",
                month,
                "--format",
                "json",
            ]
        )
        assert code == 0
        doc = json.loads(capsys.readouterr().out)
        for group in doc["groups"]:
            for s in group["sessions_list"]:
                key = (s["device"], s["start"])
                statement_rows[key] = statement_rows.get(key, 0.0) + s["month_energy_wh"]
    assert statement_rows.keys() == {(r["device"], r["start"]) for r in csv_rows}
    for r in csv_rows:
        assert statement_rows[r["device"], r["start"]] == pytest.approx(
            float(r["energy_wh"]), abs=0.01
        )

    # InfluxDB: one lektrico_session point per finished session, at its start, same energy.
    series = await vm.export('{__name__="lektrico_session_energy_joules"}')
    stored = {
        (s["metric"]["device"], ts): v
        for s in series
        for ts, v in zip(s["timestamps"], s["values"], strict=True)
    }
    want = {
        (r["device"], math.floor(float(r["start_unix"]) * 1000)): float(r["energy_wh"]) * 3600
        for r in closed
    }
    assert stored.keys() == want.keys()
    for key, joules in want.items():
        assert stored[key] == pytest.approx(joules, abs=3.6)


def api_rows(api: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"label_owner": a["labels"].get("owner", "")} for a in api]


def write_config(tmp_path: Path, config: Config) -> Path:
    path = tmp_path / "sessions.yaml"
    assert config.state.path is not None
    path.write_text(f"state: {{path: '{config.state.path}'}}\n{TARIFFS}\n")
    return path


def metric_sum(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


def promtool_check(body: str) -> subprocess.CompletedProcess[bytes]:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).exists():
        unavailable("promtool is not installed")
    return subprocess.run(
        [promtool, "check", "metrics"],
        input=body.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )


async def test_every_derived_family_is_on_metrics_and_promtool_accepts_it(tmp_path: Path) -> None:
    specs = [*CHARGERS[:4], DeviceSpec("meter", "3em", seed=3)]
    async with SimulatedFleet(specs, speed=SPEED) as fleet:
        exporter = Exporter(config_of(fleet, tmp_path / "state.db"))
        await exporter.start()
        try:
            stage = exporter.sessions
            assert stage is not None
            await wait_for(
                lambda: sum(d.counters.sessions for d in stage.ledger.devices.values()) >= 2, 90
            )
            _, body = await fetch(f"http://127.0.0.1:{exporter.port}/metrics")
        finally:
            await exporter.stop()
    derived = {m.name for m in cat.CATALOGUE if isinstance(m.extract, cat.Derived)}
    present = {line.split("{")[0] for line in body.splitlines() if not line.startswith("#")}

    assert derived <= present
    done = await asyncio.to_thread(promtool_check, body)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- meter energy --------------------------------------------------------------------------


def meter_energy(reading: Reading, phase: str, direction: str) -> float:
    return next(
        s.value
        for s in reading.samples
        if s.metric == "lektrico_meter_energy_joules_total"
        and dict(s.labels) == {"phase": phase, "direction": direction}
    )


def gap_seconds(reading: Reading) -> float:
    return next(
        s.value for s in reading.samples if s.metric == "lektrico_meter_energy_gap_seconds_total"
    )


async def test_meter_energy_of_a_known_power_persists_over_a_restart_and_skips_a_gap(
    tmp_path: Path,
) -> None:
    async with SimulatedFleet([DeviceSpec("meter", "3em", seed=1)], speed=1.0) as fleet:
        fixed = dict(fleet.device("meter").read("Meter_info.Get"))
        fixed["active_p"] = [2000.0, -500.0, 0.0]
        override_replies(fleet, "meter", {"Meter_info.Get": fixed})
        config = config_of(fleet, tmp_path / "state.db")
        first: list[Reading] = []
        exporter = Exporter(config, extra_sinks=[first.append])
        await exporter.start()
        await wait_for(lambda: len([r for r in first if r.up]) >= 12, 30)
        await exporter.stop()
        ups = [r for r in first if r.up]
        elapsed = ups[-1].time - ups[0].time

        assert meter_energy(ups[-1], "L1", "import") == pytest.approx(2000.0 * elapsed, rel=1e-9)
        assert meter_energy(ups[-1], "L2", "export") == pytest.approx(500.0 * elapsed, rel=1e-9)
        assert meter_energy(ups[-1], "L2", "import") == 0.0
        assert gap_seconds(ups[-1]) == 0.0

        await asyncio.sleep(1.5)  # more than 3 poll intervals unpolled
        second: list[Reading] = []
        again = Exporter(config, extra_sinks=[second.append])
        await again.start()
        await wait_for(lambda: len([r for r in second if r.up]) >= 4, 30)
        await again.stop()
    later = [r for r in second if r.up]
    gap = later[0].time - ups[-1].time

    assert gap > 3 * 0.25
    assert gap_seconds(later[0]) == pytest.approx(gap, rel=1e-9)
    since_restart = later[-1].time - later[0].time
    assert meter_energy(later[-1], "L1", "import") == pytest.approx(
        2000.0 * (elapsed + since_restart), rel=1e-9
    )


# ---- the simulator's ground truth over its control API -----------------------------------


async def test_the_control_api_lists_the_sessions_a_charger_generated() -> None:
    specs = [DeviceSpec("car", "1p7k", seed=128), DeviceSpec("meter", "em", seed=1)]
    async with SimulatedFleet(specs, speed=SPEED) as fleet:
        control = ControlServer([fleet])
        await control.start()
        try:
            await asyncio.sleep(1.5)  # the session under way at the start ends (seed 128)
            _, body = await fetch(f"{control.url}/devices/car/sessions")
            status_meter, _ = await fetch(f"{control.url}/devices/meter/sessions")
            status_unknown, _ = await fetch(f"{control.url}/devices/nope/sessions")
        finally:
            await control.stop()
    sessions = json.loads(body)["sessions"]

    assert sessions, "no session generated"
    assert set(sessions[0]) == {"session_id", "start", "end", "wh", "anomalies", "reboots"}
    finished = [s for s in sessions if s["end"] is not None]
    assert finished and all(s["end"] > s["start"] and s["wh"] > 0 for s in finished)
    assert [s["session_id"] for s in sessions] == sorted(s["session_id"] for s in sessions)
    assert (status_meter, status_unknown) == (400, 404)


# ---- injected anomalies over real sockets --------------------------------------------------

FAST = 480.0  # a session in about ten seconds
# A poll interval of 120 device seconds; a reboot resets every connection for its length. No
# backoff: a device back from a reboot is polled at once, as the truth's gap assumes.
FAST_POLL = "poll: {interval: 250ms, timeout: 200ms, max_backoff: 250ms}"
OFTEN = Anomalies(flap=0.8, energy_reset=0.8, reboot=0.8, poll_interval=POLL_SECONDS * FAST)


@pytest.mark.timeout(60)
async def test_over_real_sockets_the_ledger_flags_the_anomalies_the_simulator_injected(
    tmp_path: Path,
) -> None:
    specs = [
        DeviceSpec(f"odd-{i}", "1p7k" if i % 2 else "3p22k", seed=70 + i, anomalies=OFTEN)
        for i in range(20)
    ]
    async with SimulatedFleet(specs, speed=FAST) as fleet:
        readings: list[Reading] = []
        exporter = Exporter(
            config_of(fleet, tmp_path / "state.db", poll=FAST_POLL), extra_sinks=[readings.append]
        )
        await exporter.start()
        began = fleet.clock.unix(fleet.clock.now())
        try:
            stage = exporter.sessions
            assert stage is not None
            await wait_for(
                lambda: sum(d.counters.sessions for d in stage.ledger.devices.values()) >= 24, 30
            )
            truth = finished_truth(fleet, began + 0.5, fleet.clock.unix(fleet.clock.now()) - 1.0)
            for name in fleet.names:
                fleet.set_fault(name, "refuse")
            await asyncio.sleep(1.0)  # the store catches up
            _, body = await fetch(f"http://127.0.0.1:{exporter.port}/api/sessions")
        finally:
            await exporter.stop()
    closed = [r for r in json.loads(body)["sessions"] if not r["open"]]

    assert len(truth) >= 6
    injected = Counter[str]()
    for want in truth:
        injected.update(want["anomalies"])
        [got] = [
            r
            for r in closed
            if (r["device"], r["session_id"]) == (want["device"], want["session_id"])
        ]
        assert abs(got["energy_wh"] - want["wh"]) <= 1.0
        # A reading is stamped when its poll starts, the device answers a little later: at
        # this speed that can be device seconds after a boundary the poll saw.
        assert -JITTER < got["start_unix"] - want["start"] < POLL_SECONDS + JITTER
        assert -JITTER < got["end_unix"] - want["end"] < POLL_SECONDS + JITTER
        polls = [
            (round(r.time - want["start"], 2), r.up)
            for r in readings
            if r.device == want["device"] and want["start"] - 1 < r.time < want["end"] + 1
        ]
        assert got["anomalies"] == want["anomalies"], (want, polls)
    assert min(injected[k] for k in ("state_flap", "energy_reset", "gap")) >= 1, injected
