"""The small end: one charger on a small board. Prints what a home owner's exporter costs.

    .venv/bin/python -m bench.small              # about 75 s
    .venv/bin/python -m bench.small --idle 30    # a shorter idle window

Figures, each beside its target:
- RSS of an exporter with one device and no InfluxDB, after it settled, and of a bare Python
  process that imports the same runtime libraries (measured in the same run);
- time from start to the first answered `/metrics`, and to the first reading of a small fleet
  (three devices) in it;
- CPU while idle with one device polled every 15 s, as a share of one core;
- which optional libraries the process imported (none should be, unconfigured).

The exporter's modules are byte-compiled first, as pip does when it installs them: with
PYTHONDONTWRITEBYTECODE set (as in the image, and on this development machine) a source
checkout would otherwise compile every module at each start, which an installed exporter never
does (about 1 MiB of RSS and a tenth of a second of start-up more).
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from exporter.simulator.server import DeviceSpec, SimulatedFleet
from harness.processes import ROOT, Processes, free_port
from harness.procfs import cpu_seconds, rss_bytes

RUNTIME = "import aiohttp, aiohttp.web, orjson, yaml, prometheus_client"
OPTIONAL = ("influxdb_client", "zeroconf", "bcrypt", "exporter.simulator", "matplotlib")


def get(url: str, timeout: float = 1.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


async def first_metrics(port: int, want: str, started: float, limit: float = 10.0) -> float:
    """Seconds from `started` until /metrics answers and contains `want`."""
    url = f"http://127.0.0.1:{port}/metrics"
    while time.monotonic() - started < limit:
        body = await asyncio.to_thread(get, url, 0.5)
        if body is not None and want in body:
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    return float("nan")


def write_config(path: Path, fleet: SimulatedFleet, names: list[str], port: int) -> None:
    devices = [{"name": n, "host": fleet.host(n)} for n in names]
    path.write_text(
        json.dumps(
            {
                "listen": f"127.0.0.1:{port}",
                "devices": devices,
                "poll": {"interval": "15s", "timeout": "5s"},
                "state": {"path": str(path.with_suffix(".db"))},
                "log": {"level": "warning"},
            }
        )
    )


async def main(args: argparse.Namespace) -> int:
    compileall.compile_dir(ROOT / "exporter", quiet=1)  # __pycache__ is not committed
    print(f"exporter from {ROOT / 'exporter'}, byte-compiled", flush=True)
    work = Path(tempfile.mkdtemp(prefix="lektrico-small-"))
    procs = Processes(work)
    fleet = SimulatedFleet([DeviceSpec(f"c{i}", "1p7k") for i in range(3)])
    await fleet.start()
    try:
        # 1. A small fleet: first /metrics, and its first readings in it.
        port = free_port()
        write_config(work / "three.json", fleet, fleet.names, port)
        t0 = time.monotonic()
        proc = procs.start(
            [sys.executable, "-m", "exporter", "--config.file", str(work / "three.json")],
            "three",
        )
        answered = await first_metrics(port, "lektrico_exporter_build_info", t0)
        readings = await first_metrics(port, 'lektrico_up{device="c2"} 1', t0)
        await procs.stop(proc)

        # 2. One device, settled: RSS, idle CPU, modules.
        port = free_port()
        write_config(work / "one.json", fleet, ["c0"], port)
        proc = procs.start(
            [sys.executable, "-m", "exporter", "--config.file", str(work / "one.json")], "one"
        )
        await first_metrics(port, 'lektrico_up{device="c0"} 1', time.monotonic())
        await asyncio.sleep(5)  # the slow methods of the first polls are in
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(args.idle)
        idle = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - wall0)
        rss = rss_bytes(proc.pid)
        await procs.stop(proc)

        # 3. The floor: a bare Python with the same runtime libraries, idle.
        bare = procs.start(
            [sys.executable, "-c", f"{RUNTIME}\nimport time\ntime.sleep(60)"], "bare"
        )
        await asyncio.sleep(3)
        bare_rss = rss_bytes(bare.pid)
        procs.kill(bare)

        probe = (
            "import sys, json\nimport exporter.cli, exporter.app\n"
            f"opt = {OPTIONAL!r}\n"
            "print(json.dumps(sorted({m.split('.')[0] if not m.startswith('exporter.')"
            " else '.'.join(m.split('.')[:2]) for m in sys.modules"
            " if m.split('.')[0] in opt or m.startswith(opt)})))"
        )
        loaded = procs.start([sys.executable, "-c", probe], "modules")
        loaded.wait(30)
        imported = json.loads(procs.output("modules") or b"[]")
    finally:
        await procs.stop_all()
        await fleet.stop()

    mib = 1024 * 1024
    rows = [
        ("exporter, 1 device, no InfluxDB: RSS", f"{rss / mib:.1f} MiB", "<= 45 MiB"),
        ("bare Python with the same libraries: RSS", f"{bare_rss / mib:.1f} MiB", ""),
        ("exporter / bare", f"{rss / bare_rss:.2f}", "<= 1.15"),
        ("first /metrics after start", f"{answered:.2f} s", "<= 0.5 s"),
        ("3 devices' first readings in /metrics", f"{readings:.2f} s", "<= 1 s"),
        (f"idle CPU, 1 device at 15 s ({args.idle:.0f} s)", f"{idle * 100:.3f} %", "<= 0.1 %"),
        ("optional libraries imported at start", ", ".join(imported) or "none", "none"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'measured':>16}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>16}  {target}")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=60.0, help="idle window, seconds")
    return asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(cli())
