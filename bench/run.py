"""The performance benchmark: one command, every figure behind the product's performance
targets (10,000 devices a process at a 15 s interval), side by side with references.

    .venv/bin/python -m bench.run          # N = 1000, 5000, 10000, 20000 (about 17 min)
    .venv/bin/python -m bench.run --sizes 50 --interval 3 --duration 3      # a quick check

For each fleet size N, on this machine and over real loopback sockets:

1. the simulator serves N devices from `--sim-processes` worker processes, each device on its
   own 127.x.y.z address (Linux routes all of 127.0.0.0/8 to lo);
2. the exporter runs as its own process (`python -m exporter --config <generated>`) polling them
   every `--interval` seconds. The window starts once every device has finished its first,
   heavier poll (identity and slow methods), not before one full interval and not later than
   `--settle-timeout` after the exporter is ready (a window started unsettled says so). Over the
   `--duration` s window: polls/s and the share on time (lektrico_polls_total,
   lektrico_polls_late_total), the exporter's CPU seconds per 1,000 polls and RSS (/proc),
   HTTP requests per device per poll (lektrico_device_requests_total, checked against the
   simulator's own call counts), and the load of the machine;
3. `/metrics` is scraped up to `--scrapes` times plain and as many gzip, timed client-side by
   a client that reads as Prometheus does (http.client in a thread, large reads);
   `/probe` takes a burst of `--probe-requests` requests (at most `--probe-seconds`) at
   concurrency 16, by device address (host:port);
4. the exporter stops and the floor runs: a bare aiohttp client in its own process, on the
   exporter's runtime (uvloop, the same GC settings), fetching each device's main method
   (Charger_info.Get, or Meter_info.Get for meters) from the same devices, one connection per
   request as a 15 s poller needs, and json.loads of each reply: flat out at the same
   concurrency for the same duration, then paced at the exporter's own rate (N / interval);
   then the exporter polls flat out (the same devices due every max(0.2, N / 8000) s, more
   than it can poll) for its capacity, the figure to put beside the floor flat out;
5. in this process, on the samples of the last plain scrape: a prometheus_client registry of
   Gauges and Counters holding the same samples, rendered with generate_latest; the exporter's
   own Exposition fed the same samples, rendered the same way (no HTTP, no polls competing);
   and exporter.outputs.influx.lines.Serializer on the same samples as Readings.

Around the sizes: before them, the first poll's requests of each kind of device, on default
profiles and on firmware lacking every optional method (`--first-poll`), and the requests a
poll counted by the devices over one whole identity interval, the intervals scaled down in the
product's ratios (`--cadence-devices`, `--cadence-interval`); for each size in `--state-off`,
the window again with the state store off, for the session ledger's cost; after them, with
`--shards N`, N devices over `--shard-count` exporter replicas; last (`--ends`), the small end
(bench.small) and the status page's data (bench.status_api), each in its own process. The poll
lateness of every window comes from the simulator's call log (bench.lateness).

RSS per device is (RSS at the end of the window - RSS of the same exporter with no devices) / N.
Every loop is bounded in count and time; every process started here is stopped at the end, also
on Ctrl-C, SIGTERM or an error. Traffic goes only to 127.0.0.0/8. Results: a table per N, a
verdict per target, bench/out/results.json and docs/performance.png. `--profile` also samples the
exporter with py-spy (if installed) for `--profile-seconds` after each window, outside it, and
ranks the exporter/*.py functions.

This module is the command and its order of work; bench.measure takes the measurements (with
bench.window, bench.fleet, bench.floor, bench.references and bench.pyspy), bench.stateoff,
bench.perpoll and bench.shards the other phases; bench.report and bench.report_phases print
them and judge the targets, bench.plot draws the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import aiohttp

from bench.ends import ends_phase
from bench.measure import exporter_baseline_rss, measure_size
from bench.perpoll import cadence_phase, first_poll_budget
from bench.plot import plot
from bench.report import Verdict, fmt_bytes, machine_info, print_size, print_summary, verdicts
from bench.report_phases import phase_verdicts, print_phases
from bench.results import MIX, PROBE_CONCURRENCY, TARGET_N, SizeResult
from bench.shards import shards_phase
from harness.processes import ROOT, Processes, raise_fd_limit
from harness.procfs import loadavg

DEFAULT_SIZES = (1000, 5000, 10000, 20000)


async def run(opts: argparse.Namespace, procs: Processes) -> int:
    out = Path(opts.out)
    started = time.time()
    machine = machine_info()
    print(
        f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_gib']} GiB, Python {machine['python']}; code {machine['code']}; "
        f"load average {loadavg():.2f}; open files limit {raise_fd_limit()}",
        flush=True,
    )
    results: list[SizeResult] = []
    phases: dict[str, Any] = {}
    timings: dict[str, float] = {}
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("Accept-Encoding",)
    ) as session:
        baseline = await exporter_baseline_rss(procs, opts, out, session)
        print(f"exporter with 0 devices: RSS {fmt_bytes(baseline)}", flush=True)
        if opts.first_poll:
            t0 = time.monotonic()
            print("\n... the first poll of each kind of device", flush=True)
            phases["first_poll"] = await first_poll_budget(procs, out, session)
            timings["first poll"] = round(time.monotonic() - t0, 1)
        if opts.cadence_devices:
            t0 = time.monotonic()
            print("\n... requests a poll over one identity interval, scaled down", flush=True)
            phases["cadence"] = await cadence_phase(opts, procs, out, session)
            timings["cadence"] = round(time.monotonic() - t0, 1)
        for n in opts.sizes:
            print(f"\n... N = {n:,}: starting the simulator", flush=True)
            res = await measure_size(n, opts, procs, out, session, baseline)
            res.rss_per_device_bytes = (res.rss_bytes - baseline) / n
            results.append(res)
            print_size(res)
        if opts.shards:
            t0 = time.monotonic()
            print(f"\n... {opts.shards:,} devices over shard replicas", flush=True)
            phases["shards"] = await shards_phase(opts, procs, out, session, baseline)
            timings["shards"] = round(time.monotonic() - t0, 1)
    ends: dict[str, str] = {}
    if opts.ends:
        t0 = time.monotonic()
        ends = await ends_phase()
        timings["small end and status page"] = round(time.monotonic() - t0, 1)
    verdict_list = summarise(results, phases, Path(opts.plot))
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 1),
        "machine": machine,
        "settings": {
            "interval": opts.interval,
            "duration": opts.duration,
            "mix": MIX,
            "sim_processes": opts.sim_processes,
            "timeout": min(5.0, opts.interval / 3),
            "probe_concurrency": PROBE_CONCURRENCY,
        },
        "baseline_rss_bytes": baseline,
        "phase_seconds": timings,
        "sizes": [asdict(r) for r in results],
        "phases": phases,
        "ends": ends,
        "targets": [asdict(v) for v in verdict_list],
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    drawn = f" and {opts.plot}" if results else ""
    print(f"\nwrote {out / 'results.json'}{drawn} in {time.time() - started:.0f} s")
    return 0


def summarise(results: list[SizeResult], phases: dict[str, Any], plot_path: Path) -> list[Verdict]:
    """Print the summary, the other phases and every verdict; redraw the plot."""
    verdict_list = verdicts(results) if results else []
    print_phases(results, phases)
    verdict_list += phase_verdicts(results, phases)
    print_summary(results, verdict_list)
    if results:
        plot(results, plot_path)
    return verdict_list


def report_again(path: Path, plot_path: Path) -> int:
    """Print the tables and verdicts of a saved results.json again and redraw its plot."""
    report = json.loads(path.read_text())
    known = {f.name for f in fields(SizeResult)}
    results = [
        SizeResult(**{k: v for k, v in size.items() if k in known}) for size in report["sizes"]
    ]
    print(f"from {path}: {report['command']} at {report['started']}; machine {report['machine']}")
    for res in results:
        print_size(res)
    for heading, text in report.get("ends", {}).items():
        print(f"\n== {heading} ==\n{text}", end="")
    verdict_list = summarise(results, report.get("phases", {}), plot_path)
    report["targets"] = [asdict(v) for v in verdict_list]
    path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        help="fleet sizes, comma-separated (default 1000,5000,10000,20000)",
    )
    p.add_argument("--interval", type=float, default=15.0, help="poll interval, s (default 15)")
    p.add_argument(
        "--duration",
        type=float,
        default=40.0,
        help="steady-state window per size (rounded up to whole intervals: 45 s at 15 s),"
        " and the floor's run, s (default 40)",
    )
    p.add_argument("--sim-processes", type=int, default=4, help="simulator worker processes")
    p.add_argument(
        "--address-base",
        default="127.200.0.1",
        help="first device address, inside 127.0.0.0/8 (default 127.200.0.1)",
    )
    p.add_argument("--device-port", type=int, default=18080, help="port of every device")
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=240.0,
        help="start the window at the latest this many seconds after the exporter is ready,"
        " even if some devices have not finished their first poll and slow methods"
        " (default 240)",
    )
    p.add_argument("--scrapes", type=int, default=20, help="scrapes of each kind (default 20)")
    p.add_argument(
        "--scrape-budget",
        type=float,
        default=30.0,
        help="stop scraping after this many seconds (default 30)",
    )
    p.add_argument(
        "--capacity-seconds",
        type=float,
        default=15.0,
        help="window of the flat-out capacity run, s (default 15)",
    )
    p.add_argument(
        "--capacity-warmup",
        type=float,
        default=8.0,
        help="wait at least this long before that window, and then until the fleet is steady"
        " (at most --settle-timeout), s (default 8)",
    )
    p.add_argument("--probe-requests", type=int, default=3000)
    p.add_argument("--probe-seconds", type=float, default=8.0)
    p.add_argument(
        "--reference-reps",
        type=int,
        default=5,
        help="generate_latest runs, median taken (default 5)",
    )
    p.add_argument(
        "--reference-budget",
        type=float,
        default=10.0,
        help="stop repeating a reference after this many seconds (default 10)",
    )
    p.add_argument(
        "--profile", action="store_true", help="sample the exporter with py-spy after each window"
    )
    p.add_argument("--profile-seconds", type=float, default=20.0)
    p.add_argument("--out", default=str(ROOT / "bench" / "out"), help="logs and results.json")
    p.add_argument(
        "--from-results",
        metavar="JSON",
        help="measure nothing: print the tables and verdicts of a results.json and redraw the plot",
    )
    p.add_argument("--plot", default=str(ROOT / "docs" / "performance.png"))
    p.add_argument(
        "--state-off",
        default=str(TARGET_N),
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        help="sizes measured once more with the state store off, for the session ledger's"
        f" cost (default {TARGET_N}; empty for none)",
    )
    p.add_argument(
        "--cadence-devices",
        type=int,
        default=200,
        help="devices of the requests-a-poll phase over one identity interval (0: skip it;"
        " default 200)",
    )
    p.add_argument(
        "--cadence-interval",
        type=float,
        default=0.25,
        help="its poll interval; slow and identity intervals 40x and 240x it (default 0.25)",
    )
    p.add_argument(
        "--ends",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the fleets, the small end (bench.small) and the status page's data"
        " (bench.status_api), each in its own process (default on)",
    )
    p.add_argument(
        "--first-poll",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count the requests of each kind of device's first poll (default on)",
    )
    p.add_argument(
        "--shards",
        type=int,
        default=0,
        metavar="N",
        help="after the sizes, N devices over --shard-count exporter replicas (default off)",
    )
    p.add_argument(
        "--shard-count",
        type=int,
        default=0,
        help="replicas of the --shards phase (default: one a core)",
    )
    opts = p.parse_args(argv)
    address = ipaddress.IPv4Address(opts.address_base)
    last = address + max([*opts.sizes, opts.shards, opts.cadence_devices]) - 1
    if not (address.is_loopback and last.is_loopback):
        p.error("--address-base: every device address must be inside 127.0.0.0/8")
    if not (opts.sizes or opts.shards or opts.cadence_devices or opts.first_poll):
        p.error("nothing to measure: no --sizes and every other phase off")
    if min(opts.sizes, default=1) < 1 or opts.cadence_devices < 0:
        p.error("--sizes and --cadence-devices must be positive")
    if opts.duration <= 0 or opts.interval <= 0 or opts.shards < 0:
        p.error("--duration and --interval must be positive")
    return opts


def interrupt(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM end the run through the cleanup in `main`."""
    raise KeyboardInterrupt


def main(argv: Sequence[str]) -> int:
    opts = parse_args(argv)
    if opts.from_results:
        return report_again(Path(opts.from_results), Path(opts.plot))
    Path(opts.out).mkdir(parents=True, exist_ok=True)
    raise_fd_limit()
    procs = Processes(Path(opts.out))
    import atexit

    atexit.register(procs.kill_all)
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored (&)
        signal.signal(sig, interrupt)

    async def guarded() -> int:
        try:
            return await run(opts, procs)
        finally:
            await asyncio.shield(procs.stop_all())

    try:
        return asyncio.run(guarded())
    except KeyboardInterrupt:
        print("\ninterrupted; every process started here was stopped", file=sys.stderr)
        return 130
    finally:
        procs.kill_all()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
