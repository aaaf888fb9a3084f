"""The runs of one fleet size and their measurements: the steady window, scrapes, probes,
the floor and the exporter's capacity (what `bench.run` prints comes from `measure_size`)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from pathlib import Path

import aiohttp

from bench.fleet import Fleet, concurrency_for, start_simulator, write_config
from bench.floor import run_floor
from bench.lateness import log_size, window_lateness
from bench.pyspy import profile_exporter
from bench.references import references
from bench.results import PROBE_CONCURRENCY, SizeResult
from bench.stateoff import measure_state_off
from bench.window import (
    bounded_sleep_until,
    fill_window,
    scrape,
    self_counters,
    settle,
    snapshot,
    timed_scrape,
    until_steady,
    window_seconds,
)
from harness.processes import Processes, free_port, start_exporter
from harness.procfs import cpu_seconds, loadavg, proc_status, rss_bytes


async def probe_burst(
    session: aiohttp.ClientSession,
    base: str,
    targets: list[str],
    max_requests: int,
    max_seconds: float,
) -> dict[str, float]:
    """Requests/s of /probe at concurrency 16, bounded by count and by time."""
    issued = 0
    ok = failed = 0
    deadline = time.monotonic() + max_seconds

    async def worker() -> None:
        nonlocal issued, ok, failed
        while issued < max_requests and time.monotonic() < deadline:
            target = targets[issued % len(targets)]
            issued += 1
            try:
                async with session.get(
                    f"{base}/probe",
                    params={"target": target},
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as r:
                    body = await r.read()
                    good = r.status == 200 and b"lektrico_up{" in body and b"} 1\n" in body
            except (aiohttp.ClientError, TimeoutError):
                good = False
            ok, failed = (ok + 1, failed) if good else (ok, failed + 1)

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(PROBE_CONCURRENCY)))
    seconds = time.monotonic() - t0
    return {
        "requests": ok + failed,
        "ok": ok,
        "failed": failed,
        "seconds": seconds,
        "rps": ok / seconds if seconds > 0 else 0.0,
    }


async def measure_capacity(
    n: int,
    fleet: Fleet,
    opts: argparse.Namespace,
    procs: Processes,
    out: Path,
    session: aiohttp.ClientSession,
) -> dict[str, float]:
    """The exporter's throughput when it cannot keep up: polls due faster than it can run them
    (N devices every `capacity_interval(n)` s), so it polls flat out; polls and CPU over a
    window once the first polls are done. This is the exporter's side of the floor."""
    interval = capacity_interval(n)
    port = free_port()
    config = out / f"exporter-{n}-capacity.json"
    settings = argparse.Namespace(interval=interval)
    write_config(config, fleet.targets, port, settings, concurrency_for(n), timeout=interval * 0.8)
    exporter = await start_exporter(procs, config, port, f"exporter-{n}-capacity", 60 + n / 200)
    try:
        metrics = f"http://127.0.0.1:{port}/metrics"
        started = time.monotonic()
        await bounded_sleep_until(started + opts.capacity_warmup, exporter, "exporter")
        steady = await until_steady(
            session, metrics, exporter, started + opts.settle_timeout, n, step=2.0
        )
        t0, cpu0 = time.monotonic(), cpu_seconds(exporter.pid)
        _, body0 = await scrape(session, metrics, gzip=False)
        await bounded_sleep_until(t0 + opts.capacity_seconds, exporter, "exporter")
        _, body1 = await scrape(session, metrics, gzip=False)
        cpu, seconds = cpu_seconds(exporter.pid) - cpu0, time.monotonic() - t0
    finally:
        await procs.stop(exporter)
    a, b = self_counters(body0), self_counters(body1)
    polls = b["lektrico_polls_total"] - a["lektrico_polls_total"]
    requests = b["lektrico_device_requests_total"] - a["lektrico_device_requests_total"]
    return {
        "interval": interval,
        "due_per_second": n / interval,
        "seconds": seconds,
        "polls_per_second": polls / seconds,
        "cpu": cpu,
        "cores": cpu / seconds,
        "cpu_per_1000": 1000 * cpu / polls if polls else float("nan"),
        "requests_per_poll": requests / polls if polls else 0.0,
        "steady": steady,
        "warmup_seconds": t0 - started,
    }


def capacity_interval(n: int) -> float:
    # Due at 8,000 polls/s (at least 0.2 s between a device's polls): more than one core polls.
    return max(0.2, n / 8000)


async def measure_size(
    n: int,
    opts: argparse.Namespace,
    procs: Processes,
    out: Path,
    session: aiohttp.ClientSession,
    baseline_rss: int,
) -> SizeResult:
    concurrency = concurrency_for(n)
    res = SizeResult(n, concurrency, min(opts.sim_processes, n))
    phase = time.monotonic()

    def lap(name: str) -> None:
        nonlocal phase
        now = time.monotonic()
        res.phase_seconds[name] = round(now - phase, 1)
        phase = now

    call_log = out / f"calls-{n}.jsonl"
    fleet = await start_simulator(procs, n, opts, out, call_log=call_log)
    lap("simulator start")
    exporter = None
    try:
        port = free_port()
        config = out / f"exporter-{n}.json"
        write_config(config, fleet.targets, port, opts, concurrency)
        base = f"http://127.0.0.1:{port}"
        exporter = await start_exporter(procs, config, port, f"exporter-{n}", 60 + n / 200)
        ready = time.monotonic()
        lap("exporter start")
        await bounded_sleep_until(ready + opts.interval + 2.0, exporter, "exporter")
        await settle(
            res, session, f"{base}/metrics", exporter, ready + opts.settle_timeout, opts.interval
        )
        lap("first round")

        res.load_average.append(loadavg())
        log0, wall0 = log_size(call_log), time.time()
        a = await snapshot(session, f"{base}/metrics", fleet, exporter.pid, first=True)
        await bounded_sleep_until(a.time + window_seconds(opts), exporter, "exporter")
        b = await snapshot(session, f"{base}/metrics", fleet, exporter.pid, first=False)
        res.lateness = window_lateness(call_log, log0, wall0, time.time(), opts.interval)
        res.load_average.append(loadavg())
        res.rss_bytes = rss_bytes(exporter.pid)
        res.exporter_threads = proc_status(exporter.pid, "Threads")
        lap("window")
        fill_window(res, a, b, opts.interval, n)

        if opts.profile:
            res.profile = await profile_exporter(exporter.pid, opts.profile_seconds, out, n)
            lap("profile")

        plain, gz, body = [], [], b""
        deadline = time.monotonic() + opts.scrape_budget
        for _ in range(opts.scrapes):
            seconds, body = await timed_scrape(f"{base}/metrics", gzip=False)
            plain.append((seconds, len(body)))
            await asyncio.sleep(0.2)  # let polls land, so every scrape renders afresh
            seconds, gz_body = await timed_scrape(f"{base}/metrics", gzip=True)
            gz.append((seconds, len(gz_body)))
            await asyncio.sleep(0.2)
            if time.monotonic() > deadline:
                break
        res.scrapes = len(plain)
        res.metrics_plain_seconds = statistics.median(s for s, _ in plain)
        res.metrics_gzip_seconds = statistics.median(s for s, _ in gz)
        res.metrics_plain_bytes = int(statistics.median(size for _, size in plain))
        res.metrics_gzip_bytes = int(statistics.median(size for _, size in gz))
        lap("scrapes")

        # By address, as the multi-target relabelling in the README sends them.
        addresses = [str(t["host"]) for t in fleet.targets]
        res.probe = await probe_burst(
            session, base, addresses, opts.probe_requests, opts.probe_seconds
        )
        lap("probe")
        await procs.stop(exporter)
        exporter = None
        if n in opts.state_off:
            res.state_off = await measure_state_off(
                n, fleet, opts, procs, out, session, call_log, baseline_rss
            )
            lap("state store off")

        res.floor = await run_floor(procs, fleet, concurrency, opts.duration, out, n)
        paced_seconds = min(opts.duration, 20.0)
        res.floor_paced = await run_floor(
            procs, fleet, concurrency, paced_seconds, out, n, rate=n / opts.interval
        )
        if res.cpu_per_1000_polls > 0:
            res.floor_ratio = res.floor["cpu_per_1000"] / res.cpu_per_1000_polls
            res.floor_paced_ratio = res.floor_paced["cpu_per_1000"] / res.cpu_per_1000_polls
        lap("floor")
        res.capacity = await measure_capacity(n, fleet, opts, procs, out, session)
        if res.capacity["cpu_per_1000"] > 0:
            res.capacity_ratio = res.floor["cpu_per_1000"] / res.capacity["cpu_per_1000"]
        lap("capacity")
    finally:
        if exporter is not None:
            await procs.stop(exporter)
        await procs.stop(fleet.proc)

    references(res, body, opts)
    gc.collect()  # the reference registry of 20,000 devices holds about a gigabyte
    lap("references")
    return res


async def exporter_baseline_rss(
    procs: Processes, opts: argparse.Namespace, out: Path, session: aiohttp.ClientSession
) -> int:
    port = free_port()
    config = out / "exporter-0.json"
    write_config(config, [], port, opts, 64)
    proc = await start_exporter(procs, config, port, "exporter-0", 60)
    try:
        await scrape(session, f"http://127.0.0.1:{port}/metrics", gzip=False)
        await asyncio.sleep(2.0)
        return rss_bytes(proc.pid)
    finally:
        await procs.stop(proc)
