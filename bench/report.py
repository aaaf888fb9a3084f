"""The printed tables, the verdict per target and the description of the machine measured."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.results import PROBE_CONCURRENCY, TARGET_N, SizeResult
from harness.processes import ROOT


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
                else f"; NOT steady: {r.devices_up_at_window:,} devices up when the window"
                " began, and first polls' slow methods or late polls still coming in"
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
            f"{r.requests_per_poll_simulator:.3f}); amortised: see the cadence phase",
        ),
        (
            "poll lateness p50 / p99 / max",
            f"{1000 * r.lateness.get('p50', 0):.0f} / {1000 * r.lateness.get('p99', 0):.0f} / "
            f"{1000 * r.lateness.get('max', 0):.0f} ms ({r.lateness.get('starts', 0):,.0f}"
            " starts, from the devices' side)",
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
    # Where the exporter never reached a steady state at the target size, the largest fleet
    # that did is shown beside it.
    steady = (
        at if at.settled else max((r for r in results if r.settled), default=at, key=lambda r: r.n)
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
    if results:
        print_sizes_table(results)
    print("\n== Targets ==")
    for v in verdict_list:
        print(f"  {'PASS' if v.passed else 'MISS'}  {v.target}: {v.figure}")


def print_sizes_table(results: list[SizeResult]) -> None:
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
            f"{r.requests_per_poll:.3f}",
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
            "  * not steady: the window began (--settle-timeout) while devices were still"
            " coming up, asking their slow methods or catching up late polls; its figures mix"
            " them with steady polls"
        )


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
