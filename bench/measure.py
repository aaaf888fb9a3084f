"""The runs of one fleet size and their measurements: the steady window, scrapes, probes,
the floor and the exporter's capacity (what `bench.run` prints comes from `measure_size`)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.fleet import Fleet, concurrency_for, start_simulator, write_config
from bench.floor import run_floor
from bench.pyspy import profile_exporter
from bench.references import references
from bench.results import CADENCE, PROBE_CONCURRENCY, SizeResult
from exporter.catalogue import table as cat
from harness.processes import Processes, free_port, start_exporter
from harness.procfs import (
    CLK_TCK,
    cpu_seconds,
    group_cpu,
    loadavg,
    machine_busy_jiffies,
    proc_status,
    rss_bytes,
)

SELF_COUNTERS = (
    "lektrico_devices_up",
    "lektrico_polls_total",
    "lektrico_polls_late_total",
    "lektrico_device_requests_total",
)


def self_counters(body: bytes) -> dict[str, float]:
    values = {}
    for name in SELF_COUNTERS:
        match = re.search(rb"^" + name.encode() + rb" (\S+)$", body, re.M)
        values[name] = float(match.group(1)) if match else 0.0
    return values


STEADY_REQUESTS = 1.05  # requests a poll at most, over a settle step, to call a fleet steady


async def settle(
    res: SizeResult,
    session: aiohttp.ClientSession,
    metrics_url: str,
    exporter: subprocess.Popen[bytes],
    deadline: float,
) -> None:
    """Wait until every device has finished its first poll and its slow methods (a busy
    exporter spreads them over the next polls), so the window sees the steady state: every
    device up, and at most STEADY_REQUESTS requests a poll over the last step; at most until
    `deadline`."""
    res.settled = await until_steady(session, metrics_url, exporter, deadline, res.n)
    _, body = await scrape(session, metrics_url, gzip=False)
    res.devices_up_at_window = int(self_counters(body)["lektrico_devices_up"])


async def until_steady(
    session: aiohttp.ClientSession,
    metrics_url: str,
    exporter: subprocess.Popen[bytes],
    deadline: float,
    n: int,
    step: float = 3.0,
) -> bool:
    """True once all n devices are up and a step's polls made at most STEADY_REQUESTS requests
    each; False if `deadline` came first."""
    last: dict[str, float] | None = None
    while True:
        _, body = await scrape(session, metrics_url, gzip=False)
        now = self_counters(body)
        if last is not None and now["lektrico_devices_up"] >= n:
            polls = now["lektrico_polls_total"] - last["lektrico_polls_total"]
            requests = (
                now["lektrico_device_requests_total"] - last["lektrico_device_requests_total"]
            )
            if polls > 0 and requests / polls <= STEADY_REQUESTS:
                return True
        if time.monotonic() > deadline:
            return False
        last = now
        await bounded_sleep_until(time.monotonic() + step, exporter, "exporter")


async def scrape(session: aiohttp.ClientSession, url: str, gzip: bool) -> tuple[float, bytes]:
    """Seconds from sending the request to the last byte of the body, and the body as sent."""
    headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
    t0 = time.perf_counter()
    async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=120)) as r:
        body = await r.read()
        r.raise_for_status()
        if gzip and r.headers.get("Content-Encoding") != "gzip":
            raise RuntimeError("/metrics ignored Accept-Encoding: gzip")
    return time.perf_counter() - t0, body


async def sim_calls(session: aiohttp.ClientSession, control: str) -> dict[str, int]:
    async with session.get(f"{control}/calls", timeout=aiohttp.ClientTimeout(total=60)) as r:
        data = await r.json()
    return {str(k): int(v) for k, v in data["by_method"].items()}


@dataclass
class WindowSnapshot:
    """What the window's start or end saw: the exporter's counters, the simulator's calls, and
    CPU time of the exporter, the simulator and the machine."""

    time: float
    counters: dict[str, float]
    calls: dict[str, int]
    exporter_cpu: float
    sim_cpu: float
    machine: tuple[int, int]


async def snapshot(
    session: aiohttp.ClientSession, metrics_url: str, fleet: Fleet, exporter_pid: int, first: bool
) -> WindowSnapshot:
    """Counters, CPU and call counts; CPU is read outside the scrape, so the window's CPU
    includes both of its own scrapes (it never flatters the exporter)."""
    calls = await sim_calls(session, fleet.control) if first else {}
    cpu = cpu_seconds(exporter_pid) if first else 0.0
    sim = group_cpu(fleet.proc.pid) if first else 0.0
    machine = machine_busy_jiffies() if first else (0, 0)
    t0 = time.monotonic()
    _, body = await scrape(session, metrics_url, gzip=False)
    t = (t0 + time.monotonic()) / 2
    if not first:
        cpu = cpu_seconds(exporter_pid)
        sim = group_cpu(fleet.proc.pid)
        machine = machine_busy_jiffies()
        calls = await sim_calls(session, fleet.control)
    return WindowSnapshot(t, self_counters(body), calls, cpu, sim, machine)


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


async def bounded_sleep_until(deadline: float, proc: subprocess.Popen[bytes], what: str) -> None:
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, 1.0))
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")


def amortised_requests(
    per_poll: float, first_calls: dict[str, int], n: int, interval: float
) -> float:
    """Window requests/poll plus the share of slow and identity methods a window too short to
    see them would miss: each comes back every slow_interval (600 s) or identity_interval
    (3600 s), as counted per device in the first round."""
    extra = 0.0
    for method, count in first_calls.items():
        canonical = next((m for m in CADENCE if m.lower() == method.lower()), None)
        cadence = CADENCE.get(canonical or "")
        if cadence is cat.Cadence.SLOW:
            extra += count / n * interval / 600.0
        elif cadence is cat.Cadence.IDENTITY:
            extra += count / n * interval / 3600.0
    return per_poll + extra


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

    fleet = await start_simulator(procs, n, opts, out)
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
        await settle(res, session, f"{base}/metrics", exporter, ready + opts.settle_timeout)
        lap("first round")

        res.load_average.append(loadavg())
        a = await snapshot(session, f"{base}/metrics", fleet, exporter.pid, first=True)
        await bounded_sleep_until(a.time + window_seconds(opts), exporter, "exporter")
        b = await snapshot(session, f"{base}/metrics", fleet, exporter.pid, first=False)
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
            seconds, body = await scrape(session, f"{base}/metrics", gzip=False)
            plain.append((seconds, len(body)))
            await asyncio.sleep(0.2)  # let polls land, so every scrape renders afresh
            seconds, gz_body = await scrape(session, f"{base}/metrics", gzip=True)
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


def window_seconds(opts: argparse.Namespace) -> float:
    """--duration rounded up to whole intervals: every device is then due the same number of
    times in the window whatever its phase, so N x window / interval polls are due exactly."""
    duration: float = opts.duration
    interval: float = opts.interval
    return math.ceil(duration / interval - 1e-9) * interval


def fill_window(
    res: SizeResult, a: WindowSnapshot, b: WindowSnapshot, interval: float, n: int
) -> None:
    def delta(name: str) -> float:
        return b.counters[name] - a.counters[name]

    seconds = b.time - a.time
    polls = delta("lektrico_polls_total")
    cpu = b.exporter_cpu - a.exporter_cpu
    res.window_seconds = seconds
    res.polls = polls
    res.polls_per_second = polls / seconds
    res.expected_polls_per_second = n / interval
    # Late polls are those that ran past their interval and those skipped because the previous
    # poll was still running; a skipped poll is not in polls_total, so the share is taken of
    # the polls that were due (N per interval) when fewer than those ran.
    res.polls_late = delta("lektrico_polls_late_total")
    due = max(polls, n * seconds / interval)
    res.on_time_share = max(0.0, (polls - res.polls_late) / due) if due else 0.0
    res.exporter_cpu_seconds = cpu
    res.cpu_per_1000_polls = 1000 * cpu / polls if polls else float("nan")
    res.exporter_cores = cpu / seconds
    res.simulator_cores = (b.sim_cpu - a.sim_cpu) / seconds
    busy = (b.machine[0] - a.machine[0]) / CLK_TCK
    res.machine_busy_cores = busy / seconds
    res.other_busy_cores = max(
        0.0, res.machine_busy_cores - res.exporter_cores - res.simulator_cores
    )
    res.requests_per_poll = delta("lektrico_device_requests_total") / polls if polls else 0.0
    window_calls = {m: b.calls.get(m, 0) - a.calls.get(m, 0) for m in b.calls}
    res.calls_by_method_window = {m: c for m, c in sorted(window_calls.items()) if c}
    res.requests_per_poll_simulator = sum(window_calls.values()) / polls if polls else 0.0
    res.requests_per_poll_amortised = amortised_requests(
        res.requests_per_poll, a.calls, n, interval
    )


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
