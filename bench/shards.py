"""Past one core: one fleet split over several exporter replicas (docs/deployment.md: the same
device list and `shard: {index: I, count: N}` each, one replica a core), every replica polling
its share. `--shards N` runs it once after the sizes: the simulator serves N devices, the
replicas start together, and once each has its share up and steady, one window measures polls
on time over the whole fleet, each replica's CPU and RSS, and the poll lateness the devices
saw. The bench scrapes each replica itself at the window's two ends, as a Prometheus would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.fleet import concurrency_for, start_simulator, write_config
from bench.lateness import log_size, window_lateness
from bench.window import bounded_sleep_until, scrape, self_counters, until_steady, window_seconds
from exporter.device import sharding
from harness.processes import Processes, free_port, start_exporter
from harness.procfs import CLK_TCK, cpu_seconds, group_cpu, machine_busy_jiffies, rss_bytes


async def timed_counters(
    session: aiohttp.ClientSession, url: str
) -> tuple[float, dict[str, float]]:
    """A replica's counters, and when they were read: the middle of the scrape."""
    t0 = time.monotonic()
    _, body = await scrape(session, url, gzip=False)
    return (t0 + time.monotonic()) / 2, self_counters(body)


async def shards_phase(
    opts: argparse.Namespace,
    procs: Processes,
    out: Path,
    session: aiohttp.ClientSession,
    baseline_rss: int,
) -> dict[str, Any]:
    n = opts.shards
    count = opts.shard_count or os.cpu_count() or 1
    phases: dict[str, float] = {}
    lap = time.monotonic()

    def done(name: str) -> None:
        nonlocal lap
        phases[name] = round(time.monotonic() - lap, 1)
        lap = time.monotonic()

    call_log = out / f"calls-shards-{n}.jsonl"
    fleet = await start_simulator(procs, n, opts, out, call_log=call_log, tag="-shards")
    done("simulator start")
    names = [str(t["name"]) for t in fleet.targets]
    owned = [sharding.select(names, i, count) for i in range(count)]
    ports = [free_port() for _ in range(count)]
    exporters = []
    try:
        for i in range(count):
            config = out / f"exporter-shard-{i}-of-{count}.json"
            write_config(
                config, fleet.targets, ports[i], opts, concurrency_for(len(owned[i])),
                shard=(i, count),
            )  # fmt: skip
        names_of = [f"exporter-shard-{i}-of-{count}" for i in range(count)]
        starts = (
            start_exporter(procs, out / f"{name}.json", port, name, 60 + n / 200)
            for name, port in zip(names_of, ports, strict=True)
        )
        exporters = list(await asyncio.gather(*starts))
        done("replicas start")
        ready = time.monotonic()
        urls = [f"http://127.0.0.1:{p}/metrics" for p in ports]
        await bounded_sleep_until(ready + opts.interval + 2.0, exporters[0], "replica 0")
        deadline = ready + opts.settle_timeout
        steady = await asyncio.gather(
            *(
                until_steady(
                    session, url, exporter, deadline, len(share), rate=len(share) / opts.interval
                )
                for url, exporter, share in zip(urls, exporters, owned, strict=True)
            )
        )
        done("first round")
        log0, wall0 = log_size(call_log), time.time()
        machine0, sim0 = machine_busy_jiffies(), group_cpu(fleet.proc.pid)
        cpu0 = [cpu_seconds(e.pid) for e in exporters]
        before = [await timed_counters(session, u) for u in urls]
        t0 = before[0][0]
        await bounded_sleep_until(t0 + window_seconds(opts), exporters[0], "replica 0")
        after = [await timed_counters(session, u) for u in urls]
        cpu1 = [cpu_seconds(e.pid) for e in exporters]
        machine1, sim1 = machine_busy_jiffies(), group_cpu(fleet.proc.pid)
        t1 = after[-1][0]
        rss = [rss_bytes(e.pid) for e in exporters]
        lateness = window_lateness(call_log, log0, wall0, time.time(), opts.interval)
        done("window")
    finally:
        for exporter in exporters:
            await procs.stop(exporter)
        await procs.stop(fleet.proc)
    seconds = t1 - t0
    replicas = []
    for i in range(count):
        # Each replica's counters are read one scrape after the one before (a scrape of 25,000
        # devices takes seconds), so its rates are over its own window, not the whole phase's.
        (ta, a), (tb, b) = before[i], after[i]
        polls = b["lektrico_polls_total"] - a["lektrico_polls_total"]
        late = b["lektrico_polls_late_total"] - a["lektrico_polls_late_total"]
        due = max(polls, len(owned[i]) * (tb - ta) / opts.interval)
        cpu = cpu1[i] - cpu0[i]
        replicas.append(
            {
                "devices": len(owned[i]),
                "devices_up": b["lektrico_devices_up"],
                "steady": steady[i],
                "window_seconds": tb - ta,
                "polls": polls,
                "polls_per_second": polls / (tb - ta),
                "polls_late": late,
                "polls_due": due,
                "on_time_share": max(0.0, (polls - late) / due) if due else 0.0,
                "cores": cpu / seconds,
                "cpu_per_1000_polls": 1000 * cpu / polls if polls else float("nan"),
                "rss_bytes": rss[i],
                "rss_per_device_bytes": (rss[i] - baseline_rss) / len(owned[i]),
            }
        )
    polls = sum(r["polls"] for r in replicas)
    on_time = sum(r["polls"] - r["polls_late"] for r in replicas)
    due = sum(r["polls_due"] for r in replicas)
    cores = sum(r["cores"] for r in replicas)
    return {
        "devices": n,
        "replicas": replicas,
        "window_seconds": seconds,
        "polls_per_second": sum(r["polls_per_second"] for r in replicas),
        "expected_polls_per_second": n / opts.interval,
        "on_time_share": max(0.0, on_time / due) if due else 0.0,
        "cores": cores,
        "cpu_per_device_ms_per_s": 1000 * cores / n,
        "cpu_per_1000_polls": 1000 * cores * seconds / polls if polls else float("nan"),
        "simulator_cores": (sim1 - sim0) / seconds,
        "machine_busy_cores": (machine1[0] - machine0[0]) / CLK_TCK / seconds,
        "lateness": lateness,
        "phase_seconds": phases,
    }
