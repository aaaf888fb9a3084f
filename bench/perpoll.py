"""Requests a poll, counted by the devices: in steady state over whole slow and identity
intervals, and the first poll of each kind of device.

A 45 s window at 15 s sees no slow method (every 600 s) and no identity refresh (every 3600 s).
`cadence_phase` keeps their ratio and scales it down: the exporter polls a few hundred devices
every `--cadence-interval` s with slow_interval = 40 x and identity_interval = 240 x that
(0.25 : 10 : 60 s for 15 : 600 : 3600 s), and once the first polls and their slow methods are
done, the window is one whole identity interval: every device is due exactly 240 polls, six
slow rounds and one identity refresh in it, whatever its phase. The simulator counts every
request it received; a poll is a request for the main method (each poll asks for it once).

`first_poll_budget` starts a handful of devices in this process (the simulator's library, so
profiles can lack methods), lets an exporter poll them once and counts each device's requests:
on the default profiles and on firmware lacking every optional method (each slow and identity
method but the device id), answered as each profile answers an unknown method.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.fleet import concurrency_for, start_simulator, write_config
from bench.window import bounded_sleep_until, scrape, self_counters, sim_calls
from exporter.catalogue import table as cat
from exporter.simulator.server import DeviceSpec, SimulatedFleet
from harness.processes import Processes, free_port, start_exporter

SLOW_RATIO, IDENTITY_RATIO = 600 / 15, 3600 / 15
MAIN_METHODS = frozenset(m.lower() for m in cat.MAIN_METHOD.values())


async def cadence_phase(
    opts: argparse.Namespace, procs: Processes, out: Path, session: aiohttp.ClientSession
) -> dict[str, Any]:
    n, interval = opts.cadence_devices, opts.cadence_interval
    slow, identity = interval * SLOW_RATIO, interval * IDENTITY_RATIO
    # Its own port on the same addresses: no socket shared with the fleet under test.
    fleet = await start_simulator(procs, n, opts, out, port=opts.device_port + 1, tag="-cadence")
    port = free_port()
    config = out / "exporter-cadence.json"
    poll = {"slow_interval": slow, "identity_interval": identity}
    write_config(
        config, fleet.targets, port, opts_with(opts, interval), concurrency_for(n),
        timeout=0.8 * interval, poll=poll,
    )  # fmt: skip
    exporter = None
    try:
        exporter = await start_exporter(procs, config, port, "exporter-cadence", 60)
        metrics = f"http://127.0.0.1:{port}/metrics"
        started = time.monotonic()
        # First polls, then every slow method a busy start left over (two a poll): one slow
        # interval and a few polls more.
        await bounded_sleep_until(started + slow + 4 * interval, exporter, "exporter")
        _, body0 = await scrape(session, metrics, gzip=False)
        calls0, t0 = await sim_calls(session, fleet.control), time.monotonic()
        await bounded_sleep_until(t0 + identity, exporter, "exporter")
        calls1, t1 = await sim_calls(session, fleet.control), time.monotonic()
        _, body1 = await scrape(session, metrics, gzip=False)
    finally:
        if exporter is not None:
            await procs.stop(exporter)
        await procs.stop(fleet.proc)
    delta = {m: calls1.get(m, 0) - calls0.get(m, 0) for m in calls1}
    delta = {m: c for m, c in sorted(delta.items()) if c}
    polls = sum(c for m, c in delta.items() if m.lower() in MAIN_METHODS)
    requests = sum(delta.values())
    a, b = self_counters(body0), self_counters(body1)
    return {
        "devices": n,
        "interval": interval,
        "slow_interval": slow,
        "identity_interval": identity,
        "window_seconds": t1 - t0,
        "polls": polls,
        "polls_due": n * identity / interval,
        "exporter_polls": b["lektrico_polls_total"] - a["lektrico_polls_total"],
        "polls_late": b["lektrico_polls_late_total"] - a["lektrico_polls_late_total"],
        "devices_up": b["lektrico_devices_up"],
        "requests": requests,
        "requests_per_poll": requests / polls if polls else 0.0,
        "by_method": delta,
    }


def opts_with(opts: argparse.Namespace, interval: float) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(opts), "interval": interval})


def lacking(kind: str, methods: set[str]) -> tuple[str, ...]:
    """Every optional method of a kind of device that the simulated profile has."""
    return tuple(
        m.name
        for m in cat.METHODS
        if kind in m.devices
        and m.cadence in (cat.Cadence.SLOW, cat.Cadence.IDENTITY)
        and m.name != cat.DEVICE_ID_METHOD
        and m.name in methods
    )


FIRST_POLL_PROFILES = (
    ("1p7k", "charger", False),
    ("3p22k", "charger", False),
    ("em", "meter", False),
    ("3em", "meter", False),
    ("1p7k", "charger", True),
    ("3p22k", "charger", True),
    ("em", "meter", True),
    ("3em", "meter", True),
)


async def first_poll_budget(
    procs: Processes, out: Path, session: aiohttp.ClientSession
) -> list[dict[str, Any]]:
    """Requests of each device's first poll: one poll each at a 15 s interval, counted once
    every device is up (the next poll is 15 s away)."""
    probe = SimulatedFleet([DeviceSpec(p, p) for p in {p for p, _, _ in FIRST_POLL_PROFILES}])
    specs = []
    for i, (profile, kind, lacks) in enumerate(FIRST_POLL_PROFILES):
        gone = lacking(kind, set(probe.device(profile).methods)) if lacks else ()
        specs.append(DeviceSpec(f"first-{i}-{profile}", profile, seed=i, lacks=gone))
    port = free_port()
    config = out / "exporter-first-poll.json"
    async with SimulatedFleet(specs) as fleet:
        targets = [{"name": name, "host": fleet.host(name)} for name in fleet.names]
        settings = argparse.Namespace(interval=15.0)
        write_config(config, targets, port, settings, 64)
        exporter = await start_exporter(procs, config, port, "exporter-first-poll", 60)
        try:
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                _, body = await scrape(session, f"http://127.0.0.1:{port}/metrics", gzip=False)
                if self_counters(body)["lektrico_devices_up"] >= len(specs):
                    break
                await bounded_sleep_until(time.monotonic() + 0.2, exporter, "exporter")
            counts = fleet.call_counts()
        finally:
            await procs.stop(exporter)
    rows = []
    for spec, (profile, kind, _) in zip(specs, FIRST_POLL_PROFILES, strict=True):
        asked = {m: c for (d, m), c in sorted(counts.items()) if d == spec.name}
        rows.append(
            {
                "device": spec.name,
                "profile": profile,
                "kind": kind,
                "lacks": list(spec.lacks),
                "requests": sum(asked.values()),
                "budget": 8 if kind == cat.CHARGER else 5,
                "by_method": asked,
            }
        )
    return rows
