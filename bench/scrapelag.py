"""How late polls start while /metrics is scraped, as Prometheus scrapes it.

    .venv/bin/python -m bench.scrapelag                      # 10,000 devices, plain, store on
    .venv/bin/python -m bench.scrapelag --gzip --no-state    # as Prometheus asks, store off

Starts the simulator and the exporter as bench.run does, waits `--warm` s for the first round
and its slow methods, then for `--window` s scrapes /metrics every `--every` s (0: never) with
the client bench.run times scrapes with, and reads each poll's start from the simulator's call
log (bench.lateness). It prints the window's poll lateness, each scrape's span, and the
half-seconds whose polls started late (median over 40 ms or any over 120 ms), with the
exporter's CPU in each: where a scrape holds the event loop, its polls show there.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from bench.fleet import concurrency_for, start_simulator, write_config
from bench.lateness import lateness, starts_by_device
from bench.run import parse_args as bench_args
from bench.window import timed_scrape
from harness.processes import Processes, free_port, raise_fd_limit, start_exporter
from harness.procfs import cpu_seconds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--warm", type=float, default=150.0, help="s before the window")
    p.add_argument("--window", type=float, default=90.0, help="s")
    p.add_argument("--every", type=float, default=15.0, help="s between scrapes (0: none)")
    p.add_argument("--gzip", action="store_true", help="scrape with Accept-Encoding: gzip")
    p.add_argument("--no-state", action="store_true", help="the state store (and ledger) off")
    return p.parse_args(argv)


async def measure(opts: argparse.Namespace) -> None:
    raise_fd_limit()
    fleet_opts = bench_args([])
    out = Path(tempfile.mkdtemp(prefix="scrapelag-"))
    procs = Processes(out)
    log = out / "calls.jsonl"
    scrapes: list[tuple[float, float, int]] = []
    cpu: list[tuple[float, float]] = []
    try:
        fleet = await start_simulator(procs, opts.devices, fleet_opts, out, call_log=log)
        port = free_port()
        config = out / "exporter.json"
        concurrency = concurrency_for(opts.devices)
        write_config(config, fleet.targets, port, fleet_opts, concurrency, state=not opts.no_state)
        exporter = await start_exporter(procs, config, port, "exporter", 60 + opts.devices / 200)
        await asyncio.sleep(opts.warm)
        t0 = time.time()
        end = t0 + opts.window
        due = t0 + 5.0
        while time.time() < end:
            cpu.append((time.time(), cpu_seconds(exporter.pid)))
            if opts.every and time.time() >= due:
                began = time.time()
                _, body = await timed_scrape(f"http://127.0.0.1:{port}/metrics", opts.gzip)
                scrapes.append((began - t0, time.time() - t0, len(body)))
                due += opts.every
            await asyncio.sleep(0.25)
        await asyncio.sleep(2.0)  # the last requests reach the log
    finally:
        procs.kill_all()
    starts = starts_by_device(log, 0, t0, end)
    figures = lateness({d: list(t) for d, t in starts.items()}, fleet_opts.interval)
    print(
        f"{opts.devices} devices, store {'off' if opts.no_state else 'on'}, scrapes "
        f"{'gzip' if opts.gzip else 'plain'} every {opts.every:g} s: poll lateness p50 "
        f"{1000 * figures['p50']:.0f} ms, p99 {1000 * figures['p99']:.0f} ms, max "
        f"{1000 * figures['max']:.0f} ms ({figures['starts']} starts)"
    )
    for began, ended, size in scrapes:
        print(f"  scrape {began:6.2f}-{ended:6.2f} s, {size / 1e6:.1f} MB")
    late_by_bucket(starts, t0, cpu, fleet_opts.interval)


def late_by_bucket(
    starts: dict[str, list[float]], t0: float, cpu: list[tuple[float, float]], interval: float
) -> None:
    """Each start against the same device's start an interval before, by half-second."""
    excess: dict[float, list[float]] = defaultdict(list)
    for times in starts.values():
        times.sort()
        for a, b in itertools.pairwise(times):
            if 0.5 * interval < b - a < 1.5 * interval:
                excess[int((b - t0) * 2) / 2].append(1000 * (b - a - interval))
    busy = {
        int((ta - t0) * 2) / 2: (cb - ca) / (tb - ta)
        for (ta, ca), (tb, cb) in itertools.pairwise(cpu)
    }
    for bucket in sorted(excess):
        late = excess[bucket]
        median = statistics.median(late)
        if median > 40 or max(late) > 120:
            print(
                f"  late at {bucket:6.1f} s: {len(late)} starts, median {median:.0f} ms, "
                f"max {max(late):.0f} ms, exporter {busy.get(bucket, 0.0):.2f} cores"
            )


def main() -> int:
    asyncio.run(measure(parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
