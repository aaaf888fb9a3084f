"""`--demo`, as a newcomer first meets the exporter: a healthy fleet next to faulty devices (one
unreachable, one timing out, one charger with an active error), on the listen address the
config asks for; and the commands config.example.yaml's header gives, run as written."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exporter.config.schema import parse_config
from exporter.demo import DEMO_LISTEN, FAULTY, demo_config, demo_specs
from exporter.simulator.server import SimulatedFleet
from harness.processes import free_port

from .conftest import fetch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def fleet() -> AsyncIterator[SimulatedFleet]:
    fleet = SimulatedFleet(demo_specs(2))
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


@pytest.mark.parametrize(
    ("config_text", "listen_given", "expected"),
    [
        # Said in the config, even when it is the default: a container's demo must listen on
        # every interface for its published port to reach it.
        ("listen: 0.0.0.0:9654\n", False, "0.0.0.0:9654"),
        ("listen: ${DEMO_TEST_UNSET:-0.0.0.0:9654}\n", False, "0.0.0.0:9654"),
        ("listen: 127.0.0.1:9700\n", False, "127.0.0.1:9700"),
        ("devices: []\n", False, DEMO_LISTEN),  # not said: loopback
        ("{}", False, DEMO_LISTEN),
        ("listen: 127.0.0.1:9701\n", True, "127.0.0.1:9701"),  # --listen, applied before
    ],
)
async def test_demo_listens_where_the_config_says(
    fleet: SimulatedFleet, config_text: str, listen_given: bool, expected: str
) -> None:
    config = parse_config(config_text)

    demo = demo_config(config, fleet, listen_given)

    assert demo.listen == expected


async def test_demo_fleet_has_the_faulty_devices_after_the_healthy_ones(
    fleet: SimulatedFleet,
) -> None:
    demo = demo_config(parse_config("{}"), fleet, False)

    names = [d.name for d in demo.devices]
    assert names == ["demo-000", "demo-001", "demo-unreachable", "demo-timeout", "demo-error"]
    assert {spec.name: spec.fault for spec in FAULTY} == {
        "demo-unreachable": "refuse",
        "demo-timeout": "hang",
        "demo-error": "none",
    }


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of `name` whose labels include `labels`."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def problems_shown(text: str) -> dict[str, bool]:
    return {
        "healthy up": all(
            sample(text, "lektrico_up", device=f"demo-00{i}") == 1.0 for i in range(3)
        ),
        "unreachable down, connect": sample(text, "lektrico_up", device="demo-unreachable") == 0
        and (
            sample(text, "lektrico_poll_errors_total", device="demo-unreachable", reason="connect")
            or 0
        )
        > 0,
        "timeout down, timeout": sample(text, "lektrico_up", device="demo-timeout") == 0
        and (
            sample(text, "lektrico_poll_errors_total", device="demo-timeout", reason="timeout") or 0
        )
        > 0,
        "error up, state E, overtemp": sample(text, "lektrico_up", device="demo-error") == 1
        and sample(text, "lektrico_charger_state", device="demo-error", state="E") == 1
        and sample(text, "lektrico_error_active", device="demo-error", error="overtemp") == 1,
    }


@pytest.mark.timeout(60)
async def test_demo_shows_unreachable_timing_out_and_erroring_devices() -> None:
    port = free_port()
    started = time.monotonic()
    proc = spawn("--demo", "3", "--listen", f"127.0.0.1:{port}")
    shown: dict[str, bool] = {}
    text = ""
    try:
        while time.monotonic() - started < 30 and not all(shown.values() or [False]):
            await asyncio.sleep(0.5)
            try:
                _, text = await fetch(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                continue
            shown = problems_shown(text)
        _, api = await fetch(f"http://127.0.0.1:{port}/api/devices?status=down")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    print(f"demo showed its faulty devices after {time.monotonic() - started:.1f}s")

    assert all(shown.values()), (shown, text[:3000])
    # The status page's own data: the unreachable and timing-out ones down, with the reason.
    down = {d["name"]: d for d in json.loads(api)["devices"]}
    assert {"demo-unreachable", "demo-timeout"} <= set(down), down
    assert all(d["error_text"] for d in down.values())
    assert "device demo-unreachable is down" in err
    assert "device demo-timeout is down" in err
    assert "Traceback" not in err


def header_commands() -> list[str]:
    """The commands in the example's opening comment block: `lektrico-exporter ...` after a
    colon and two spaces, or between backquotes."""
    out = []
    for line in (ROOT / "config.example.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        out += re.findall(r"(?::\s{2,}|`)(lektrico-exporter [^`]+?)\s*(?:`|$)", line[1:].strip())
    return out


def test_the_example_header_gives_commands() -> None:
    assert header_commands(), "config.example.yaml's header should show how to check a file"


@pytest.mark.parametrize("command", header_commands())
def test_commands_in_the_example_header_work_as_written(command: str, tmp_path: Path) -> None:
    # As the header means it: run beside a copy of the example named config.yaml.
    shutil.copy(ROOT / "config.example.yaml", tmp_path / "config.yaml")
    argv = shlex.split(command)
    assert argv[0] == "lektrico-exporter"

    result = subprocess.run(
        [sys.executable, "-m", "exporter", *argv[1:]],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr


def recipe(makefile: str, target: str) -> tuple[str, list[str]]:
    """A Makefile rule's prerequisites and recipe lines."""
    rule = re.search(rf"^{re.escape(target)}:(.*)\n((?:\t.*\n)*)", makefile, re.MULTILINE)
    assert rule is not None, target
    return rule.group(1).strip(), rule.group(2).splitlines()


def test_make_demo_installs_the_exporter_without_test_or_bench_extras() -> None:
    makefile = (ROOT / "Makefile").read_text()
    prerequisites, lines = recipe(makefile, "demo")
    _, install = recipe(makefile, prerequisites)
    pips = [line for line in install if "pip install" in line]

    assert prerequisites == "$(DEMO_VENV)/bin/.installed"
    assert any("$(DEMO_VENV)/bin/lektrico-exporter --demo" in line for line in lines)
    assert pips and all("[" not in line for line in pips), pips
