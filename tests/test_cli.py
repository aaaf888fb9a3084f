"""The command line as a user runs it: exit codes, one-line errors, --once, --demo, SIGHUP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.cli import GC_THRESHOLDS, UVLOOP_FROM, main
from exporter.demo import FAULTY
from exporter.simulator.server import DeviceSpec
from harness.processes import free_port

from .conftest import FleetFactory, fetch

ROOT = Path(__file__).parent.parent
BAD = sorted((Path(__file__).parent / "configs" / "bad").glob("*.yaml"))


def expectation(path: Path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0].decode()
    assert first.startswith("# expect: "), f"{path.name} lacks an '# expect:' line"
    return first.removeprefix("# expect: ").strip()


def test_example_config_checks_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(ROOT / "config.example.yaml"), "--check-config"]) == 0
    assert "config OK" in capsys.readouterr().out


def test_bad_config_corpus_is_big_enough() -> None:
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config_exits_2_with_one_line(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEKTRICO_TEST_UNSET", raising=False)
    code = main(["--config", str(path), "--check-config"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("lektrico-exporter: config error: ")
    assert expectation(path) in err


def test_missing_config_file_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", "/nonexistent/config.yml", "--check-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/nonexistent/config.yml" in err


def test_bad_shard_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--shard", "3/3", "--check-config"]) == 2
    assert "--shard" in capsys.readouterr().err


async def test_once_prints_one_device(
    make_fleet: FleetFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "3p22k")], frozen=True)
    code = await asyncio.to_thread(main, ["--once", fleet.host("c1")])
    out = capsys.readouterr().out
    assert code == 0
    assert 'lektrico_up{device="' in out and " 1\n" in out
    assert 'lektrico_current_amperes{device="' in out and 'phase="L3"' in out


async def test_once_reports_a_dead_device(capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(main, ["--once", f"127.0.0.1:{free_port()}"])
    captured = capsys.readouterr()
    assert code == 1
    assert "is down: connect:" in captured.err and captured.err.count("\n") == 1
    assert "lektrico_up" in captured.out


@pytest.mark.parametrize(
    "target", ["127.0.0.1@10.0.0.1", "http://u:p@127.0.0.1", "[fd00::1%eth0]:80", "host/path"]
)
def test_once_refuses_a_target_that_is_not_an_address(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--once", target]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--once" in err


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def wait_devices_up(port: int, count: int, seconds: float, down: int = 0) -> str:
    deadline = time.monotonic() + seconds
    text = ""
    while time.monotonic() < deadline:
        try:
            _, text = await fetch(f"http://127.0.0.1:{port}/metrics")
        except OSError:
            text = ""
        up = [line for line in text.splitlines() if line.startswith("lektrico_up{")]
        if len(up) == count and sum(line.endswith("} 0") for line in up) == down:
            return text
        await asyncio.sleep(0.2)
    raise AssertionError(f"{count} devices not up in {seconds}s:\n{text[:2000]}")


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    return proc.returncode, err


async def test_demo_serves_a_mixed_fleet() -> None:
    port = free_port()
    proc = spawn("--demo", "6", "--listen", f"127.0.0.1:{port}")
    try:
        # The six, and the demo's faulty devices (tests/test_demo.py), which stay down.
        text = await wait_devices_up(port, 6 + len(FAULTY), seconds=15, down=2)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    for model in ("1p7k", "3p22k", "em", "3em"):
        assert f'model="{model}"' in text
    assert "Traceback" not in err


async def test_sighup_reloads_the_config(tmp_path: Path, make_fleet: FleetFactory) -> None:
    fleet = await make_fleet([DeviceSpec("a", "1p7k"), DeviceSpec("b", "em")])
    port = free_port()
    path = tmp_path / "config.yml"

    def write(names: list[str]) -> None:
        devices = [{"name": n, "host": fleet.host(n)} for n in names]
        path.write_text(
            f"listen: '127.0.0.1:{port}'\ndevices: {json.dumps(devices)}\n"
            "poll: {interval: 500ms, timeout: 300ms}\n"
        )

    write(["a"])
    proc = spawn("--config", str(path))
    try:
        await wait_devices_up(port, 1, seconds=10)
        write(["a", "b"])
        proc.send_signal(signal.SIGHUP)
        await wait_devices_up(port, 2, seconds=10)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "config reloaded: 2 devices" in err and "Traceback" not in err


def python_output(code: str, variable: str, set_it: bool) -> str:
    """What `python -c code` prints, with the environment `variable` set to 1 or unset."""
    env = {k: v for k, v in os.environ.items() if k != variable}
    if set_it:
        env[variable] = "1"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=ROOT
    ).stdout


@pytest.mark.parametrize("default_gc", [False, True])
def test_runtime_tunes_the_garbage_collector_unless_told_not_to(default_gc: bool) -> None:
    code = (
        "import gc\n"
        "from exporter.cli import run\n"
        "async def main(): return gc.get_threshold(), gc.get_freeze_count() > 0\n"
        "print(repr(run(main())))\n"
    )
    out = python_output(code, "LEKTRICO_DEFAULT_GC", default_gc).strip()

    assert out == repr(((700, 10, 10), False) if default_gc else (GC_THRESHOLDS, True))


@pytest.mark.parametrize(
    ("devices", "no_uvloop", "loop"),
    [
        (1, False, "asyncio"),
        (UVLOOP_FROM - 1, False, "asyncio"),
        (UVLOOP_FROM, False, "uvloop"),
        (UVLOOP_FROM, True, "asyncio"),
    ],
)
def test_a_small_fleet_runs_on_the_standard_loop_and_a_large_one_on_uvloop(
    devices: int, no_uvloop: bool, loop: str
) -> None:
    code = (
        "import asyncio, sys\n"
        "from exporter.cli import run\n"
        "async def main(): return type(asyncio.get_running_loop()).__module__.split('.')[0]\n"
        f"print(run(main(), {devices}), 'uvloop' in sys.modules)\n"
    )
    out = python_output(code, "LEKTRICO_NO_UVLOOP", no_uvloop).split()

    assert out == [loop, str(loop == "uvloop")]
