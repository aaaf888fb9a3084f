"""The steady window of one exporter: waiting until the fleet is steady, the snapshots that
bound the window, and the figures taken between them (shared by every phase of `bench.run`)."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import math
import re
import subprocess
import time
import urllib.parse
from dataclasses import dataclass

import aiohttp

from bench.fleet import Fleet
from bench.results import SizeResult
from harness.procfs import CLK_TCK, cpu_seconds, group_cpu, machine_busy_jiffies

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
# Polls over a settle step, at most, as a multiple of those due (plus three standard deviations
# of a binomial count): more means polls that started late are still catching up.
STEADY_RATE = 1.02


async def settle(
    res: SizeResult,
    session: aiohttp.ClientSession,
    metrics_url: str,
    exporter: subprocess.Popen[bytes],
    deadline: float,
    interval: float,
) -> None:
    """Wait until every device has finished its first poll and its slow methods (a busy
    exporter spreads them over the next polls), so the window sees the steady state: every
    device up, at most STEADY_REQUESTS requests a poll and no more polls than due over the last
    step (none catching up); at most until `deadline`."""
    res.settled = await until_steady(
        session, metrics_url, exporter, deadline, res.n, rate=res.n / interval
    )
    _, body = await scrape(session, metrics_url, gzip=False)
    res.devices_up_at_window = int(self_counters(body)["lektrico_devices_up"])


async def until_steady(
    session: aiohttp.ClientSession,
    metrics_url: str,
    exporter: subprocess.Popen[bytes],
    deadline: float,
    n: int,
    step: float = 3.0,
    rate: float | None = None,
) -> bool:
    """True once all n devices are up and a step's polls made at most STEADY_REQUESTS requests
    each, and with `rate` (polls due a second) were no more than STEADY_RATE times those due;
    False if `deadline` came first."""
    last: dict[str, float] | None = None
    last_t = 0.0
    while True:
        _, body = await scrape(session, metrics_url, gzip=False)
        now, now_t = self_counters(body), time.monotonic()
        if last is not None and now["lektrico_devices_up"] >= n:
            polls = now["lektrico_polls_total"] - last["lektrico_polls_total"]
            requests = (
                now["lektrico_device_requests_total"] - last["lektrico_device_requests_total"]
            )
            due = rate * (now_t - last_t) if rate is not None else math.inf
            on_schedule = polls <= STEADY_RATE * due + 3 * math.sqrt(due) + 1
            if polls > 0 and requests / polls <= STEADY_REQUESTS and on_schedule:
                return True
        if time.monotonic() > deadline:
            return False
        last, last_t = now, now_t
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


def _timed_get(url: str, gzip: bool) -> tuple[float, bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)
    try:
        headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
        t0 = time.perf_counter()
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers=headers)
        r = conn.getresponse()
        body = r.read()
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    if r.status != 200:
        raise RuntimeError(f"{url}: HTTP {r.status}")
    if gzip and r.getheader("Content-Encoding") != "gzip":
        raise RuntimeError("/metrics ignored Accept-Encoding: gzip")
    return seconds, body


async def timed_scrape(url: str, gzip: bool) -> tuple[float, bytes]:
    """Seconds from sending the request to the last byte of the body, and the body as sent,
    read as Prometheus reads it: in large reads, by a client outside the event loop. aiohttp's
    client, reading a 74 MB body in the loop's 256 KiB chunks, adds about 100 ms of its own on
    this machine (http.client and curl take 45-55 ms for the same body)."""
    return await asyncio.to_thread(_timed_get, url, gzip)


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


async def bounded_sleep_until(deadline: float, proc: subprocess.Popen[bytes], what: str) -> None:
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, 1.0))
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")


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
