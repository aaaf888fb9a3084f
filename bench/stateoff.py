"""The steady window once more with the state store off, to put the session ledger's cost
(with the derived counters it feeds) beside the exporter's: `state: {enabled: false}` is the
product's own switch, so the difference is what a user who turns it off saves."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.fleet import Fleet, concurrency_for, write_config
from bench.lateness import log_size, window_lateness
from bench.results import SizeResult
from bench.window import bounded_sleep_until, fill_window, settle, snapshot, window_seconds
from harness.processes import Processes, free_port, start_exporter
from harness.procfs import rss_bytes


async def measure_state_off(
    n: int,
    fleet: Fleet,
    opts: argparse.Namespace,
    procs: Processes,
    out: Path,
    session: aiohttp.ClientSession,
    call_log: Path,
    baseline_rss: int,
) -> dict[str, Any]:
    """Polls on time, CPU, RSS and poll lateness of an exporter with the state store off,
    over a window as long as the main one, once the fleet is steady."""
    port = free_port()
    config = out / f"exporter-{n}-state-off.json"
    write_config(config, fleet.targets, port, opts, concurrency_for(n), state=False)
    name = f"exporter-{n}-state-off"
    exporter = await start_exporter(procs, config, port, name, 60 + n / 200)
    res = SizeResult(n, concurrency_for(n), 0)
    metrics = f"http://127.0.0.1:{port}/metrics"
    try:
        ready = time.monotonic()
        await bounded_sleep_until(ready + opts.interval + 2.0, exporter, "exporter")
        await settle(res, session, metrics, exporter, ready + opts.settle_timeout, opts.interval)
        log0, wall0 = log_size(call_log), time.time()
        a = await snapshot(session, metrics, fleet, exporter.pid, first=True)
        await bounded_sleep_until(a.time + window_seconds(opts), exporter, "exporter")
        b = await snapshot(session, metrics, fleet, exporter.pid, first=False)
        lateness = window_lateness(call_log, log0, wall0, time.time(), opts.interval)
        rss = rss_bytes(exporter.pid)
    finally:
        await procs.stop(exporter)
    fill_window(res, a, b, opts.interval, n)
    return {
        "settled": res.settled,
        "on_time_share": res.on_time_share,
        "polls_per_second": res.polls_per_second,
        "cores": res.exporter_cores,
        "cpu_per_1000_polls": res.cpu_per_1000_polls,
        "rss_bytes": rss,
        "rss_per_device_bytes": (rss - baseline_rss) / n,
        "lateness": lateness,
        "other_busy_cores": res.other_busy_cores,
    }
