"""Reliability under faults, restarts and concurrent load (issue 7, items 1, 5 and 6).

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

`FleetRun` is also what bench/soak.py drives for the long soak.

Every loop is bounded in count and time, all traffic stays on 127.0.0.0/8, and every process
started here is killed at the end, also when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
import yaml

from exporter.catalogue import table as cat
from exporter.catalogue.selfmetrics import SelfMetrics
from exporter.device.client import DeviceClient
from exporter.device.poller import DevicePoller, DeviceState, PollSettings, Target
from exporter.simulator.server import DeviceSpec

from .conftest import FleetFactory
from .servers import Prometheus, require_binary

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MIX = ("1p7k", "3p22k", "em", "3em")
METERS = frozenset({"em", "3em"})
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
)
# The reason a device with each fault must be down for (garbage and slow are checked apart).
DOWN_REASON = {"hang": "timeout", "reset": "connect", "nonjson": "json", "flap": "connect"}


# ---- processes -------------------------------------------------------------------------------


class Processes:
    """Children started here, each leading its own process group; `kill_all` ends every one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: dict[int, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(
        self, args: Sequence[str], name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = (self.workdir / f"{name}.out").open("ab")
        err = (self.workdir / f"{name}.err").open("ab")
        self._logs += [out, err]
        proc = subprocess.Popen(
            list(args),
            cwd=ROOT,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.running[proc.pid] = proc
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the process group at once, as a crash or the OOM killer would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self.running.pop(proc.pid, None)

    async def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `grace` seconds; the exit code."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, grace)
        code = proc.poll()
        self.kill(proc)  # also reaps workers left in the group
        return code if code is not None else -9

    def kill_all(self) -> None:
        for proc in list(self.running.values()):
            self.kill(proc)
        for log in self._logs:
            log.close()
        self._logs.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def log_problems(text: str) -> list[str]:
    """Lines of an exporter log that show an unhandled exception or an error."""
    return [
        line
        for line in text.splitlines()
        if "Traceback" in line or "level=error" in line or line.startswith("ERROR")
    ]


async def wait_http(url: str, seconds: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until `url` answers 200, at most `seconds`; fails early if `proc` exits."""
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready within {seconds:g}s")
            await asyncio.sleep(0.1)


# ---- the exposition, read fast (a 1,000-device body is parsed in this process every sample) --

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
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
        labels = dict(_LABEL.findall(head))
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
        self.exporter = self.procs.start(
            [PY, "-m", "exporter", "--config", str(config)], "exporter"
        )
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        await wait_http(f"http://127.0.0.1:{port}/-/ready", 30, self.exporter)

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
            deadline = time.monotonic() + 60 + self.devices / 100
            while sim.poll() is None and time.monotonic() < deadline:
                if b"simulating" in (self.workdir / f"{name}.out").read_bytes():
                    self.simulator = sim
                    return
                await asyncio.sleep(0.1)
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
    async with aiohttp.ClientSession() as session:
        twin = DeviceState(Target("c1", fleet.url("c1")), DeviceClient(session, fleet.url("c1")))
        st = DeviceState(Target("c1", fleet.url("c1")), DeviceClient(session, fleet.url("c1")))
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


async def start_exporter(
    procs: Processes, config: Path, port: int, name: str
) -> subprocess.Popen[bytes]:
    proc = procs.start([PY, "-m", "exporter", "--config", str(config)], name)
    await wait_http(f"http://127.0.0.1:{port}/-/ready", 30, proc)
    return proc


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
        labels = dict(_LABEL.findall(label_text or ""))
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
