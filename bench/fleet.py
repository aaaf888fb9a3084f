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


async def start_simulator(procs: Processes, n: int, opts: argparse.Namespace, out: Path) -> Fleet:
    """The simulator serving N devices from `--sim-processes` workers, once it says so."""
    targets_file = out / f"targets-{n}.yaml"
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
        str(opts.device_port),
        "--processes",
        str(min(opts.sim_processes, n)),
        "--targets-file",
        str(targets_file),
        "--control",
        control,
        "--seed",
        "1",
    ]
    t0 = time.monotonic()
    name = f"simulator-{n}"
    proc = procs.start(args, name)
    if not await procs.wait_output(proc, name, b"simulating", 60 + n / 100):
        raise RuntimeError(f"simulator did not start; see {out / f'{name}.err'}")
    import yaml  # the simulator's own dependency

    targets = yaml.load(
        targets_file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    )["devices"]
    return Fleet(proc, f"http://{control}", targets, time.monotonic() - t0)


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
) -> None:
    config = {
        "listen": f"127.0.0.1:{port}",
        "devices": targets,
        "poll": {
            "interval": opts.interval,
            "timeout": min(5.0, opts.interval / 3) if timeout is None else timeout,
            "concurrency": concurrency,
        },
        "log": {"level": "warning"},
        # The session ledger is on, as by default; its store is the run's own, started empty.
        "state": {"path": str(path.with_suffix(".state.db"))},
    }
    for old in path.parent.glob(path.with_suffix(".state.db").name + "*"):
        old.unlink()
    # JSON is YAML, and far quicker to write and read for 20,000 devices.
    path.write_text(json.dumps(config))
