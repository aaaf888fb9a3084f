"""The exporter's RSS under plain scrapes of a large fleet, and what its heap holds unused.

    .venv/bin/python -m bench.scraperss                 # 10,000 devices, 60 s of scrapes
    .venv/bin/python -m bench.scraperss --devices 2000 --seconds 30

The simulator serves `--devices` devices, the exporter (bench.run's config: ledger on, 15 s
interval) polls them, and once the first round is done this scrapes /metrics plain every
`--every` s for `--seconds` s on one kept-alive connection, as Prometheus does, printing the
exporter's RSS after each scrape. Then, where gdb is installed, it stops the
exporter for one malloc_trim(0) of its own and prints what that gave back (what the exporter
left in its heap) and its CPU time, from clock() either side, and the RSS a scrape interval
later (whether the pages come back as the allocator reuses them).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp

from bench.fleet import concurrency_for, start_simulator, write_config
from bench.run import parse_args as bench_args
from harness.processes import Processes, free_port, raise_fd_limit, start_exporter
from harness.procfs import rss_bytes


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=60.0, help="of scrapes (default 60)")
    p.add_argument("--every", type=float, default=3.0, help="s between scrapes (default 3)")
    p.add_argument("--settle", type=float, default=60.0, help="s before the first scrape")
    p.add_argument("--out", default="bench/out/scraperss")
    return p.parse_args()


def gdb_trim(pid: int) -> tuple[int, float] | None:
    """(bytes given back, CPU seconds) of one malloc_trim(0) run in the stopped process."""
    if shutil.which("gdb") is None:
        return None
    before = rss_bytes(pid)
    result = subprocess.run(
        [
            *("gdb", "-p", str(pid), "-batch"),
            *("-ex", "p (long)clock()", "-ex", "call (int)malloc_trim(0)"),
            *("-ex", "p (long)clock()"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    clocks = [int(v) for v in re.findall(r"^\$\d+ = (-?\d+)$", result.stdout, re.M)]
    if len(clocks) != 3:
        return None
    return before - rss_bytes(pid), (clocks[2] - clocks[0]) / 1e6


async def main(opts: argparse.Namespace, out: Path) -> None:
    print(f"{opts.devices:,} devices, plain /metrics every {opts.every:g} s for {opts.seconds:g} s")
    settings = bench_args(["--sizes", str(opts.devices), "--out", str(out)])
    procs = Processes(out)
    try:
        fleet = await start_simulator(procs, opts.devices, settings, out)
        port, config = free_port(), out / f"exporter-{opts.devices}.json"
        write_config(config, fleet.targets, port, settings, concurrency_for(opts.devices))
        exporter = await start_exporter(procs, config, port, "exporter", 120)
        await asyncio.sleep(opts.settle)
        url = f"http://127.0.0.1:{port}/metrics"
        rss = []
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            end = time.monotonic() + opts.seconds
            while time.monotonic() < end:
                async with session.get(url, headers={"Accept-Encoding": "identity"}) as resp:
                    await resp.read()
                await asyncio.sleep(0.5)
                rss.append(rss_bytes(exporter.pid))
                await asyncio.sleep(max(0.0, opts.every - 0.5))
        mb = [f"{r / 1e6:.0f}" for r in rss]
        print(f"RSS after each scrape, MB: {' '.join(mb)}")
        print(f"  last {rss[-1] / 1e6:.1f} MB, most {max(rss) / 1e6:.1f} MB", flush=True)
        trimmed = gdb_trim(exporter.pid)
        if trimmed is None:
            print("  gdb not found or not allowed: what a trim leaves is not measured")
        else:
            given, cpu = trimmed
            print(f"  one malloc_trim now: {given / 1e6:.1f} MB given back, {1000 * cpu:.1f} ms")
            await asyncio.sleep(opts.every)
            later = rss_bytes(exporter.pid) / 1e6
            print(f"  RSS {opts.every:g} s later, polls going on: {later:.1f} MB")
    finally:
        await procs.stop_all()


if __name__ == "__main__":
    options = parse_args()
    out_dir = Path(options.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    raise_fd_limit()
    asyncio.run(main(options, out_dir))
