"""The performance benchmark: one command, every figure of issue 6, side by side with references.

    .venv/bin/python bench/run.py              # N = 1000, 5000, 10000, 20000 (about 15 min)
    .venv/bin/python bench/run.py --sizes 50 --interval 3 --duration 3      # a quick check

For each fleet size N, on this machine and over real loopback sockets:

1. the simulator serves N devices from `--sim-processes` worker processes, each device on its
   own 127.x.y.z address (Linux routes all of 127.0.0.0/8 to lo);
2. the exporter runs as its own process (`python -m exporter --config <generated>`) polling them
   every `--interval` seconds. The window starts once every device has finished its first,
   heavier poll (identity and slow methods), not before one full interval and not later than
   `--settle-timeout` after the exporter is ready (a window started unsettled says so). Over the
   `--duration` s window: polls/s and the share on time (lektrico_polls_total,
   lektrico_polls_late_total), the exporter's CPU seconds per 1,000 polls and RSS (/proc),
   HTTP requests per device per poll (lektrico_device_requests_total, checked against the
   simulator's own call counts), and the load of the machine;
3. `/metrics` is scraped up to `--scrapes` times plain and as many gzip, timed client-side;
   `/probe` takes a burst of `--probe-requests` requests (at most `--probe-seconds`) at
   concurrency 16, by device address (host:port);
4. the exporter stops and the floor runs: a bare aiohttp client in its own process, on the
   exporter's runtime (uvloop, the same GC settings), fetching each device's main method
   (Charger_info.Get, or Meter_info.Get for meters) from the same devices, one connection per
   request as a 15 s poller needs, and json.loads of each reply: flat out at the same
   concurrency for the same duration, then paced at the exporter's own rate (N / interval);
   then the exporter polls flat out (the same devices due every max(0.2, N / 8000) s, more
   than it can poll) for its capacity, the figure to put beside the floor flat out;
5. in this process, on the samples of the last plain scrape: a prometheus_client registry of
   Gauges and Counters holding the same samples, rendered with generate_latest; the exporter's
   own Exposition fed the same samples, rendered the same way (no HTTP, no polls competing);
   and exporter.outputs.influx.lines.Serializer on the same samples as Readings.

RSS per device is (RSS at the end of the window - RSS of the same exporter with no devices) / N.
Every loop is bounded in count and time; every process started here is stopped at the end, also
on Ctrl-C, SIGTERM or an error. Traffic goes only to 127.0.0.0/8. Results: a table per N, a
verdict per target, bench/out/results.json and docs/performance.png. `--profile` also samples the
exporter with py-spy (if installed) for `--profile-seconds` after each window, outside it, and
ranks the exporter/*.py functions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import inspect
import ipaddress
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

SELF = Path(__file__).resolve()
ROOT = SELF.parent.parent
sys.path.insert(0, str(ROOT))

from exporter.catalogue import table as cat  # noqa: E402
from exporter.reading import Reading, Sample  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
DEFAULT_SIZES = (1000, 5000, 10000, 20000)
PROBE_CONCURRENCY = 16
MIX = "1p7k,3p22k,em,3em"
TARGET_N = 10_000
MAIN_METHOD_OF = {
    "1p7k": "Charger_info.Get",
    "3p22k": "Charger_info.Get",
    "em": "Meter_info.Get",
    "3em": "Meter_info.Get",
}
CADENCE = {m.name: m.cadence for m in cat.METHODS}


# ---- processes and /proc ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def proc_status(pid: int, key: str) -> int:
    """One number of /proc/PID/status, e.g. VmRSS (in kB) or Threads."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_bytes(pid: int) -> int:
    return proc_status(pid, "VmRSS") * 1024


def group_pids(pgid: int) -> list[int]:
    """Processes of one process group (the simulator and its workers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def group_cpu(pgid: int) -> float:
    total = 0.0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def machine_busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def append(path: Path) -> IO[bytes]:
    return open(path, "ab")


class Processes:
    """Every child started here, each the leader of its own process group, stopped at the end."""

    def __init__(self) -> None:
        self.running: dict[int, asyncio.subprocess.Process] = {}

    async def start(
        self, args: Sequence[str], log: Path, stdout: int | None = None
    ) -> asyncio.subprocess.Process:
        with append(log) as err:
            proc = await asyncio.create_subprocess_exec(
                *args,
                cwd=ROOT,
                stdout=stdout if stdout is not None else err,
                stderr=err,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.running[proc.pid] = proc
        return proc

    async def stop(self, proc: asyncio.subprocess.Process, grace: float = 15.0) -> None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds."""
        self.running.pop(proc.pid, None)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.wait_for(proc.wait(), 10)
        # Workers of the simulator are in the same group; none may outlive the benchmark.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    async def stop_all(self) -> None:
        for proc in list(self.running.values()):
            await self.stop(proc, grace=5.0)

    def kill_all_now(self) -> None:
        """Last resort (atexit, a second Ctrl-C): SIGKILL every group still registered."""
        for pid in list(self.running):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.running.clear()


# ---- the simulator and the exporter ----------------------------------------------------------


@dataclass
class Fleet:
    proc: asyncio.subprocess.Process
    control: str
    targets: list[dict[str, Any]]
    start_seconds: float


async def start_simulator(procs: Processes, n: int, opts: argparse.Namespace, out: Path) -> Fleet:
    targets_file = out / f"targets-{n}.yaml"
    control = f"127.0.0.1:{free_port()}"
    args = [
        sys.executable,
        "-m",
        "exporter",
        "simulate",
        "--devices",
        str(n),
        "--mix",
        MIX,
        "--address-base",
        opts.address_base,
        "--port",
        str(opts.device_port),
        "--processes",
        str(min(opts.sim_processes, n)),
        "--targets-file",
        str(targets_file),
        "--control",
        control,
        "--seed",
        "1",
    ]
    t0 = time.monotonic()
    proc = await procs.start(args, out / f"simulator-{n}.log", stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60 + n / 100)
    if not line.startswith(b"simulating"):
        raise RuntimeError(f"simulator did not start; see {out / f'simulator-{n}.log'}")
    import yaml  # the simulator's own dependency

    targets = yaml.load(
        targets_file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    )["devices"]
    return Fleet(proc, f"http://{control}", targets, time.monotonic() - t0)


def concurrency_for(n: int) -> int:
    # In flight = polls/s x latency; N // 20 leaves room for 0.75 s per poll at 15 s intervals.
    return min(max(64, n // 20), 10_000)


def write_config(
    path: Path,
    targets: list[dict[str, Any]],
    port: int,
    opts: argparse.Namespace,
    concurrency: int,
    timeout: float | None = None,
) -> None:
    config = {
        "listen": f"127.0.0.1:{port}",
        "devices": targets,
        "poll": {
            "interval": opts.interval,
            "timeout": min(5.0, opts.interval / 3) if timeout is None else timeout,
            "concurrency": concurrency,
        },
        "log": {"level": "warning"},
        # The session ledger is on, as by default; its store is the run's own, started empty.
        "state": {"path": str(path.with_suffix(".state.db"))},
    }
    for old in path.parent.glob(path.with_suffix(".state.db").name + "*"):
        old.unlink()
    # JSON is YAML, and far quicker to write and read for 20,000 devices.
    path.write_text(json.dumps(config))


async def start_exporter(
    procs: Processes,
    config: Path,
    port: int,
    log: Path,
    session: aiohttp.ClientSession,
    timeout: float,
) -> asyncio.subprocess.Process:
    proc = await procs.start([sys.executable, "-m", "exporter", "--config", str(config)], log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"exporter exited with {proc.returncode}; see {log}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(
                f"http://127.0.0.1:{port}/-/ready", timeout=aiohttp.ClientTimeout(total=2)
            ) as resp:
                if resp.status == 200:
                    return proc
        await asyncio.sleep(0.25)
    raise RuntimeError(f"exporter not ready within {timeout:.0f}s; see {log}")


# ---- measurements over HTTP ------------------------------------------------------------------

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
    exporter: asyncio.subprocess.Process,
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
    exporter: asyncio.subprocess.Process,
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
class Snapshot:
    time: float
    counters: dict[str, float]
    calls: dict[str, int]
    exporter_cpu: float
    sim_cpu: float
    machine: tuple[int, int]


async def snapshot(
    session: aiohttp.ClientSession, metrics_url: str, fleet: Fleet, exporter_pid: int, first: bool
) -> Snapshot:
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
    return Snapshot(t, self_counters(body), calls, cpu, sim, machine)


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


# ---- the bare aiohttp floor (runs in its own process: `run.py _floor ...`) --------------------


async def floor_client(
    urls: list[str], concurrency: int, seconds: float, rate: float = 0.0
) -> dict[str, float]:
    """Fetch the URLs in turn: as fast as `concurrency` workers can (rate 0, saturated), or
    paced at `rate` requests/s, as a poller sends them (each request then a task of its own)."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    ok = failed = 0
    index = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=5)
    ) as session:

        async def fetch(url: str) -> None:
            nonlocal ok, failed
            try:
                async with session.get(url) as r:
                    json.loads(await r.read())
                    ok, failed = (ok + 1, failed) if r.status == 200 else (ok, failed + 1)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                failed += 1

        async def worker() -> None:
            nonlocal index
            while time.monotonic() < deadline:
                url = urls[index % len(urls)]
                index += 1
                await fetch(url)

        async def paced() -> None:
            loop = asyncio.get_running_loop()
            start = loop.time()
            tasks: set[asyncio.Task[None]] = set()
            for i in range(int(rate * seconds)):  # bounded: rate x seconds requests
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.ensure_future(fetch(urls[i % len(urls)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)

        cpu0, t0 = time.process_time(), time.monotonic()
        if rate > 0:
            await paced()
        else:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    return {"ok": ok, "failed": failed, "seconds": wall, "cpu": cpu, "rate": rate}


def floor_main(argv: Sequence[str]) -> int:
    """The floor runs on the exporter's own runtime (exporter.cli.run: uvloop and its GC
    settings), so that neither side gains from the event loop alone."""
    from exporter.cli import run as exporter_runtime

    urls_file, concurrency, seconds, rate = argv
    urls = json.loads(Path(urls_file).read_text())
    result = exporter_runtime(floor_client(urls, int(concurrency), float(seconds), float(rate)))
    print(json.dumps(result))
    return 0


async def run_floor(
    procs: Processes,
    fleet: Fleet,
    concurrency: int,
    seconds: float,
    out: Path,
    n: int,
    rate: float = 0.0,
) -> dict[str, float]:
    urls = [
        f"http://{t['host']}/rpc/{MAIN_METHOD_OF[t['labels']['profile']]}" for t in fleet.targets
    ]
    urls_file = out / f"floor-urls-{n}.json"
    urls_file.write_text(json.dumps(urls))
    args = [str(urls_file), str(concurrency), str(seconds), str(rate)]
    proc = await procs.start(
        [sys.executable, str(SELF), "_floor", *args],
        out / f"floor-{n}{'-paced' if rate else ''}.log",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), seconds + 60)
    finally:
        await procs.stop(proc)
    result: dict[str, float] = json.loads(line)
    done = result["ok"]
    result["rps"] = done / result["seconds"] if result["seconds"] else 0.0
    result["cpu_per_1000"] = 1000 * result["cpu"] / done if done else float("nan")
    return result


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
    exporter = await start_exporter(
        procs, config, port, out / f"exporter-{n}-capacity.log", session, 60 + n / 200
    )
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


# ---- the references on the same samples ------------------------------------------------------


@dataclass
class ParsedFamily:
    name: str
    type: str
    documentation: str
    samples: list[tuple[str, dict[str, str], float]]


def parse_exposition(body: bytes) -> list[ParsedFamily]:
    """The per-device families of an exposition, parsed with prometheus_client.parser."""
    from prometheus_client.parser import text_string_to_metric_families

    families = []
    for family in text_string_to_metric_families(body.decode()):
        samples = [
            (s.name, dict(s.labels), s.value) for s in family.samples if "device" in s.labels
        ]
        if samples:
            families.append(ParsedFamily(family.name, family.type, family.documentation, samples))
    return families


def reference_registry(families: list[ParsedFamily]) -> Any:
    """A plain prometheus_client registry holding the same samples, as most exporters do."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

    disable_created_metrics()  # type: ignore[no-untyped-call]  # no _created series either
    registry = CollectorRegistry(auto_describe=False)
    for family in families:
        labelnames = list(family.samples[0][1])
        doc = family.documentation or family.name
        metric: Any
        if family.type == "counter":
            metric = Counter(family.name, doc, labelnames, registry=registry)
            for _, labels, value in family.samples:
                metric.labels(*(labels.get(k, "") for k in labelnames)).inc(value)
        else:
            metric = Gauge(family.name, doc, labelnames, registry=registry)
            for _, labels, value in family.samples:
                metric.labels(*(labels.get(k, "") for k in labelnames)).set(value)
    return registry


def time_repeatedly(fn: Callable[[], Any], reps: int, budget: float) -> tuple[float, Any]:
    """Median seconds of `fn` over at most `reps` calls and about `budget` seconds (at least 1)."""
    times = []
    result = None
    t_end = time.monotonic() + budget
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        if time.monotonic() > t_end:
            break
    return statistics.median(times), result


def readings_of(families: list[ParsedFamily]) -> list[Reading]:
    """The scraped samples as Readings again, one per device, for the InfluxDB serialiser."""
    per_device: dict[str, list[Sample]] = {}
    profile: dict[str, str] = {}
    for family in families:
        for name, labels, value in family.samples:
            device = labels.pop("device")
            profile[device] = labels.pop("profile", "unknown")
            per_device.setdefault(device, []).append(
                Sample(name, tuple(sorted(labels.items())), value)
            )
    now = time.time()
    return [
        Reading(
            device=d,
            user_labels=(("profile", profile[d]),),
            time=now,
            up=True,
            duration=0.01,
            model=profile[d],
            samples=tuple(samples),
        )
        for d, samples in per_device.items()
    ]


def influx_serialiser() -> tuple[Callable[[Reading], Any] | None, str]:
    """The line-protocol serialiser of exporter/outputs/influx/lines.py, or None and why not."""
    try:
        import exporter.outputs.influx.lines as influx
    except ImportError as exc:
        return None, f"exporter/outputs/influx/lines.py not importable ({exc})"
    serializer = getattr(influx, "Serializer", None)
    if serializer is not None:
        return serializer().encode, "exporter.outputs.influx.lines.Serializer().encode"
    for name, fn in inspect.getmembers(influx, inspect.isfunction):
        if fn.__module__ != influx.__name__ or name.startswith("_"):
            continue
        params = list(inspect.signature(fn).parameters.values())
        required = [
            p
            for p in params
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(required) == 1 and "Reading" in str(params[0].annotation):
            return fn, f"exporter.outputs.influx.lines.{name}"
    return None, "exporter/outputs/influx/lines.py has no public function taking one Reading"


def count_points(output: Any) -> int:
    if isinstance(output, bytes | str):
        text = output.decode() if isinstance(output, bytes) else output
        return sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    if isinstance(output, Iterable):
        return sum(count_points(item) if isinstance(item, bytes | str) else 1 for item in output)
    return 1


def influx_rate(readings: list[Reading], budget: float) -> tuple[float | None, str]:
    fn, where = influx_serialiser()
    if fn is None:
        return None, where
    points = 0
    t0 = time.perf_counter()
    try:
        for _ in range(100):  # bounded; at least one pass over every reading
            for reading in readings:
                points += count_points(fn(reading))
            if time.perf_counter() - t0 > budget:
                break
    except Exception as exc:  # a module still being written must not sink the whole run
        return None, f"{where} failed: {type(exc).__name__}: {exc}"
    return points / (time.perf_counter() - t0), where


# ---- profiling (optional) --------------------------------------------------------------------


def py_spy_path() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def profile_exporter(pid: int, seconds: float, out: Path, n: int) -> dict[str, Any]:
    """py-spy samples of the exporter; shares of busy samples by innermost exporter/*.py
    function (library time is charged to the exporter function that called it)."""
    py_spy = py_spy_path()
    if py_spy is None:
        return {"error": "py-spy not installed"}
    raw = out / f"profile-{n}.txt"
    proc = await asyncio.create_subprocess_exec(
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "200",
        "--format",
        "raw",
        "--output",
        str(raw),
        "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(proc.wait(), seconds + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if not raw.exists():
        return {"error": "py-spy produced no output"}
    return summarise_profile(raw.read_text())


FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")
OWN_FILE = re.compile(r"(?:^|/)exporter/")  # py-spy names files relative to the working dir
LOOP_FRAME = "BaseEventLoop._run_once "


def summarise_profile(text: str, top: int = 12) -> dict[str, Any]:
    """Shares of busy samples: by innermost exporter/*.py function under the event loop (time
    in aiohttp or the stdlib is charged to the exporter function that called it), inclusive
    per exporter function, and by leaf function."""
    inner: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        loop = max((i for i, f in enumerate(frames) if f.startswith(LOOP_FRAME)), default=-1)
        own: list[str] = []
        for frame in frames[loop + 1 :]:
            match = FRAME.match(frame)
            if match and OWN_FILE.search(match["file"]):
                own.append(f"exporter/{OWN_FILE.split(match['file'])[-1]}:{match['func']}")
        inner[own[-1] if own else "(event loop, aiohttp callbacks, sockets)"] += count
        for name in set(own):
            inclusive[name] += count
        match = FRAME.match(frames[-1])
        leaf[f"{Path(match['file']).name}:{match['func']}" if match else frames[-1]] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(v / total, 4)) for k, v in counter.most_common(top)] if total else []

    return {
        "samples": total,
        "innermost_exporter_function": shares(inner),
        "inclusive": shares(inclusive),
        "leaf": shares(leaf),
    }


# ---- one fleet size --------------------------------------------------------------------------


@dataclass
class SizeResult:
    n: int
    concurrency: int
    sim_processes: int
    window_seconds: float = 0.0
    polls: float = 0.0
    polls_late: float = 0.0
    polls_per_second: float = 0.0
    expected_polls_per_second: float = 0.0
    on_time_share: float = 0.0
    exporter_cpu_seconds: float = 0.0
    cpu_per_1000_polls: float = 0.0
    exporter_cores: float = 0.0
    simulator_cores: float = 0.0
    machine_busy_cores: float = 0.0
    other_busy_cores: float = 0.0
    load_average: list[float] = field(default_factory=list)
    requests_per_poll: float = 0.0
    requests_per_poll_simulator: float = 0.0
    requests_per_poll_amortised: float = 0.0
    calls_by_method_window: dict[str, int] = field(default_factory=dict)
    rss_bytes: int = 0
    rss_per_device_bytes: float = 0.0
    exporter_threads: int = 0
    metrics_plain_seconds: float = 0.0
    metrics_gzip_seconds: float = 0.0
    metrics_plain_bytes: int = 0
    metrics_gzip_bytes: int = 0
    scrapes: int = 0
    probe: dict[str, float] = field(default_factory=dict)
    floor: dict[str, float] = field(default_factory=dict)
    floor_ratio: float = 0.0  # steady polls per CPU s / saturated floor requests per CPU s
    floor_paced: dict[str, float] = field(default_factory=dict)
    floor_paced_ratio: float = 0.0  # the same, to the floor paced at N / interval
    capacity: dict[str, float] = field(default_factory=dict)
    capacity_ratio: float = 0.0  # saturated exporter to saturated floor: throughput to throughput
    reference_samples: int = 0
    reference_seconds: float = 0.0
    reference_bytes: int = 0
    reference_ratio: float = 0.0
    own_render_seconds: float = 0.0
    own_render_gzip_seconds: float = 0.0
    reference_ratio_in_process: float = 0.0
    settled: bool = False
    devices_up_at_window: int = 0
    influx_points_per_second: float | None = None
    influx_note: str = ""
    profile: dict[str, Any] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)


async def bounded_sleep_until(deadline: float, proc: asyncio.subprocess.Process, what: str) -> None:
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, 1.0))
        if proc.returncode is not None:
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
        exporter = await start_exporter(
            procs, config, port, out / f"exporter-{n}.log", session, 60 + n / 200
        )
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
    return math.ceil(opts.duration / opts.interval - 1e-9) * opts.interval


def fill_window(res: SizeResult, a: Snapshot, b: Snapshot, interval: float, n: int) -> None:
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


def own_render_in_process(
    res: SizeResult, readings: list[Reading], opts: argparse.Namespace
) -> None:
    """The exporter's Exposition on the same samples, timed like generate_latest: in this
    process, no HTTP, no polls competing for the event loop. A reading is published before
    every render, as a poll would between two scrapes, so nothing comes from the cache."""
    from exporter.outputs.prometheus import Exposition

    exposition = Exposition()
    for reading in readings:
        exposition.publish(reading)
    turn = iter(range(10**9))

    def render(gzip: bool) -> bytes:
        exposition.publish(readings[next(turn) % len(readings)])
        return exposition.render_gzip() if gzip else exposition.render()

    reps, budget = opts.scrapes, opts.reference_budget
    res.own_render_seconds, _ = time_repeatedly(lambda: render(False), reps, budget)
    res.own_render_gzip_seconds, _ = time_repeatedly(lambda: render(True), reps, budget)
    if res.own_render_seconds > 0:
        res.reference_ratio_in_process = res.reference_seconds / res.own_render_seconds


def references(res: SizeResult, body: bytes, opts: argparse.Namespace) -> None:
    families = parse_exposition(body)
    res.reference_samples = sum(len(f.samples) for f in families)
    registry = reference_registry(families)
    from prometheus_client import generate_latest

    res.reference_seconds, text = time_repeatedly(
        lambda: generate_latest(registry), opts.reference_reps, opts.reference_budget
    )
    res.reference_bytes = len(text)
    res.reference_ratio = res.reference_seconds / res.metrics_plain_seconds
    readings = readings_of(families)
    own_render_in_process(res, readings, opts)
    res.influx_points_per_second, res.influx_note = influx_rate(
        readings, min(opts.reference_budget, 5.0)
    )


# ---- reporting -------------------------------------------------------------------------------


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} GB"


def table_rows(r: SizeResult) -> list[tuple[str, str]]:
    influx = (
        f"{r.influx_points_per_second:,.0f}"
        if r.influx_points_per_second is not None
        else f"n/a ({r.influx_note})"
    )
    return [
        (
            "polls per second",
            f"{r.polls_per_second:,.1f} (N/interval = "
            f"{r.expected_polls_per_second:,.1f}) over {r.window_seconds:.0f} s"
            + (
                ""
                if r.settled
                else f"; NOT steady: only {r.devices_up_at_window:,} devices had finished"
                " their first poll when the window began"
            ),
        ),
        ("polls on time", f"{100 * r.on_time_share:.2f} % ({r.polls_late:,.0f} late)"),
        (
            "exporter CPU per 1,000 polls",
            f"{r.cpu_per_1000_polls:.3f} s ({r.exporter_cores:.2f} cores busy)",
        ),
        (
            "HTTP requests per device per poll",
            f"{r.requests_per_poll:.3f} in the window "
            f"(simulator counted "
            f"{r.requests_per_poll_simulator:.3f}); "
            f"{r.requests_per_poll_amortised:.3f} amortised "
            "with slow/identity methods",
        ),
        ("RSS per device", f"{fmt_bytes(r.rss_per_device_bytes)} (RSS {fmt_bytes(r.rss_bytes)})"),
        (
            "/metrics render, plain",
            f"{1000 * r.metrics_plain_seconds:.1f} ms, "
            f"{fmt_bytes(r.metrics_plain_bytes)} "
            f"(median of {r.scrapes})",
        ),
        (
            "/metrics render, gzip",
            f"{1000 * r.metrics_gzip_seconds:.1f} ms, {fmt_bytes(r.metrics_gzip_bytes)}",
        ),
        (
            "/probe requests per second",
            f"{r.probe.get('rps', 0):,.1f} ({r.probe.get('ok', 0):.0f}"
            f" ok, {r.probe.get('failed', 0):.0f} failed, "
            f"concurrency {PROBE_CONCURRENCY})",
        ),
        ("InfluxDB serialisation points/s", influx),
        (
            "ref: generate_latest, same samples",
            f"{1000 * r.reference_seconds:.1f} ms for "
            f"{r.reference_samples:,} samples, "
            f"{fmt_bytes(r.reference_bytes)}; exporter is "
            f"{r.reference_ratio:.1f}x faster",
        ),
        (
            "exporter render, same samples, in-process",
            f"{1000 * r.own_render_seconds:.1f} ms plain, "
            f"{1000 * r.own_render_gzip_seconds:.1f} ms gzip; "
            f"{r.reference_ratio_in_process:.1f}x faster than generate_latest",
        ),
        (
            "ref: bare aiohttp floor",
            f"{r.floor.get('rps', 0):,.1f} requests/s, "
            f"{r.floor.get('cpu_per_1000', 0):.3f} CPU s per 1,000 "
            f"({r.floor.get('failed', 0):.0f} failed)",
        ),
        (
            "ref: floor paced at N/interval",
            f"{r.floor_paced.get('rps', 0):,.1f} requests/s, "
            f"{r.floor_paced.get('cpu_per_1000', 0):.3f} CPU s per 1,000 "
            f"({r.floor_paced.get('failed', 0):.0f} failed)",
        ),
        (
            "exporter capacity, polling flat out",
            f"{r.capacity.get('polls_per_second', 0):,.1f} polls/s "
            f"({r.capacity.get('due_per_second', 0):,.0f} due), "
            f"{r.capacity.get('cpu_per_1000', 0):.3f} CPU s per 1,000 polls "
            f"({r.capacity.get('cores', 0):.2f} cores), "
            f"{r.capacity.get('requests_per_poll', 0):.3f} requests/poll",
        ),
        (
            "exporter / floor (polls per CPU s)",
            f"{r.capacity_ratio:.2f} flat out vs the floor flat out; steady state "
            f"{r.floor_ratio:.2f} of the floor flat out, {r.floor_paced_ratio:.2f} of the floor"
            " paced alike",
        ),
        (
            "machine during the window",
            f"load {' -> '.join(f'{x:.2f}' for x in r.load_average)};"
            f" busy cores: exporter {r.exporter_cores:.2f}, simulator"
            f" {r.simulator_cores:.2f}, others "
            f"{r.other_busy_cores:.2f}",
        ),
    ]


def print_size(r: SizeResult) -> None:
    print(
        f"\n== N = {r.n:,} devices (concurrency {r.concurrency}, simulator in "
        f"{r.sim_processes} processes) =="
    )
    for label, value in table_rows(r):
        print(f"  {label:<38} {value}")
    print(f"  {'phases (s)':<38} {r.phase_seconds}")
    if r.profile.get("innermost_exporter_function"):
        print("  profile, innermost exporter/*.py function (share of busy samples):")
        for name, share in r.profile["innermost_exporter_function"][:8]:
            print(f"    {100 * share:5.1f} %  {name}")


@dataclass
class Verdict:
    target: str
    passed: bool
    figure: str


def verdicts(results: list[SizeResult]) -> list[Verdict]:
    at = next((r for r in results if r.n == TARGET_N), max(results, key=lambda r: r.n))
    where = f"at N={at.n:,}" + ("" if at.n == TARGET_N else f" (no {TARGET_N:,} run)")
    where += "" if at.settled else ", not steady"
    # Request economy is a property of the steady state: where the exporter never reached one,
    # the largest fleet that did shows it (and the unsettled figure is printed beside it).
    steady = (
        at if at.settled else max((r for r in results if r.settled), default=at, key=lambda r: r.n)
    )
    economy = f"{steady.requests_per_poll_amortised:.3f} amortised ({steady.requests_per_poll:.3f}"
    economy += f" in the window) at N={steady.n:,}"
    if steady is not at:
        economy += (
            f"; at N={at.n:,} no steady state: {at.requests_per_poll_amortised:.3f}"
            " with first polls still running"
        )

    def also(figure: Callable[[SizeResult], str]) -> str:
        """The same figure at the largest steady fleet, when `at` never became steady."""
        return "" if steady is at else f"; {figure(steady)} at N={steady.n:,} (steady)"

    return [
        Verdict(
            "≥ 99.5 % of polls on time at 10,000 devices, 15 s interval",
            at.on_time_share >= 0.995,
            f"{100 * at.on_time_share:.2f} % {where}"
            + also(lambda r: f"{100 * r.on_time_share:.2f} %"),
        ),
        Verdict(
            "≤ 1.2 HTTP requests per device per poll in steady state",
            steady.requests_per_poll_amortised <= 1.2,
            economy,
        ),
        Verdict(
            "/metrics ≥ 10x faster than prometheus_client generate_latest",
            at.reference_ratio >= 10,
            f"{at.reference_ratio:.1f}x ({1000 * at.metrics_plain_seconds:.0f} ms vs "
            f"{1000 * at.reference_seconds:.0f} ms) {where}; rendering alone, in-process: "
            f"{at.reference_ratio_in_process:.0f}x",
        ),
        Verdict(
            "gzip /metrics not slower than plain",
            at.metrics_gzip_seconds <= at.metrics_plain_seconds * 1.05,
            f"{1000 * at.metrics_gzip_seconds:.0f} ms gzip vs "
            f"{1000 * at.metrics_plain_seconds:.0f} ms plain {where}",
        ),
        Verdict(
            "poll throughput ≥ half the bare aiohttp floor (per CPU second)",
            at.capacity_ratio >= 0.5,
            f"{at.capacity_ratio:.2f} flat out ({1000 / at.capacity['cpu_per_1000']:,.0f}"
            f" polls/CPU s vs {1000 / at.floor['cpu_per_1000']:,.0f} requests/CPU s) {where};"
            f" in the steady window {at.floor_ratio:.2f} of the floor flat out and"
            f" {at.floor_paced_ratio:.2f} of the floor paced at the same rate",
        ),
        Verdict(
            "RSS ≤ 50 KB per device at 10,000 devices",
            at.rss_per_device_bytes <= 50_000,
            f"{fmt_bytes(at.rss_per_device_bytes)} per device {where}"
            + also(lambda r: fmt_bytes(r.rss_per_device_bytes)),
        ),
    ]


def print_summary(results: list[SizeResult], verdict_list: list[Verdict]) -> None:
    print("\n== Summary ==")
    head = (
        "N",
        "polls/s",
        "on time",
        "CPU/1k polls",
        "req/poll",
        "RSS/dev",
        "metrics",
        "gzip",
        "size",
        "gz size",
        "gen_latest",
        "probe/s",
        "floor/s",
        "floor CPU/1k",
    )
    print(" ".join(f"{h:>12}" for h in head))
    for r in results:
        row = (
            f"{r.n:,}" + ("" if r.settled else "*"),
            f"{r.polls_per_second:,.0f}",
            f"{100 * r.on_time_share:.2f}%",
            f"{r.cpu_per_1000_polls:.3f}s",
            f"{r.requests_per_poll_amortised:.3f}",
            fmt_bytes(r.rss_per_device_bytes),
            f"{1000 * r.metrics_plain_seconds:.0f}ms",
            f"{1000 * r.metrics_gzip_seconds:.0f}ms",
            fmt_bytes(r.metrics_plain_bytes),
            fmt_bytes(r.metrics_gzip_bytes),
            f"{1000 * r.reference_seconds:.0f}ms",
            f"{r.probe.get('rps', 0):,.0f}",
            f"{r.floor.get('rps', 0):,.0f}",
            f"{r.floor.get('cpu_per_1000', 0):.3f}s",
        )
        print(" ".join(f"{c:>12}" for c in row))
    if not all(r.settled for r in results):
        print(
            "  * not steady: the window began before every device had finished its first poll"
            " (the exporter could not keep up); its figures mix first and steady polls"
        )
    print("\n== Targets ==")
    for v in verdict_list:
        print(f"  {'PASS' if v.passed else 'MISS'}  {v.target}: {v.figure}")


def plot(results: list[SizeResult], path: Path) -> None:
    """Poll CPU and /metrics render time against N; hollow markers: window not steady."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    ns = [r.n for r in results]

    def series(ax: Axes, values: list[float], style: str, label: str, mark: bool = True) -> None:
        (line,) = ax.plot(ns, values, style, label=label)
        hollow = [i for i, r in enumerate(results) if mark and not r.settled]
        if hollow:
            ax.plot(
                [ns[i] for i in hollow],
                [values[i] for i in hollow],
                marker=style[0],
                color=line.get_color(),
                markerfacecolor="white",
                markersize=9,
                linestyle="none",
            )

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    series(left, [r.cpu_per_1000_polls for r in results], "o-", "exporter, steady (N / 15 s)")
    series(
        left,
        [r.capacity.get("cpu_per_1000", 0.0) for r in results],
        "D-",
        "exporter, flat out",
        mark=False,  # its own run, with its own settling
    )
    series(
        left,
        [r.floor_paced.get("cpu_per_1000", 0.0) for r in results],
        "v--",
        "bare aiohttp client, paced at N / 15 s",
        mark=False,  # the floor does not depend on the exporter
    )
    series(
        left,
        [r.floor.get("cpu_per_1000", 0.0) for r in results],
        "s--",
        "bare aiohttp client, flat out",
        mark=False,
    )
    left.set(
        xlabel="devices (N)",
        ylabel="CPU seconds",
        title="CPU per 1,000 polls (requests for the clients)",
        ylim=(0, None),
    )
    series(
        right,
        [1000 * r.metrics_plain_seconds for r in results],
        "o-",
        "exporter /metrics, plain (client-side)",
    )
    series(
        right,
        [1000 * r.metrics_gzip_seconds for r in results],
        "o-",
        "exporter /metrics, gzip (client-side)",
    )
    series(
        right,
        [1000 * r.own_render_seconds for r in results],
        "^:",
        "exporter render alone, plain (in-process)",
    )
    series(
        right,
        [1000 * r.reference_seconds for r in results],
        "s--",
        "prometheus_client generate_latest (in-process)",
    )
    right.set(
        xlabel="devices (N)",
        ylabel="milliseconds (log)",
        title="/metrics render time",
        yscale="log",
    )
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if not all(r.settled for r in results):
        fig.text(
            0.5,
            0.01,
            "hollow markers: the exporter never reached a steady state at that N",
            ha="center",
            fontsize=8,
        )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def code_version() -> str:
    """The commit measured, and whether exporter/ had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "exporter"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in exporter/' if dirty else ''}"


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next(
            (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
        )
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "code": code_version(),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "aiohttp": aiohttp.__version__,
    }


# ---- main ------------------------------------------------------------------------------------


async def exporter_baseline_rss(
    procs: Processes, opts: argparse.Namespace, out: Path, session: aiohttp.ClientSession
) -> int:
    port = free_port()
    config = out / "exporter-0.json"
    write_config(config, [], port, opts, 64)
    proc = await start_exporter(procs, config, port, out / "exporter-0.log", session, 60)
    try:
        await scrape(session, f"http://127.0.0.1:{port}/metrics", gzip=False)
        await asyncio.sleep(2.0)
        return rss_bytes(proc.pid)
    finally:
        await procs.stop(proc)


async def run(opts: argparse.Namespace, procs: Processes) -> int:
    out = Path(opts.out)
    started = time.time()
    machine = machine_info()
    print(
        f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_gib']} GiB, Python {machine['python']}; code {machine['code']}; "
        f"load average {loadavg():.2f}; open files limit {raise_fd_limit()}",
        flush=True,
    )
    results: list[SizeResult] = []
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("Accept-Encoding",)
    ) as session:
        baseline = await exporter_baseline_rss(procs, opts, out, session)
        print(f"exporter with 0 devices: RSS {fmt_bytes(baseline)}", flush=True)
        for n in opts.sizes:
            print(f"\n... N = {n:,}: starting the simulator", flush=True)
            res = await measure_size(n, opts, procs, out, session, baseline)
            res.rss_per_device_bytes = (res.rss_bytes - baseline) / n
            results.append(res)
            print_size(res)
    verdict_list = verdicts(results)
    print_summary(results, verdict_list)
    plot(results, Path(opts.plot))
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 1),
        "machine": machine,
        "settings": {
            "interval": opts.interval,
            "duration": opts.duration,
            "mix": MIX,
            "sim_processes": opts.sim_processes,
            "timeout": min(5.0, opts.interval / 3),
            "probe_concurrency": PROBE_CONCURRENCY,
        },
        "baseline_rss_bytes": baseline,
        "sizes": [asdict(r) for r in results],
        "targets": [asdict(v) for v in verdict_list],
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out / 'results.json'} and {opts.plot} in {time.time() - started:.0f} s")
    return 0


def report_again(path: Path, plot_path: Path) -> int:
    """Print the tables and verdicts of a saved results.json again and redraw its plot."""
    report = json.loads(path.read_text())
    results = [SizeResult(**size) for size in report["sizes"]]
    print(f"from {path}: {report['command']} at {report['started']}; machine {report['machine']}")
    for res in results:
        print_size(res)
    verdict_list = verdicts(results)
    print_summary(results, verdict_list)
    plot(results, plot_path)
    report["targets"] = [asdict(v) for v in verdict_list]
    path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        help="fleet sizes, comma-separated (default 1000,5000,10000,20000)",
    )
    p.add_argument("--interval", type=float, default=15.0, help="poll interval, s (default 15)")
    p.add_argument(
        "--duration",
        type=float,
        default=40.0,
        help="steady-state window per size (rounded up to whole intervals: 45 s at 15 s),"
        " and the floor's run, s (default 40)",
    )
    p.add_argument("--sim-processes", type=int, default=4, help="simulator worker processes")
    p.add_argument(
        "--address-base",
        default="127.200.0.1",
        help="first device address, inside 127.0.0.0/8 (default 127.200.0.1)",
    )
    p.add_argument("--device-port", type=int, default=18080, help="port of every device")
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=120.0,
        help="start the window at the latest this many seconds after the exporter is ready,"
        " even if some devices have not finished their first poll and slow methods"
        " (default 120)",
    )
    p.add_argument("--scrapes", type=int, default=20, help="scrapes of each kind (default 20)")
    p.add_argument(
        "--scrape-budget",
        type=float,
        default=30.0,
        help="stop scraping after this many seconds (default 30)",
    )
    p.add_argument(
        "--capacity-seconds",
        type=float,
        default=15.0,
        help="window of the flat-out capacity run, s (default 15)",
    )
    p.add_argument(
        "--capacity-warmup",
        type=float,
        default=8.0,
        help="wait at least this long before that window, and then until the fleet is steady"
        " (at most --settle-timeout), s (default 8)",
    )
    p.add_argument("--probe-requests", type=int, default=3000)
    p.add_argument("--probe-seconds", type=float, default=8.0)
    p.add_argument(
        "--reference-reps",
        type=int,
        default=5,
        help="generate_latest runs, median taken (default 5)",
    )
    p.add_argument(
        "--reference-budget",
        type=float,
        default=10.0,
        help="stop repeating a reference after this many seconds (default 10)",
    )
    p.add_argument(
        "--profile", action="store_true", help="sample the exporter with py-spy after each window"
    )
    p.add_argument("--profile-seconds", type=float, default=20.0)
    p.add_argument("--out", default=str(ROOT / "bench" / "out"), help="logs and results.json")
    p.add_argument(
        "--from-results",
        metavar="JSON",
        help="measure nothing: print the tables and verdicts of a results.json and redraw the plot",
    )
    p.add_argument("--plot", default=str(ROOT / "docs" / "performance.png"))
    opts = p.parse_args(argv)
    address = ipaddress.IPv4Address(opts.address_base)
    last = address + max(opts.sizes) - 1
    if not (address.is_loopback and last.is_loopback):
        p.error("--address-base: every device address must be inside 127.0.0.0/8")
    if not opts.sizes or min(opts.sizes) < 1 or opts.duration <= 0 or opts.interval <= 0:
        p.error("--sizes, --duration and --interval must be positive")
    return opts


def interrupt(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM end the run through the cleanup in `main`."""
    raise KeyboardInterrupt


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["_floor"]:
        return floor_main(argv[1:])
    opts = parse_args(argv)
    if opts.from_results:
        return report_again(Path(opts.from_results), Path(opts.plot))
    Path(opts.out).mkdir(parents=True, exist_ok=True)
    raise_fd_limit()
    procs = Processes()
    import atexit

    atexit.register(procs.kill_all_now)
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored (&)
        signal.signal(sig, interrupt)

    async def guarded() -> int:
        try:
            return await run(opts, procs)
        finally:
            await asyncio.shield(procs.stop_all())

    try:
        return asyncio.run(guarded())
    except KeyboardInterrupt:
        print("\ninterrupted; every process started here was stopped", file=sys.stderr)
        return 130
    finally:
        procs.kill_all_now()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
