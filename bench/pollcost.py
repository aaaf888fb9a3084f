"""What one poll costs, in-process: the quick measurement behind each change to the poll path.

    .venv/bin/python -m bench.pollcost                      # 2,000 devices every 3 s (667/s)
    .venv/bin/python -m bench.pollcost --interval 0.25 --timeout 0.2    # flat out
    .venv/bin/python -m bench.pollcost --interval 15 --memory          # live memory per device
    .venv/bin/python -m bench.pollcost --profile                       # cProfile of the window
        # (with LEKTRICO_PROFILE_OUT=FILE, also written there for pstats or snakeviz)
    .venv/bin/python -m bench.pollcost --loop poll --concurrency 100   # no scheduler, flat out
    .venv/bin/python -m bench.pollcost --loop full --devices 600 --concurrency 100 --py-spy
        # flat out through the app's whole sink chain, sampled by py-spy

The simulator serves `--devices` devices from 4 processes on 127.200.x.y; this process runs
the exporter's Poller with an Exposition as its only sink, on the exporter's runtime
(exporter.cli.run: uvloop and its GC settings; LEKTRICO_NO_UVLOOP=1 and LEKTRICO_DEFAULT_GC=1
switch those off), waits `--settle` s for first polls and slow methods, and prints, over a
`--window` s window: polls/s, the share on time, CPU ms per poll (this process's
time.process_time), requests per poll and devices up; with --loop, also the kernel's
connection table by state, where /proc/net/nf_conntrack can be read. `--memory` traces
allocations instead (tracemalloc slows polls, so use a long interval) and prints live KB per
device with the largest allocation sites. bench.run is the full benchmark, with the exporter
as its own process; this one is for comparing one change with the next on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import gc
import os
import pstats
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import yaml

from bench.pyspy import profile_exporter
from exporter.app import Exporter, fix_malloc_thresholds
from exporter.catalogue import table as cat
from exporter.catalogue.selfmetrics import SelfMetrics
from exporter.cli import run as exporter_runtime
from exporter.device.poller import DeviceState, Poller, PollSettings, Target
from exporter.outputs.prometheus import Exposition
from harness.processes import PY, Processes
from harness.procfs import group_cpu


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=2000)
    p.add_argument("--interval", type=float, default=3.0, help="poll interval, s (default 3)")
    p.add_argument("--timeout", type=float, help="poll timeout, s (default interval / 3, max 5)")
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument(
        "--settle",
        type=float,
        help="s before the window (default 6 intervals + 2; with --loop, none)",
    )
    p.add_argument("--window", type=float, default=15.0)
    p.add_argument("--memory", action="store_true", help="trace live memory per device")
    p.add_argument(
        "--rss",
        action="store_true",
        help="after --settle s, VmRSS per device over this process's before the targets (no"
        " tracing; compare runs of the same size)",
    )
    p.add_argument(
        "--scrape",
        type=float,
        help="with --app: render /metrics' body, plain then gzip, every this many s while polling,"
        " as scrapes do",
    )
    p.add_argument(
        "--app",
        action="store_true",
        help="poll on the scheduler through the app's whole sink chain (the session ledger with"
        " a tariff and its store, the exposition, the status board) instead of an Exposition"
        " alone: what --memory and --rss see with the state store on",
    )
    p.add_argument("--profile", action="store_true", help="cProfile the window")
    p.add_argument(
        "--py-spy",
        action="store_true",
        help="with --loop: sample the window with py-spy instead (no tracing overhead) and print"
        " the shares of busy samples by exporter function and by leaf function",
    )
    p.add_argument(
        "--loop",
        choices=["client", "poll", "publish", "full"],
        help="no scheduler: --concurrency workers in a loop for --window s, each taking the"
        " next device and doing only DeviceClient.get of its main method (client), the whole"
        " Poller.poll (poll), Poller.poll and publishing the reading to an Exposition"
        " (publish), or to the app's own outputs, the session ledger (with a tariff and a"
        " state store in a temporary directory) before the exposition and the status board"
        " (full); CPU ms a device each, flat out",
    )
    p.add_argument("--address-base", default="127.200.0.1")
    p.add_argument("--port", type=int, default=18080)
    opts = p.parse_args()
    if not opts.address_base.startswith("127."):
        p.error("--address-base must be in 127.0.0.0/8")
    return opts


def full_exporter(settings: PollSettings, state_dir: Path, metrics: SelfMetrics) -> Exporter:
    """The app with its own sink chain (the ledger with a tariff, the exposition, the status
    board), not started: the caller starts its ledger's store, whose writes then run in their
    own thread as in the exporter."""
    from bench.ledgercost import TARIFFS
    from exporter.config.schema import parse_config

    config = parse_config(
        f"poll: {{interval: {settings.interval}, timeout: {settings.timeout},"
        f" concurrency: {settings.concurrency}}}\n"
        f"state: {{path: '{state_dir / 'state.db'}'}}\n{TARIFFS}"
    )
    fix_malloc_thresholds()  # as Exporter.start does
    return Exporter(config, metrics=metrics)


async def measure(
    opts: argparse.Namespace, targets: list[dict[str, object]], workdir: Path, simulator: int
) -> None:
    metrics = SelfMetrics()
    timeout = opts.timeout if opts.timeout is not None else min(5.0, opts.interval / 3)
    settings = PollSettings(interval=opts.interval, timeout=timeout, concurrency=opts.concurrency)
    app = full_exporter(settings, workdir, metrics) if opts.loop == "full" or opts.app else None
    if app is not None:
        assert app.sessions is not None
        await app.sessions.start()
        poller = app.poller
    else:
        poller = Poller(settings, [Exposition().publish], metrics)
    poller.set_targets(
        Target(str(t["name"]), f"http://{t['host']}", tuple(sorted(dict(t["labels"]).items())))  # type: ignore[call-overload]
        for t in targets
    )
    if opts.loop:
        await flat_out(opts, poller, workdir, simulator)
        await poller.close()
        if app is not None and app.sessions is not None:
            await app.sessions.stop()
        return
    rss0 = rss_bytes()
    if opts.memory:
        tracemalloc.start(3)
    task = asyncio.ensure_future(poller.run())
    scraper = asyncio.ensure_future(scrape(app, opts.scrape)) if app and opts.scrape else None
    settle = opts.settle if opts.settle is not None else opts.interval * 6 + 2
    await asyncio.sleep(settle)

    def value(counter: object) -> float:
        return float(counter._value.get())  # type: ignore[attr-defined]

    if opts.memory:
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        n = opts.devices
        total = sum(s.size for s in snapshot.statistics("filename"))
        print(f"live Python memory: {total / n / 1024:.1f} KB per device (tracemalloc)")
        for stat in snapshot.statistics("lineno")[:40]:
            where = stat.traceback.format()[-1].strip()[:110]
            print(f"  {stat.size / n:7.0f} B {stat.count / n:6.1f} objects per device  {where}")
        print("by file:")
        for stat in snapshot.statistics("filename")[:12]:
            where = stat.traceback.format()[-1].strip()[:110]
            print(f"  {stat.size / n:7.0f} B {stat.count / n:6.1f} objects per device  {where}")
    elif opts.rss:
        gc.collect()
        print(
            f"devices {opts.devices}: RSS {(rss_bytes() - rss0) / opts.devices / 1024:.1f} KB per"
            f" device over {rss0 / 2**20:.1f} MB ({'app' if app else 'exposition'} sinks)"
        )
    else:
        polls0, late0 = value(metrics.polls), value(metrics.polls_late)
        requests0 = value(metrics.requests)
        profile = cProfile.Profile() if opts.profile else None
        cpu0, t0 = time.process_time(), time.monotonic()
        if profile:
            profile.enable()
        await asyncio.sleep(opts.window)
        if profile:
            profile.disable()
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        polls = value(metrics.polls) - polls0
        late = value(metrics.polls_late) - late0
        requests = value(metrics.requests) - requests0
        due = opts.devices * wall / opts.interval
        print(
            f"devices {opts.devices}, interval {opts.interval:g} s: {polls / wall:,.1f} polls/s"
            f" ({due / wall:,.1f} due), on time {max(0.0, polls - late) / max(polls, due):.2%},"
            f" CPU {1000 * cpu / max(polls, 1):.3f} ms a poll ({cpu / wall:.2f} cores),"
            f" {requests / max(polls, 1):.3f} requests a poll,"
            f" {value(metrics.devices_up):.0f} up"
        )
        if profile:
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    task.cancel()
    if scraper is not None:
        scraper.cancel()
    await poller.close()
    if app is not None and app.sessions is not None:
        await app.sessions.stop()


async def scrape(app: Exporter, every: float) -> None:
    own = app.metrics.render()
    while True:
        await asyncio.sleep(every)
        await app.exposition.render_async()
        await app.exposition.render_gzip_async(own)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def flat_out(opts: argparse.Namespace, poller: Poller, workdir: Path, simulator: int) -> None:
    """Workers polling flat out, after one first poll of every device (not measured); the
    `simulator` is the process group whose CPU a request is printed too."""
    states = list(poller.devices.values())
    workers = opts.concurrency

    async def first(chunk: list[DeviceState]) -> None:
        for st in chunk:
            poller.publish(await poller.poll(st))

    await asyncio.gather(*(first(states[i::workers]) for i in range(workers)))
    done = 0
    turn = iter(range(10**12))
    deadline = 0.0

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            st = states[next(turn) % len(states)]
            if st.inflight is not None:
                continue
            if opts.loop == "client":
                assert st.model is not None
                await st.client.get(cat.MAIN_METHOD[st.model.kind])
            else:
                reading = await poller.poll(st)
                if opts.loop in ("publish", "full"):
                    poller.publish(reading)
            done += 1

    if opts.settle:  # the slow methods first polls leave over, out of the window
        deadline = time.monotonic() + opts.settle
        await asyncio.gather(*(worker() for _ in range(workers)))
    done = 0
    requests0 = sum(st.client.requests for st in states)
    profile = cProfile.Profile() if opts.profile else None
    cpu0, sim0, t0 = time.process_time(), group_cpu(simulator), time.monotonic()
    deadline = t0 + opts.window
    if profile:
        profile.enable()
    spy = (
        asyncio.ensure_future(profile_exporter(os.getpid(), opts.window, workdir, len(states)))
        if opts.py_spy
        else None
    )
    await asyncio.gather(*(worker() for _ in range(workers)))
    if profile:
        profile.disable()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    sim_cpu = group_cpu(simulator) - sim0
    requests = sum(st.client.requests for st in states) - requests0
    print(
        f"devices {opts.devices}, {opts.loop} flat out, {workers} workers: {done / wall:,.0f}/s,"
        f" CPU {1000 * cpu / max(done, 1):.3f} ms each ({cpu / wall:.2f} cores),"
        f" {requests / max(done, 1):.3f} requests each;"
        f" the simulator {1000 * sim_cpu / max(requests, 1):.3f} ms a request"
        f" ({sim_cpu / wall:.2f} cores)"
    )
    tracked = conntrack_states()
    if tracked:
        print(
            "kernel connection tracking after the window: "
            + ", ".join(f"{n:,} {state}" for state, n in tracked.most_common())
            + " (a closed connection stays 120 s as TIME_WAIT, a reset one 10 s as CLOSE)"
        )
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        if os.environ.get("LEKTRICO_PROFILE_OUT"):
            profile.dump_stats(os.environ["LEKTRICO_PROFILE_OUT"])
    if spy is not None:
        print_shares(await spy)


def conntrack_states() -> collections.Counter[str]:
    """TCP entries of the kernel's connection table by state; empty where it cannot be read
    (no netfilter, or not allowed)."""
    states: collections.Counter[str] = collections.Counter()
    try:
        with open("/proc/net/nf_conntrack") as table:
            for line in table:
                fields = line.split(maxsplit=6)
                if len(fields) > 5 and fields[2] == "tcp":
                    states[fields[5]] += 1
    except OSError:
        pass
    return states


def print_shares(summary: dict[str, Any]) -> None:
    if "error" in summary:
        print(f"py-spy: {summary['error']}")
        return
    print(f"py-spy: {summary['samples']:,} samples; shares of busy samples")
    for title, key in (
        ("inclusive, by exporter function", "inclusive"),
        (
            "innermost exporter function (library time charged to its caller)",
            "innermost_exporter_function",
        ),
        ("leaf function", "leaf"),
    ):
        print(f"  {title}:")
        for name, share in summary[key]:
            print(f"    {100 * share:5.1f} %  {name}")


async def simulate_and_measure(opts: argparse.Namespace, procs: Processes) -> None:
    """The simulator (4 worker processes) serving `--devices` devices, then `measure`."""
    targets_file = procs.workdir / "targets.yaml"
    sim = procs.start(
        [
            PY,
            "-m",
            "exporter",
            "simulate",
            "--devices",
            str(opts.devices),
            "--mix",
            "1p7k,3p22k,em,3em",
            "--address-base",
            opts.address_base,
            "--port",
            str(opts.port),
            "--processes",
            "4",
            "--targets-file",
            str(targets_file),
            "--seed",
            "1",
        ],
        "simulator",
    )
    if not await procs.wait_output(sim, "simulator", b"simulating", 60 + opts.devices / 100):
        raise SystemExit(f"the simulator did not start: {procs.workdir / 'simulator.err'}")
    targets = yaml.safe_load(targets_file.read_text())["devices"]
    await measure(opts, targets, procs.workdir, sim.pid)


def main() -> int:
    opts = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        procs = Processes(Path(tmp))
        try:
            exporter_runtime(simulate_and_measure(opts, procs))
        finally:
            procs.kill_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
