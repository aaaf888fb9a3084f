"""`kill -9` of the exporter at random moments while chargers charge: after the restarts the
store holds every session the simulator generated exactly once, whole, with its energy."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exporter.sessions.store import Store
from exporter.simulator.server import DeviceSpec, SimulatedFleet
from harness.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
SPEED = 200.0  # a downtime (at most ~1.8 s) is shorter than any whole session (365 s simulated)
CHARGERS = [
    DeviceSpec(f"ev-{i}", ("1p7k", "3p22k", "1p7k-old")[i % 3], seed=70 + i) for i in range(9)
]


def write_config(tmp_path: Path, fleet: SimulatedFleet, state: Path) -> Path:
    devices = [{"name": n, "host": fleet.host(n)} for n in fleet.names]
    path = tmp_path / "config.yaml"
    path.write_text(
        "\n".join(
            [
                f"listen: '127.0.0.1:{free_port()}'",
                "devices: " + json.dumps(devices),
                "poll: {interval: 250ms, timeout: 200ms}",
                f"state: {{path: '{state}'}}",
                "log: {level: warning}",
            ]
        )
    )
    return path


def spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, "LEKTRICO_NO_UVLOOP": "1"},
        )


async def wait(proc: subprocess.Popen[bytes]) -> int:
    return await asyncio.to_thread(proc.wait, 20)


@pytest.mark.timeout(240)
async def test_kill_9_at_random_moments_loses_duplicates_and_splits_no_session(
    tmp_path: Path,
) -> None:
    rng = random.Random(20261202)
    state = tmp_path / "state.db"
    log = tmp_path / "exporter.log"
    async with SimulatedFleet(CHARGERS, speed=SPEED) as fleet:
        config = write_config(tmp_path, fleet, state)
        began = fleet.clock.unix(fleet.clock.now())
        kills = 0
        for _ in range(10):
            proc = spawn(config, log)
            await asyncio.sleep(rng.uniform(2.0, 6.0))
            assert proc.poll() is None, log.read_text()[-2000:]
            proc.send_signal(signal.SIGKILL)
            assert await wait(proc) == -signal.SIGKILL
            kills += 1
            await asyncio.sleep(rng.uniform(0.0, 1.0))
        proc = spawn(config, log)
        await asyncio.sleep(5.0)
        proc.send_signal(signal.SIGTERM)
        assert await wait(proc) == 0, log.read_text()[-2000:]
        ended = fleet.clock.unix(fleet.clock.now())
        truth: list[dict[str, Any]] = []
        for name in fleet.names:
            truth += [
                {**s, "device": name}
                for s in fleet.generated_sessions(name)
                if s["end"] is not None and s["start"] > began and s["end"] < ended - 3.0
            ]
    store = Store(str(state))
    store.open()
    stored = store.sessions()
    store.close()
    by_id: dict[tuple[str, int | None], list[Any]] = {}
    for s in stored:
        by_id.setdefault((s.device, s.session_id), []).append(s)

    assert kills == 10
    assert len(truth) >= 8
    duplicated = {key: len(found) for key, found in by_id.items() if len(found) > 1}
    assert duplicated == {}, "a session recorded twice or split"
    for want in truth:
        found = by_id.get((want["device"], want["session_id"]), [])
        assert len(found) == 1, f"{want['device']} session {want['session_id']} lost"
        assert not found[0].open
        assert abs(found[0].energy_wh - want["wh"]) <= 1.0, (found[0], want)
    assert "Traceback" not in log.read_text()
