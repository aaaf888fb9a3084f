"""Command-line flags as Prometheus exporters spell them, and today's spellings as aliases."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.simulator.server import DeviceSpec
from harness.processes import free_port

from .conftest import FleetFactory, fetch
from .test_cli import spawn, stop


def write_config(path: Path, body: str) -> str:
    path.write_text(body)
    return str(path)


@pytest.mark.parametrize("config_flag", ["--config.file", "--config", "-c"])
@pytest.mark.parametrize("check_flag", ["--config.check", "--check-config"])
def test_config_file_and_check_flags_and_their_aliases(
    tmp_path: Path, config_flag: str, check_flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path / "c.yml", "devices: [{name: a, host: 10.0.0.1}]\n")
    assert main([config_flag, path, check_flag]) == 0
    assert "config OK: 1 devices" in capsys.readouterr().out
    bad = write_config(tmp_path / "bad.yml", "devices: [{name: a, hots: 10.0.0.1}]\n")
    assert main([config_flag, bad, check_flag]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_hosts_as_arguments_need_no_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config.check", "192.168.1.50", "http://192.168.1.51:8080"]) == 0
    assert "config OK: 2 devices" in capsys.readouterr().out
    assert main(["--config.check", "192.168.1.50/x"]) == 2
    assert "command line" in capsys.readouterr().err


@pytest.mark.parametrize("level", ["debug", "info", "warn", "warning", "error"])
def test_log_level_accepts_warn_like_prometheus(
    level: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--log.level", level, "--config.check"]) == 0


def test_telemetry_path_must_be_a_path_of_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("metrics", "/probe", "/"):
        assert main(["--web.telemetry-path", bad, "--config.check"]) == 2
        assert "--web.telemetry-path" in capsys.readouterr().err


async def test_several_listen_addresses_a_telemetry_path_and_json_logs(
    make_fleet: FleetFactory, tmp_path: Path
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k")], frozen=True)
    first, second = free_port(), free_port()
    config = write_config(tmp_path / "c.yml", "poll: {interval: 1s, timeout: 500ms}\n")
    dead = f"127.0.0.1:{free_port()}"
    proc = spawn(
        fleet.host("c1"),
        dead,
        "--config.file",
        config,
        "--web.listen-address",
        f"127.0.0.1:{first}",
        "--listen",
        f"127.0.0.1:{second}",
        "--web.telemetry-path",
        "/lektrico/metrics",
        "--log.format",
        "json",
        "--log.level",
        "debug",
    )
    try:
        for _ in range(100):
            try:
                status, text = await fetch(f"http://127.0.0.1:{second}/lektrico/metrics")
                if "lektrico_up{" in text and "lektrico_device_info{" in text:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.1)
        assert status == 200 and f'device="{fleet.host("c1")}"' in text
        assert "process_resident_memory_bytes" in text and "python_info" in text
        assert "lektrico_config_last_reload_successful 1.0" in text
        status, _ = await fetch(f"http://127.0.0.1:{first}/lektrico/metrics")
        assert status == 200
        assert (await fetch(f"http://127.0.0.1:{first}/metrics"))[0] == 404
    finally:
        code, err = stop(proc)
    assert code == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    # Device, method, reason and duration are fields of their own, not only words in msg.
    down = [line for line in lines if line.get("device") == dead and line["level"] == "warning"]
    assert down and down[0]["reason"] == "connect" and down[0]["method"], down
    replies = [line for line in lines if line.get("device") == fleet.host("c1") and "bytes" in line]
    assert replies and all(line["method"].endswith(".Get") for line in replies)
    failed = [line for line in lines if line.get("device") == dead and "duration" in line]
    assert failed and failed[0]["level"] == "debug"


async def test_a_rejected_reload_shows_in_the_metrics(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yml"
    path.write_text(f"listen: '127.0.0.1:{port}'\ndevices: []\n")
    proc = spawn("--config.file", str(path))
    try:
        for _ in range(100):
            try:
                _, text = await fetch(f"http://127.0.0.1:{port}/metrics")
                break
            except OSError:
                await asyncio.sleep(0.1)
        assert "lektrico_config_last_reload_successful 1.0" in text
        path.write_text("devices: {{{\n")
        proc.send_signal(1)  # SIGHUP
        for _ in range(100):
            _, text = await fetch(f"http://127.0.0.1:{port}/metrics")
            if "lektrico_config_last_reload_successful 0.0" in text:
                break
            await asyncio.sleep(0.1)
        assert "lektrico_config_last_reload_successful 0.0" in text
        assert "lektrico_config_last_reload_success_timestamp_seconds" in text
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "reload rejected" in err


def test_every_flag_is_in_the_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--config.file",
        "--config.check",
        "--web.listen-address",
        "--web.config.file",
        "--web.telemetry-path",
        "--log.level",
        "--log.format",
        "--once",
        "--demo",
        "--shard",
        "--health-check",
    ):
        assert flag in out, flag
