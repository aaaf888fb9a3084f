"""Line protocol to a file or stdout, and InfluxQL users reading it back from InfluxDB 1.x."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest

from exporter.app import Exporter
from exporter.config.schema import LineProtocolConfig, parse_config
from exporter.outputs import lineproto_file
from exporter.outputs.influx.lines import Serializer
from exporter.outputs.lineproto_file import LineProtocolFile
from exporter.simulator.server import DeviceSpec, SimulatedFleet
from harness.processes import free_port
from harness.servers import InfluxDB1
from tests.test_influx import T0, charger_reading, field_table
from tests.test_influx_spool import assert_one_line, exporter_config, run_exporter


async def test_each_reading_is_appended_as_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "points.lp"
    path.write_bytes(b"# earlier\n")
    output = LineProtocolFile(LineProtocolConfig(path=str(path), precision="ms"))
    readings = [charger_reading(time=T0 + i) for i in range(2)]

    await output.start()
    for reading in readings:
        output.publish(reading)
    await output.close()

    serializer = Serializer("ms")
    assert path.read_bytes() == b"# earlier\n" + b"".join(map(serializer.encode, readings))


async def test_a_rotated_file_is_reopened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lineproto_file, "REOPEN_CHECK", 0.0)
    path = tmp_path / "points.lp"
    output = LineProtocolFile(LineProtocolConfig(path=str(path)))
    await output.start()

    output.publish(charger_reading(time=T0))
    path.rename(tmp_path / "points.lp.1")
    output.publish(charger_reading(time=T0 + 1))
    await output.close()

    assert (tmp_path / "points.lp.1").read_text().endswith(" 1700000000\n")
    assert path.read_text().endswith(" 1700000001\n")


async def test_dash_writes_to_stdout() -> None:
    stdout = io.BytesIO()
    output = LineProtocolFile(LineProtocolConfig(path="-"), prefix="ev", stdout=stdout)

    await output.start()
    output.publish(charger_reading())
    await output.close()

    assert stdout.getvalue().startswith(b"ev_device,device=garage,model=3p22k,site=home up=true")


async def test_a_write_error_is_logged_once_and_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output = LineProtocolFile(LineProtocolConfig(path=str(tmp_path / "points.lp")))
    await output.start()
    output._fd = 999_999  # a closed descriptor: every write fails with EBADF

    output.publish(charger_reading())
    output.publish(charger_reading())

    assert len([r for r in caplog.records if "line protocol output" in r.getMessage()]) == 1


INFLUX_TYPES = {"float": "float", "int": "integer", "bool": "boolean", "string": "string"}


@pytest.mark.server
async def test_influxql_reads_the_schema_back_from_influxdb_1(tmp_path: Path) -> None:
    path = tmp_path / "points.lp"
    specs = [
        DeviceSpec("garage", "3p22k", seed=4),  # charging within the test's simulated minute
        DeviceSpec("barn", "1p7k-old", seed=2),
        DeviceSpec("house", "3em", seed=3),
    ]
    influx = InfluxDB1(tmp_path / "influx")
    await influx.start()
    try:
        async with SimulatedFleet(specs, speed=60.0) as fleet:
            devices = "".join(f"  - {{name: {n}, host: '{fleet.host(n)}'}}\n" for n in fleet.names)
            config = parse_config(
                f"listen: 127.0.0.1:{free_port()}\n"
                "poll: {interval: 0.2s, timeout: 0.15s, slow_interval: 1s}\n"
                f"devices:\n{devices}"
            )
            output = LineProtocolFile(LineProtocolConfig(path=str(path), precision="ms"))
            exporter = Exporter(config, extra_sinks=[output.publish])
            await output.start()
            await exporter.start()
            await asyncio.sleep(1.0)
            await exporter.stop()
            await output.close()
        await influx.query("CREATE DATABASE home")
        assert await influx.write("home", path.read_bytes(), precision="ms") == (204, "")

        keys = await influx.rows("SHOW FIELD KEYS", "home")
        polls = await influx.rows('SELECT count("up") FROM lektrico_device GROUP BY device', "home")
        power = await influx.rows(
            'SELECT last("power_watts"), last("state") FROM lektrico_charger GROUP BY device',
            "home",
        )
        volts = await influx.rows(
            "SELECT mean(voltage_volts) FROM lektrico_meter_phase "
            "WHERE phase = 'L2' AND time > now() - 1d GROUP BY device",
            "home",
        )
        documented = {q: await influx.rows(q, "home") for q in docs_influxql()}
    finally:
        await influx.stop()

    lines = path.read_text().splitlines()
    assert {r["device"]: r["count"] for r in polls} == {
        name: sum(1 for line in lines if line.startswith(f"lektrico_device,device={name},"))
        for name in ("garage", "barn", "house")
    }
    assert {r["device"] for r in power} == {"garage", "barn"}
    assert all(isinstance(r["last"], int | float) and isinstance(r["last_1"], str) for r in power)
    assert [r["device"] for r in volts] == ["house"]
    assert 200 < volts[0]["mean"] < 260
    written = {(r["_series"], r["fieldKey"]): r["fieldType"] for r in keys}
    catalogue = {key: INFLUX_TYPES[type_] for key, (type_, _) in field_table().items()}
    assert set(written) <= set(catalogue)
    assert written == {key: catalogue[key] for key in written}
    assert len(written) > 80
    # A second of polling has no down device and no day-to-day difference to show.
    needs_more = ("= false", "difference(")
    empty = [q for q, r in documented.items() if not r and not any(n in q for n in needs_more)]
    assert not empty, f"documented queries that found nothing: {empty}"


def docs_influxql() -> list[str]:
    """The InfluxQL statements of docs/influxdb.md, with the example device names of this test."""
    text = (Path(__file__).parent.parent / "docs" / "influxdb.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    statements = [s for b in blocks for s in re.split(r"\n(?=SELECT|SHOW)", b.strip())]
    assert len(statements) >= 8
    return [" ".join(s.split()) for s in statements]


# ---- a path that cannot be written, through the command line ---------------------------------


def test_an_unwritable_path_stops_the_start_with_one_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    path = locked / "points.lp"
    config = exporter_config(tmp_path, f"line_protocol: {{path: '{path}'}}\n")

    assert_one_line(run_exporter(config), 1, "line_protocol.path", str(path), "Permission")


def test_a_directory_as_path_stops_the_start_with_one_line(tmp_path: Path) -> None:
    config = exporter_config(tmp_path, f"line_protocol: {{path: '{tmp_path}'}}\n")

    assert_one_line(run_exporter(config), 1, "line_protocol.path", str(tmp_path))


def test_check_config_finds_an_unwritable_path(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    config = exporter_config(tmp_path, f"line_protocol: {{path: '{locked / 'points.lp'}'}}\n")

    result = run_exporter(config, "--check-config")

    assert_one_line(result, 2, "line_protocol.path", str(locked), "not writable")
