"""Reliability under faults, restarts and concurrent load: the fleet keeps its promises.

Everything here runs for real: the simulator CLI serves the fleet from its own processes, one
loopback address per device; the exporter runs as `python -m exporter` in its own process so its
CPU, file descriptors and memory are its own (read from /proc); real Prometheus servers scrape it.

- Fault matrix: 1,000 devices, of which 10 % hang, 5 % reset, 2.5 % answer garbage (wrong value
  types), 2.5 % non-JSON, 5 % answer just under the timeout and 2 % flap. Over a bounded window
  the healthy devices' polls stay on time, every faulty device is down with the right reason,
  no traceback or error reaches the log, and file descriptors and RSS stay flat.
- Restarts: the exporter killed with SIGKILL and restarted twice while Prometheus scrapes it:
  the device counters never reset in Prometheus, while the exporter's own counters do.
- Concurrency: two Prometheus servers scrape /metrics and /probe every second, this test scrapes
  both as fast as it can, the config is reloaded in the middle: every body is valid for promtool
  and every device block in it is whole.

The fault matrix's fleet and verdict (`FleetRun`, harness/fleet.py) are what bench/soak.py
drives for the long soak.

Every loop is bounded in count and time, all traffic stays on 127.0.0.0/8, and every process
started here is killed at the end, also when a test fails.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from exporter.catalogue import table as cat
from exporter.catalogue.selfmetrics import SelfMetrics
from exporter.device.client import DeviceClient
from exporter.device.http import HttpClient
from exporter.device.poller import DevicePoller, DeviceState, PollSettings, Target
from exporter.simulator.server import DeviceSpec
from harness.fleet import LABEL, FleetRun, mib, run_fault_matrix
from harness.processes import Processes, free_port, start_exporter
from harness.servers import Prometheus, require_binary

from .conftest import FleetFactory

HEALTH = frozenset(
    {
        "lektrico_up",
        "lektrico_poll_duration_seconds",
        "lektrico_last_poll_success_timestamp_seconds",
        "lektrico_device_info",
        "lektrico_method_supported",
        "lektrico_poll_errors_total",
        "lektrico_method_errors_total",
        "lektrico_values_dropped_total",
    }
    # The exporter's derived counters (sessions, energy, cost) are kept while a device is down:
    # they come from its state store, not from the device, and must not reset.
    | {m.name for m in cat.CATALOGUE if isinstance(m.extract, cat.Derived)}
)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.kill_all()


@pytest.mark.timeout(170)
async def test_fault_matrix_of_1000_devices_keeps_healthy_polls_on_time(
    tmp_path: Path, procs: Processes
) -> None:
    # 1,000 devices every 10 s is 100 polls/s: sized for CI's two shared cores.
    run = FleetRun(tmp_path, procs, devices=1000, interval=10.0, timeout=2.0)

    verdict, snaps = await run_fault_matrix(run, window=60.0, step=1.5, warm_up=40.0)

    assert run.exporter is not None and run.exporter.poll() is None, "the exporter died"
    report = (
        f"on time {verdict.on_time:.4f}, polled {verdict.polls_per_device_ok:.4f}, "
        f"late {verdict.late_ratio:.4f}, slow up {verdict.slow_up:.4f}, "
        f"exporter CPU {verdict.cpu:.0%} of a core, "
        f"fds {verdict.fds}, RSS MiB {mib(verdict.rss)}"
    )
    print(report)
    assert verdict.failures() == [], report
    assert len(snaps) >= 30


# ---- a poll that fails half-way leaves nothing half-done behind -------------------------------


async def test_poll_that_times_out_half_way_is_redone_whole_next_time(
    make_fleet: FleetFactory,
) -> None:
    # The first poll of a charger asks for its identity, live values and slow methods.
    # When it times out after some of those answered, their answers are thrown away; the next
    # good poll must ask again, or the device runs without its identity for identity_interval
    # (an hour) and without its counters and settings for slow_interval. After a failure the
    # slow methods come MAX_SLOW_PER_POLL a poll (a device too slow for all of them at once
    # must still come up), so within a few polls it exports what a clean first poll exports.
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", seed=1)], frozen=True)
    settings = PollSettings(interval=5.0, timeout=2.0, slow_interval=600.0)
    worker = DevicePoller(settings, SelfMetrics())
    http = HttpClient(10)
    twin = DeviceState(Target("c1", fleet.url("c1")), DeviceClient(http, fleet.url("c1")))
    st = DeviceState(Target("c1", fleet.url("c1")), DeviceClient(http, fleet.url("c1")))
    reference = [await worker.poll(twin) for _ in range(4)][-1]
    fleet.set_fault("c1", "slow:0.7")  # identity answers, then time runs out before main

    failed = await worker.poll(st)
    fleet.set_fault("c1", "none")
    good = await worker.poll(st)
    later = [await worker.poll(st) for _ in range(4)]

    assert reference.up and not failed.up and failed.reason == "timeout"
    assert good.up and all(r.up for r in later)
    info = next(s for s in good.samples if s.metric == "lektrico_device_info")
    assert info == next(s for s in reference.samples if s.metric == "lektrico_device_info")
    assert dict(info.labels)["device_id"] and dict(info.labels)["fw_id"], info
    complete = later[-1]
    assert sorted({s.metric for s in complete.samples} - {"lektrico_poll_errors_total"}) == sorted(
        {s.metric for s in reference.samples} - {"lektrico_poll_errors_total"}
    )


# ---- restarts: counters come from the devices, so a crash does not reset them ---------------

RESTART_PROMETHEUS = """
global: {{scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}}
scrape_configs:
  - job_name: fleet
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
"""
DEVICE_COUNTERS = (
    "lektrico_energy_joules_total",
    "lektrico_sessions_total",
    "lektrico_charging_duration_seconds_total",
    "lektrico_resets_total",
)


def exporter_config(
    path: Path, port: int, devices: list[dict[str, Any]], poll: dict[str, Any], **extra: Any
) -> Path:
    path.write_text(
        yaml.safe_dump({"listen": f"127.0.0.1:{port}", "devices": devices, "poll": poll, **extra})
    )
    return path


async def series_count(prom: Prometheus, promql: str, count: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while len(await prom.query(promql)) < count:
        assert time.monotonic() < deadline, f"{promql}: fewer than {count} series in time"
        await asyncio.sleep(0.25)


def values(result: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"].get("device", ""): float(r["value"][1]) for r in result}


@pytest.mark.server
@pytest.mark.timeout(120)
async def test_counters_never_reset_in_prometheus_when_the_exporter_is_killed(
    tmp_path: Path, make_fleet: FleetFactory, procs: Processes
) -> None:
    profiles = ["1p7k", "1p7k-old", "1p7k-partial", "3p22k"]
    # 600 simulated seconds a second: energy, charging time and sessions grow during the test.
    fleet = await make_fleet(
        [DeviceSpec(f"c{i}", p, seed=i) for i, p in enumerate(profiles * 2)], speed=600.0
    )
    port = free_port()
    devices = [{"name": n, "host": fleet.host(n)} for n in fleet.names]
    poll = {"interval": "1s", "timeout": "500ms", "slow_interval": "2s"}
    config = exporter_config(tmp_path / "exporter.yaml", port, devices, poll)
    exporter = await start_exporter(procs, config, port, "exporter-0")
    prom = Prometheus(tmp_path / "prom", RESTART_PROMETHEUS.format(port=port))
    await prom.start()
    try:
        await series_count(prom, "lektrico_sessions_total", len(devices), 20)
        started = time.monotonic()
        for restart in (1, 2):
            await asyncio.sleep(4)
            procs.kill(exporter)  # SIGKILL: no shutdown, no flush, nothing saved
            await asyncio.sleep(2.5)  # Prometheus fails at least two scrapes
            exporter = await start_exporter(procs, config, port, f"exporter-{restart}")
        await asyncio.sleep(5)
        window = f"[{int(time.monotonic() - started) + 5}s]"

        # The exporter's own counter restarted from zero twice, and Prometheus saw it: the
        # query below would see a device counter reset too.
        own = await prom.query(f"resets(lektrico_polls_total{window})")
        assert own and float(own[0]["value"][1]) >= 2, own
        assert values(await prom.query(f"min_over_time(up{window})")) == {"": 0.0}
        for counter in DEVICE_COUNTERS:
            resets = values(await prom.query(f"resets({counter}{window})"))
            assert resets, counter
            assert set(resets.values()) == {0.0}, (counter, resets)
            if counter in ("lektrico_energy_joules_total", "lektrico_sessions_total"):
                assert set(resets) == set(fleet.names), (counter, resets)
        energy = values(await prom.query(f"increase(lektrico_energy_joules_total{window})"))
        assert max(energy.values()) > 0, energy
    finally:
        await prom.stop()
        procs.kill_all()


# ---- concurrency: scrapes from everywhere during reloads see whole device blocks ------------

CONCURRENT_PROMETHEUS = """
global: {{scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}}
scrape_configs:
  - job_name: fleet
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
  - job_name: probe
    metrics_path: /probe
    static_configs: [{{targets: {targets}}}]
    relabel_configs:
      - {{source_labels: [__address__], target_label: __param_target}}
      - {{source_labels: [__param_target], target_label: instance}}
      - {{target_label: __address__, replacement: "127.0.0.1:{port}"}}
"""
_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


@dataclass
class Block:
    """One device's part of an exposition: its families, its user labels and its up value."""

    families: set[str] = field(default_factory=set)
    labels: set[tuple[tuple[str, str], ...]] = field(default_factory=set)
    up: list[float] = field(default_factory=list)


def device_blocks(body: str) -> dict[str, Block]:
    """Group every device series of an exposition by device; a metric's own labels (from the
    catalogue) are set aside so that what remains are the device's configured labels."""
    blocks: dict[str, Block] = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"unparseable line {line!r}"
        name, label_text, value = match.groups()
        labels = dict(LABEL.findall(label_text or ""))
        device = labels.pop("device", None)
        if device is None:
            continue  # the exporter's own metrics
        own = set(cat.BY_NAME[name].labels)
        block = blocks.setdefault(device, Block())
        block.families.add(name)
        block.labels.add(tuple(sorted((k, v) for k, v in labels.items() if k not in own)))
        if name == "lektrico_up":
            block.up.append(float(value))
    return blocks


def families_once(body: str) -> list[str]:
    """Family names whose # TYPE line appears more than once (a split family)."""
    seen = Counter(line.split()[2] for line in body.splitlines() if line.startswith("# TYPE "))
    return [name for name, n in seen.items() if n > 1]


async def promtool_check(promtool: str, bodies: Iterable[str]) -> list[str]:
    """promtool check metrics on each distinct body; the complaints (empty when all pass)."""
    problems: list[str] = []
    sem = asyncio.Semaphore(2)

    async def check(body: str) -> None:
        async with sem:
            proc = await asyncio.create_subprocess_exec(
                promtool,
                "check",
                "metrics",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(body.encode()), 30)
            if proc.returncode != 0 or out.strip():
                problems.append(out.decode(errors="replace")[:300])

    await asyncio.gather(*(check(b) for b in set(bodies)))
    return problems


@dataclass
class Capture:
    path: str
    sent: float
    done: float
    status: int
    body: str


async def capture_loop(
    session: aiohttp.ClientSession,
    base: str,
    paths: Sequence[str],
    until: float,
    out: list[Capture],
    limit: int,
) -> None:
    """Fetch the paths in turn until `until` or `limit` captures, gzip every other time."""
    i = 0
    while time.monotonic() < until and len(out) < limit:
        path = paths[i % len(paths)]
        headers = {"Accept-Encoding": "gzip" if i % 2 else "identity"}
        sent = time.monotonic()
        async with session.get(base + path, headers=headers, auto_decompress=False) as resp:
            raw = await resp.read()
            if resp.headers.get("Content-Encoding") == "gzip":
                raw = gzip.decompress(raw)
            out.append(Capture(path, sent, time.monotonic(), resp.status, raw.decode()))
        i += 1
        await asyncio.sleep(0.1)


async def toggle_fault(fleet: Any, name: str, until: float) -> None:
    """Up, down, up...: the device's block changes shape while everyone scrapes."""
    modes = ("reset", "none")
    i = 0
    while time.monotonic() < until:
        fleet.set_fault(name, modes[i % 2])
        i += 1
        await asyncio.sleep(0.7)
    fleet.set_fault(name, "none")


@pytest.mark.server
@pytest.mark.timeout(150)
async def test_two_prometheus_and_a_reload_see_only_whole_device_blocks(
    tmp_path: Path, make_fleet: FleetFactory, procs: Processes
) -> None:
    promtool = require_binary("/usr/bin/promtool")
    profiles = ["1p7k", "1p7k-old", "1p7k-partial", "3p22k", "em", "3em"]
    specs = [DeviceSpec(f"d{i}", p, seed=i) for i, p in enumerate(profiles * 2)]
    specs += [DeviceSpec("hang", "1p7k", fault="hang"), DeviceSpec("flip", "3p22k", seed=99)]
    specs += [DeviceSpec("late", "em", seed=7)]  # configured only by the reload
    fleet = await make_fleet(specs, frozen=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def devices(reloaded: bool) -> list[dict[str, Any]]:
        names = [n for n in fleet.names if n != "late"]
        if reloaded:
            names = [n for n in names if n != "d0"] + ["late"]  # one leaves, one arrives
        site = {"d1": "moved"} if reloaded else {}  # one changes its labels
        return [
            {"name": n, "host": fleet.host(n), "labels": {"site": site.get(n, "home")}}
            for n in names
        ]

    poll = {"interval": "1s", "timeout": "400ms"}
    extra = {"probe": {"allow": ["127.0.0.1/32"]}, "web": {"enable_lifecycle": True}}
    config = exporter_config(tmp_path / "exporter.yaml", port, devices(False), poll, **extra)
    await start_exporter(procs, config, port, "exporter")
    # d0 (configured, then not) and late (the other way round) are probed by address, which
    # probe.allow admits either way; the others by name.
    by_address = ("d0", "late")
    targets = [fleet.host(n) if n in by_address else n for n in fleet.names]
    proms = [
        Prometheus(
            tmp_path / f"prom{i}",
            CONCURRENT_PROMETHEUS.format(port=port, targets=json.dumps(targets)),
        )
        for i in (1, 2)
    ]
    await asyncio.gather(*(p.start() for p in proms))
    captures: list[Capture] = []
    reloads: list[tuple[float, float, int]] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await wait_until_up(session, base, len(fleet.names) - 2, 15)
            # A first poll leaves slow methods to the next polls, two a poll: until they are
            # in, a device's families grow.
            await asyncio.sleep(FIRST_POLLS_SETTLE)
            t0 = time.monotonic()
            until = t0 + 12
            probes = [f"/probe?target={t}" for t in targets]
            loops = [
                capture_loop(session, base, ["/metrics"], until, captures, 400),
                capture_loop(session, base, ["/metrics"], until, captures, 400),
                capture_loop(session, base, probes, until, captures, 400),
                capture_loop(session, base, probes[::-1], until, captures, 400),
                toggle_fault(fleet, "flip", until),
            ]

            async def reload_twice() -> None:
                for at, reloaded in ((4, True), (8, False)):
                    await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
                    exporter_config(config, port, devices(reloaded), poll, **extra)
                    sent = time.monotonic()
                    async with session.post(base + "/-/reload") as resp:
                        reloads.append((sent, time.monotonic(), resp.status))

            await asyncio.gather(*loops, reload_twice())
        window = f"[{int(time.monotonic() - t0) + 2}s]"
        scrapes = [await prom.query(f"min_over_time(up{window})") for prom in proms]
        own = [await prom_self_metrics(prom) for prom in proms]
    finally:
        await asyncio.gather(*(p.stop() for p in proms))

    assert [status for _, _, status in reloads] == [200, 200]
    assert all(c.status == 200 for c in captures), Counter(c.status for c in captures)
    metrics = [c for c in captures if c.path == "/metrics"]
    probes_seen = [c for c in captures if c.path != "/metrics"]
    assert len(metrics) >= 30 and len(probes_seen) >= 30, (len(metrics), len(probes_seen))
    assert await promtool_check(promtool, (c.body for c in captures)) == []
    assert [c.path for c in captures if families_once(c.body)] == []

    # Every block is whole: a device that is up has the same families in every body (its
    # replies are frozen), a device that is down has its health families only, and all the
    # series of one device carry the same labels (old or new, never a mix).
    up_families: dict[tuple[str, str], set[str]] = {}
    first_seen: dict[str, float] = {}  # ad-hoc probes (by address) poll at every probe
    for c in captures:
        blocks = device_blocks(c.body)
        if c.path != "/metrics":
            assert len(blocks) == 1, (c.path, list(blocks))
        for device, block in blocks.items():
            assert len(block.up) == 1, (c.path, device, block.up)
            assert len(block.labels) == 1, (c.path, device, block.labels)
            if block.up[0] == 0:
                assert block.families <= HEALTH, (c.path, device, block.families - HEALTH)
                continue
            seen = first_seen.setdefault(device, c.sent)
            if arriving(device, c, reloads) or (":" in device and c.sent < seen + 1.0):
                continue  # its first polls: its families grow until its slow methods are in
            key = ("metrics" if c.path == "/metrics" else "probe", device)
            expected = up_families.setdefault(key, block.families)
            assert block.families == expected, (c.path, device, block.families ^ expected)
        if c.path == "/metrics":
            assert_reload_respected(c, blocks, reloads)
    assert {"d0", "late"} <= {d for _, d in up_families}

    # Both Prometheus servers: every scrape of every target succeeded, no sample refused.
    for ups, counters in zip(scrapes, own, strict=True):
        assert len(ups) == len(targets) + 1  # the probes and /metrics
        failed = [r["metric"] for r in ups if float(r["value"][1]) != 1]
        assert failed == [], f"scrapes failed: {failed}"
        for name in (
            "prometheus_target_scrapes_sample_duplicate_timestamp_total",
            "prometheus_target_scrapes_sample_out_of_order_total",
            "prometheus_target_scrapes_sample_out_of_bounds_total",
        ):
            assert counters.get(name, 0.0) == 0.0, (name, counters.get(name))
    # The test saw what it meant to: the flipping device both ways, and bodies from between
    # the reloads (so the reload was seen, not just survived).
    flip = {device_blocks(c.body)["flip"].up[0] for c in metrics if "flip" in c.body}
    assert flip == {0.0, 1.0}, flip
    between = [c for c in metrics if reloads[0][1] < c.sent and c.done < reloads[1][0]]
    settled = [c for c in between if c.sent > reloads[0][1] + 1.5]  # late's first poll is done
    assert settled and all("late" in device_blocks(c.body) for c in settled)
    print(
        f"{len(metrics)} /metrics and {len(probes_seen)} /probe bodies, "
        f"{len({c.body for c in captures})} distinct, {len(between)} between the reloads"
    )


FIRST_POLLS_SETTLE = 3.5  # s: three polls at 1 s, the slow methods of a first poll are all in


def arriving(device: str, c: Capture, reloads: list[tuple[float, float, int]]) -> bool:
    """A device the reloads (re)added, or gave new labels, in its first polls after that."""
    (_, e1, _), (_, e2, _) = reloads
    after_first = e1 < c.done and c.sent < e1 + FIRST_POLLS_SETTLE
    after_second = e2 < c.done and c.sent < e2 + FIRST_POLLS_SETTLE
    if device == "late":
        return c.sent < e1 + FIRST_POLLS_SETTLE
    if device == "d0":
        return after_second
    if device == "flip":
        # Reset at any moment: a method after the main one that it cuts off is left out of
        # that reading (only its own values), and asked again two a poll once it is back.
        return True
    return device == "d1" and (after_first or after_second)


def assert_reload_respected(
    c: Capture, blocks: dict[str, Block], reloads: list[tuple[float, float, int]]
) -> None:
    """Before the first reload d0 is there and late is not; between the reloads the other way
    round, with d1's new label; after the second as before. A device that leaves is gone from
    the next body; one that arrives is there after its first poll (1.5 s); a body fetched while
    a reload ran may show either config."""
    (s1, e1, _), (s2, e2, _) = reloads
    site = dict(next(iter(blocks["d1"].labels))).get("site") if "d1" in blocks else None
    settled = 1.5
    if c.done < s1:
        assert "d0" in blocks and "late" not in blocks and site == "home", c.sent
    elif e1 < c.sent and c.done < s2:
        assert "d0" not in blocks and site in (None, "moved"), c.sent
        assert "late" in blocks or c.sent < e1 + settled, c.sent
    elif c.sent > e2:
        assert "late" not in blocks and site in (None, "home"), c.sent
        assert "d0" in blocks or c.sent < e2 + settled, c.sent


async def wait_until_up(
    session: aiohttp.ClientSession, base: str, count: int, seconds: float
) -> None:
    deadline = time.monotonic() + seconds
    while True:
        async with session.get(base + "/metrics") as resp:
            blocks = device_blocks(await resp.text())
        if sum(1 for b in blocks.values() if b.up == [1.0]) >= count:
            return
        assert time.monotonic() < deadline, "devices not up in time"
        await asyncio.sleep(0.2)


async def prom_self_metrics(prom: Prometheus) -> dict[str, float]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(prom.url + "/metrics") as resp,
    ):
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("prometheus_target_scrapes_"):
            name, _, value = line.rpartition(" ")
            out[name.partition("{")[0]] = out.get(name.partition("{")[0], 0.0) + float(value)
    return out
