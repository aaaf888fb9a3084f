"""The fleet under test: the simulator CLI serving N devices, and the exporter's config for it."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import MIX
from harness.processes import PY, Processes, free_port


@dataclass
class Fleet:
    proc: subprocess.Popen[bytes]
    control: str
    targets: list[dict[str, Any]]
    start_seconds: float


async def start_simulator(
    procs: Processes,
    n: int,
    opts: argparse.Namespace,
    out: Path,
    call_log: Path | None = None,
    port: int | None = None,
    tag: str = "",
) -> Fleet:
    """The simulator serving N devices from `--sim-processes` workers, once it says so;
    `call_log` receives one JSON line per request (device, method, arrival time)."""
    targets_file = out / f"targets-{n}{tag}.yaml"
    control = f"127.0.0.1:{free_port()}"
    args = [
        PY,
        "-m",
        "exporter",
        "simulate",
        "--devices",
        str(n),
        "--mix",
        MIX,
        "--address-base",
        opts.address_base,
        "--port",
        str(opts.device_port if port is None else port),
        "--processes",
        str(min(opts.sim_processes, n)),
        "--targets-file",
        str(targets_file),
        "--control",
        control,
        "--seed",
        "1",
    ]
    if call_log is not None:
        remove(call_log)  # the simulator appends to it
        args += ["--call-log", str(call_log)]
    t0 = time.monotonic()
    name = f"simulator-{n}{tag}"
    proc = procs.start(args, name)
    if not await procs.wait_output(proc, name, b"simulating", 60 + n / 100):
        raise RuntimeError(f"simulator did not start; see {out / f'{name}.err'}")
    import yaml  # the simulator's own dependency

    targets = yaml.load(
        targets_file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    )["devices"]
    return Fleet(proc, f"http://{control}", targets, time.monotonic() - t0)


# The exporter reads config and device files of at most 4 MiB; 10,000 devices take about 1 MiB.
DEVICES_PER_FILE = 10_000


def write_device_files(path: Path, targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A large fleet goes to device files next to the config, as a user would list it; the
    devices left for the config itself are returned."""
    for old in path.parent.glob(f"{path.stem}.devices-*.json"):
        old.unlink()
    if len(targets) <= DEVICES_PER_FILE:
        return targets
    for k in range(0, len(targets), DEVICES_PER_FILE):
        chunk = {"devices": targets[k : k + DEVICES_PER_FILE]}
        path.with_name(f"{path.stem}.devices-{k // DEVICES_PER_FILE:03}.json").write_text(
            json.dumps(chunk)
        )
    return []


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def concurrency_for(n: int) -> int:
    # In flight = polls/s x latency; N // 20 leaves room for 0.75 s per poll at 15 s intervals.
    return min(max(64, n // 20), 10_000)


def write_config(
    path: Path,
    targets: list[dict[str, Any]],
    port: int,
    opts: argparse.Namespace,
    concurrency: int,
    timeout: float | None = None,
    *,
    state: bool = True,
    poll: dict[str, float] | None = None,
    shard: tuple[int, int] | None = None,
) -> None:
    """The exporter's config; `state=False` switches the state store off (no session ledger,
    no derived counters), `poll` adds poll settings, `shard` is (index, count)."""
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "devices": write_device_files(path, targets),
        "poll": {
            "interval": opts.interval,
            "timeout": min(5.0, opts.interval / 3) if timeout is None else timeout,
            "concurrency": concurrency,
            **(poll or {}),
        },
        "log": {"level": "warning"},
        # The session ledger is on, as by default; its store is the run's own, started empty.
        # Absolute: the exporter reads a relative path from the config file's directory.
        "state": {"path": str(path.with_suffix(".state.db").resolve()), "enabled": state},
    }
    if shard is not None:
        config["shard"] = {"index": shard[0], "count": shard[1]}
    if len(targets) > DEVICES_PER_FILE:
        config["device_files"] = [f"{path.stem}.devices-*.json"]
    for old in path.parent.glob(path.with_suffix(".state.db").name + "*"):
        old.unlink()
    # JSON is YAML, and far quicker to write and read for 20,000 devices.
    path.write_text(json.dumps(config))
