"""The fault-matrix fleet: N simulated devices with a seeded fault mix, polled by an exporter.

The simulator CLI serves the fleet from its own processes, one loopback address per device; of
the devices (by default) 10 % hang, 5 % reset, 2.5 % answer garbage (wrong value types),
2.5 % non-JSON, 5 % answer just under the timeout and 2 % flap. The exporter runs as
`python -m exporter` in its own process, so the CPU, file descriptors and memory read from /proc
are its own. `FleetRun` starts both and samples /metrics and /proc (`Snapshot`); `judge` turns
the samples of a window into a `Verdict`, whose `failures()` list the promises that broke:
healthy polls on time, every faulty device down for the right reason, a log free of tracebacks
and errors, and flat fds and RSS.

tests/test_reliability.py runs it for a minute; bench/soak.py for as long as asked.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from harness.processes import PY, Processes, free_port, start_exporter
from harness.procfs import cpu_seconds, fd_count, rss_bytes

MIX = ("1p7k", "3p22k", "em", "3em")
METERS = frozenset({"em", "3em"})
# The reason a device with each fault must be down for (garbage and slow are checked apart).
DOWN_REASON = {"hang": "timeout", "reset": "connect", "nonjson": "json", "flap": "connect"}


def log_problems(text: str) -> list[str]:
    """Lines of an exporter log that show an unhandled exception or an error."""
    return [
        line
        for line in text.splitlines()
        if "Traceback" in line or "level=error" in line or line.startswith("ERROR")
    ]


# ---- the exposition, read fast (a 1,000-device body is parsed in this process every sample) --

LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
WANTED = (
    "lektrico_up{",
    "lektrico_last_poll_success_timestamp_seconds{",
    "lektrico_poll_errors_total{",
    "lektrico_values_dropped_total{",
    "lektrico_polls_total ",
    "lektrico_polls_late_total ",
)


@dataclass
class Snapshot:
    """What one scrape of /metrics said, for the families the fault matrix reads."""

    time: float  # unix time the scrape was sent
    up: dict[str, float] = field(default_factory=dict)
    last_success: dict[str, float] = field(default_factory=dict)
    errors: dict[str, Counter[str]] = field(default_factory=dict)
    dropped: dict[str, float] = field(default_factory=dict)
    polls: float = 0.0
    late: float = 0.0
    fds: int = 0
    rss: int = 0
    cpu: float = 0.0  # the exporter's CPU seconds so far


def parse_snapshot(body: str, sent: float) -> Snapshot:
    snap = Snapshot(sent)
    for line in body.splitlines():
        if not line.startswith(WANTED):
            continue
        head, _, value_text = line.rpartition(" ")
        value = float(value_text)
        if head == "lektrico_polls_total":
            snap.polls = value
            continue
        if head == "lektrico_polls_late_total":
            snap.late = value
            continue
        name = head.partition("{")[0]
        labels = dict(LABEL.findall(head))
        device = labels["device"]
        if name == "lektrico_up":
            snap.up[device] = value
        elif name == "lektrico_last_poll_success_timestamp_seconds":
            snap.last_success[device] = value
        elif name == "lektrico_poll_errors_total":
            snap.errors.setdefault(device, Counter())[labels["reason"]] = int(value)
        else:
            snap.dropped[device] = snap.dropped.get(device, 0.0) + value
    return snap


# ---- a fleet with a fault mix, and the exporter polling it -----------------------------------


@dataclass(frozen=True)
class Mix:
    """Shares of the fleet per fault; slow devices are meters (one request per steady poll)."""

    hang: float = 0.10
    reset: float = 0.05
    garbage: float = 0.025
    nonjson: float = 0.025
    slow: float = 0.05
    flap: float = 0.02


def device_names(n: int) -> list[str]:
    width = max(4, len(str(n)))  # as `simulate` names them
    return [f"sim-{i + 1:0{width}d}" for i in range(n)]


def plan_faults(n: int, mix: Mix, seed: int) -> dict[str, str]:
    """Fault class per device name ("none" for healthy), seeded and reproducible."""
    names = device_names(n)
    profile = {name: MIX[i % len(MIX)] for i, name in enumerate(names)}
    rng = random.Random(seed)
    order = names[:]
    rng.shuffle(order)
    plan = dict.fromkeys(names, "none")
    meters = [name for name in order if profile[name] in METERS]
    for name in meters[: round(mix.slow * n)]:
        plan[name] = "slow"
    rest = [name for name in order if plan[name] == "none"]
    for fault in ("hang", "reset", "garbage", "nonjson", "flap"):
        count = round(getattr(mix, fault) * n)
        for name in rest[:count]:
            plan[name] = fault
        rest = rest[count:]
    return plan


@dataclass
class FleetRun:
    """N simulated devices (simulator CLI) polled by an exporter process; samples and verdicts.

    Slow devices answer normally until `arm_slow()`: a device's first poll asks for its identity,
    settings and counters (five requests for a meter, ~11 for a charger) and the timeout bounds
    the whole poll, so "answers just under the timeout" is a property of the steady-state poll,
    one Meter_info.Get a meter.
    """

    workdir: Path
    procs: Processes
    devices: int = 1000
    interval: float = 10.0
    timeout: float = 2.0
    concurrency: int = 64
    sim_processes: int = 2
    mix: Mix = field(default_factory=Mix)
    flap_seconds: float = 15.0
    slow_share_of_timeout: float = 0.85
    seed: int = 7
    plan: dict[str, str] = field(default_factory=dict)
    exporter: subprocess.Popen[bytes] | None = None
    simulator: subprocess.Popen[bytes] | None = None
    control: str = ""
    metrics_url: str = ""

    def of(self, fault: str) -> list[str]:
        return [name for name, f in self.plan.items() if f == fault]

    async def start(self) -> None:
        self.plan = plan_faults(self.devices, self.mix, self.seed)
        await self._start_simulator()
        port = free_port()
        config = self.workdir / "exporter.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "listen": f"127.0.0.1:{port}",
                    "device_files": ["targets.yaml"],
                    "poll": {
                        "interval": self.interval,
                        "timeout": self.timeout,
                        "concurrency": self.concurrency,
                        "slow_interval": "1h",
                        "identity_interval": "1h",
                        "max_backoff": "1m",
                    },
                }
            )
        )
        self.exporter = await start_exporter(self.procs, config, port, "exporter")
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"

    async def _start_simulator(self) -> None:
        faults = {
            "hang": "hang",
            "reset": "reset",
            "garbage": "garbage",
            "nonjson": "nonjson",
            "flap": f"flap:{self.flap_seconds:g}",
        }
        args = [f"--fault={name}={faults[f]}" for name, f in self.plan.items() if f in faults]
        rng = random.Random()
        for attempt in range(3):  # another test run may hold the chosen addresses
            base = f"127.{rng.randrange(64, 250)}.{rng.randrange(0, 200)}.1"
            self.control = f"127.0.0.1:{free_port()}"
            name = f"simulator-{attempt}"
            sim = self.procs.start(
                [
                    PY,
                    "-m",
                    "exporter",
                    "simulate",
                    f"--devices={self.devices}",
                    f"--mix={','.join(MIX)}",
                    f"--address-base={base}",
                    f"--port={rng.randrange(20000, 60000)}",
                    f"--processes={self.sim_processes}",
                    f"--targets-file={self.workdir / 'targets.yaml'}",
                    f"--control={self.control}",
                    f"--seed={self.seed}",
                    *args,
                ],
                name,
            )
            if await self.procs.wait_output(sim, name, b"simulating", 60 + self.devices / 100):
                self.simulator = sim
                return
            await self.procs.stop(sim)
        raise RuntimeError(f"the simulator did not start; see {self.workdir}")

    async def arm_slow(self, session: aiohttp.ClientSession) -> None:
        mode = f"slow:{self.timeout * self.slow_share_of_timeout:g}"
        for name in self.of("slow"):
            async with session.post(
                f"http://{self.control}/devices/{name}/fault", json={"mode": mode}
            ) as resp:
                assert resp.status == 200, await resp.text()

    async def calls(self, session: aiohttp.ClientSession) -> dict[str, int]:
        """Main-method requests each device has received so far (the simulator's count)."""
        async with session.get(f"http://{self.control}/calls") as resp:
            by_device = (await resp.json())["by_device"]
        return {
            name: sum(n for m, n in methods.items() if m.lower() in MAIN_METHODS)
            for name, methods in by_device.items()
        }

    async def sample(self, session: aiohttp.ClientSession) -> Snapshot:
        assert self.exporter is not None
        sent = time.time()
        async with session.get(self.metrics_url) as resp:
            body = await resp.text()
        snap = parse_snapshot(body, sent)
        pid = self.exporter.pid
        snap.fds, snap.rss, snap.cpu = fd_count(pid), rss_bytes(pid), cpu_seconds(pid)
        return snap

    async def warm_up(self, session: aiohttp.ClientSession, seconds: float) -> Snapshot:
        """Until every device has been polled and every device meant to be up is up."""
        should_be_up = set(self.of("none")) | set(self.of("slow"))
        deadline = time.monotonic() + seconds
        while True:
            snap = await self.sample(session)
            polled = len(snap.up) == self.devices
            if polled and all(snap.up.get(name) == 1 for name in should_be_up):
                return snap
            if time.monotonic() > deadline:
                down = sorted(n for n in should_be_up if snap.up.get(n) != 1)
                raise AssertionError(f"not up after warm-up: {len(down)} devices: {down[:10]}")
            await asyncio.sleep(1.0)

    def log(self) -> str:
        return (self.workdir / "exporter.err").read_text(errors="replace")

    def log_out(self) -> str:
        return (self.workdir / "exporter.out").read_text(errors="replace")


MAIN_METHODS = frozenset({"charger_info.get", "meter_info.get"})


@dataclass
class Verdict:
    """The fault matrix's findings over one window; `failures()` lists what broke a promise."""

    on_time: float  # share of healthy (device, sample) pairs whose last success was current
    polls_per_device_ok: float  # share of healthy devices the simulator saw polled every interval
    late_ratio: float  # the exporter's own lektrico_polls_late_total / lektrico_polls_total
    slow_up: float  # share of (slow device, sample) pairs that were up
    wrong: list[str]  # faulty devices not down for the right reason
    problems: list[str]  # log lines with a traceback or an error
    fds: list[int]
    rss: list[int]
    fd_growth: int
    rss_growth: int
    fd_bound: int
    rss_bound: int
    cpu: float  # the exporter's share of one core over the window

    def failures(self, min_on_time: float = 0.995) -> list[str]:
        out = []
        if self.on_time < min_on_time:
            out.append(f"healthy polls on time {self.on_time:.4f} < {min_on_time}")
        if self.polls_per_device_ok < min_on_time:
            out.append(f"healthy devices polled every interval {self.polls_per_device_ok:.4f}")
        if self.late_ratio > 1 - min_on_time:
            out.append(f"late polls {self.late_ratio:.4f} > {1 - min_on_time:.4f}")
        if self.slow_up < min_on_time:
            out.append(f"slow devices up {self.slow_up:.4f} < {min_on_time}")
        if self.wrong:
            out.append(f"{len(self.wrong)} faulty devices wrong: {self.wrong[:8]}")
        if self.problems:
            out.append(f"log: {self.problems[:3]}")
        if self.fd_growth > self.fd_bound:
            out.append(f"fds grew by {self.fd_growth} > {self.fd_bound}: {self.fds}")
        if self.rss_growth > self.rss_bound:
            out.append(f"RSS grew by {self.rss_growth / 2**20:.1f} MiB: {mib(self.rss)}")
        return out


def mib(values: Iterable[int]) -> list[float]:
    return [round(v / 2**20, 1) for v in values]


def growth(times: Sequence[float], values: Sequence[int]) -> float:
    """How much `values` grew over the window, by least squares: a leak is a steady climb,
    while open connections come and go around a level (hundreds of fds up and down)."""
    if len(values) < 2:
        return 0.0
    slope = statistics.linear_regression(times, values).slope
    return slope * (times[-1] - times[0])


def floor_growth(values: Sequence[int]) -> int:
    """How much the floor rose from the first half of the window to the second. Open device
    connections swing fds by hundreds in step with the poll interval, which can tilt a
    regression line; a leak raises the floor, which those swings never go below."""
    if len(values) < 4:
        return 0
    half = len(values) // 2
    return min(values[half:]) - min(values[:half])


def judge(
    run: FleetRun,
    snaps: Sequence[Snapshot],
    calls_before: dict[str, int],
    calls_after: dict[str, int],
    window: float,
    *,
    fd_bound: int = 64,
    rss_bound: int = 8 * 2**20,
) -> Verdict:
    healthy = run.of("none")
    slow = run.of("slow")
    # A healthy poll is on time when the device's last success is at most one interval (and a
    # second of scheduling slack) old whenever we look: a poll that starts late, fails or is
    # skipped shows as an older timestamp.
    limit = run.interval + 1.0
    pairs = [(s, n) for s in snaps for n in healthy]
    fresh = sum(1 for s, n in pairs if s.time - s.last_success.get(n, 0.0) <= limit)
    due = int(window // run.interval)
    polled = sum(1 for n in healthy if calls_after.get(n, 0) - calls_before.get(n, 0) >= due)
    first, last = snaps[0], snaps[-1]
    polls = last.polls - first.polls
    late_ratio = (last.late - first.late) / polls if polls else 1.0
    slow_pairs = [(s, n) for s in snaps for n in slow]
    slow_up = sum(1 for s, n in slow_pairs if s.up.get(n) == 1) / max(1, len(slow_pairs))
    wrong = [*faulty_devices_wrong(run, snaps)]
    fds = [s.fds for s in snaps]
    rss = [s.rss for s in snaps]
    times = [s.time for s in snaps]
    return Verdict(
        on_time=fresh / max(1, len(pairs)),
        polls_per_device_ok=polled / max(1, len(healthy)),
        late_ratio=late_ratio,
        slow_up=slow_up,
        wrong=wrong,
        problems=log_problems(run.log()) + log_problems(run.log_out()),
        fds=fds,
        rss=rss,
        fd_growth=floor_growth(fds),
        rss_growth=int(growth(times, rss)),
        fd_bound=fd_bound,
        rss_bound=rss_bound,
        cpu=(last.cpu - first.cpu) / max(1e-9, last.time - first.time),
    )


def faulty_devices_wrong(run: FleetRun, snaps: Sequence[Snapshot]) -> Iterable[str]:
    first, last = snaps[0], snaps[-1]
    for name, fault in run.plan.items():
        if fault in ("hang", "reset", "nonjson"):
            reason = DOWN_REASON[fault]
            ups = {s.up.get(name) for s in snaps}
            errors = last.errors.get(name, Counter())
            others = {r: n for r, n in errors.items() if r != reason and n}
            if ups != {0.0} or errors[reason] == 0 or others:
                yield f"{name} ({fault}): up {ups}, errors {dict(errors)}"
        elif fault == "flap":
            # Up and down in turn, every failure a connection reset, and it kept being polled.
            seq = [s.up.get(name) for s in snaps]
            turns = sum(1 for a, b in itertools.pairwise(seq) if a != b)
            errors = last.errors.get(name, Counter())
            others = {r: n for r, n in errors.items() if r != "connect" and n}
            grew = errors["connect"] > first.errors.get(name, Counter())["connect"]
            if turns < 2 or others or not grew:
                yield f"{name} (flap): up {seq}, errors {dict(errors)}"
        elif fault == "garbage":
            # Wrong value types: either the device is down for a reason, or it is up and every
            # value it could not trust was dropped and counted. Never up with nothing dropped.
            up = last.up.get(name)
            errors = last.errors.get(name, Counter())
            if up == 1 and not last.dropped.get(name):
                yield f"{name} (garbage): up with no value dropped"
            if up == 0 and not sum(errors.values()):
                yield f"{name} (garbage): down without a reason"


async def run_fault_matrix(
    run: FleetRun, window: float, step: float, warm_up: float
) -> tuple[Verdict, list[Snapshot]]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t = time.monotonic()
        await run.start()
        started = time.monotonic() - t
        await run.warm_up(session, warm_up)
        print(f"fleet and exporter started in {started:.1f}s, warm in {time.monotonic() - t:.1f}s")
        await run.arm_slow(session)
        snaps: list[Snapshot] = []
        calls_before = await run.calls(session)
        t0 = time.monotonic()
        for _ in range(int(window / step) + 1):
            snaps.append(await run.sample(session))
            await asyncio.sleep(max(0.0, t0 + len(snaps) * step - time.monotonic()))
        calls_after = await run.calls(session)
        elapsed = time.monotonic() - t0
    return judge(run, snaps, calls_before, calls_after, elapsed), snaps
