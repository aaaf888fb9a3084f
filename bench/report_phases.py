"""The tables and verdicts of the phases beside the sizes: the big end with the session ledger
(and the same window with the state store off), requests a poll over whole slow and identity
intervals, the first poll's requests, and a fleet sharded over replicas."""

from __future__ import annotations

from typing import Any

from bench.report import Verdict, fmt_bytes
from bench.results import TARGET_N, SizeResult

# How much later the slowest polls may start with the state store on than with it off. The
# poller's tick (exporter.device.poller.TICK) makes every start up to a tick late either way;
# this is the store's own share, and a fifth of the tick.
STORE_DELAY = 0.02


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f} ms"


def lateness_text(lateness: dict[str, float]) -> str:
    if not lateness.get("starts"):
        return "n/a (no poll starts seen)"
    return (
        f"p50 {ms(lateness['p50'])}, p99 {ms(lateness['p99'])}, max {ms(lateness['max'])}"
        f" ({lateness['starts']:,.0f} starts)"
    )


def big_end_rows(r: SizeResult) -> list[tuple[str, str]]:
    rows = [
        ("polls on time", f"{100 * r.on_time_share:.2f} % ({r.polls_late:,.0f} late)"),
        ("exporter cores busy", f"{r.exporter_cores:.3f} ({r.cpu_per_1000_polls:.3f} s / 1k)"),
        ("RSS per device", fmt_bytes(r.rss_per_device_bytes)),
        ("poll lateness, state store on", lateness_text(r.lateness)),
    ]
    off = r.state_off
    if off:
        rows += [
            ("state store off: polls on time", f"{100 * off['on_time_share']:.2f} %"),
            ("state store off: cores, RSS", f"{off['cores']:.3f}, {fmt_bytes(off['rss_bytes'])}"),
            ("state store off: poll lateness", lateness_text(off["lateness"])),
            (
                "ledger's added CPU",
                f"{r.exporter_cores - off['cores']:+.3f} of a core"
                f" ({r.cpu_per_1000_polls - off['cpu_per_1000_polls']:+.3f} s / 1k polls)",
            ),
            (
                "ledger's added RSS",
                f"{fmt_bytes(r.rss_bytes - off['rss_bytes'])}"
                f" ({fmt_bytes((r.rss_bytes - off['rss_bytes']) / r.n)} per device)",
            ),
        ]
    return rows


def print_phases(results: list[SizeResult], phases: dict[str, Any]) -> None:
    at = target_size(results)
    if at is not None:
        print(f"\n== Big end: N = {at.n:,}, session ledger, derived counters, capabilities on ==")
        for label, value in big_end_rows(at):
            print(f"  {label:<38} {value}")
    cadence = phases.get("cadence")
    if cadence:
        print(
            f"\n== Requests a poll over one identity interval: {cadence['devices']} devices,"
            f" {cadence['interval']:g} : {cadence['slow_interval']:g} :"
            f" {cadence['identity_interval']:g} s (= 15 : 600 : 3600) =="
        )
        print(
            f"  {cadence['requests']:,} requests / {cadence['polls']:,} polls"
            f" ({cadence['polls_due']:,.0f} due, exporter counted"
            f" {cadence['exporter_polls']:,.0f}, {cadence['polls_late']:,.0f} late)"
            f" = {cadence['requests_per_poll']:.4f} per poll over {cadence['window_seconds']:.1f} s"
        )
        for method, count in cadence["by_method"].items():
            print(f"    {method:<26} {count:>8,}  {count / max(1, cadence['polls']):.4f}/poll")
    first = phases.get("first_poll")
    if first:
        print("\n== First poll: requests per device ==")
        for row in first:
            lacks = f"lacking {len(row['lacks'])} optional methods" if row["lacks"] else "default"
            print(
                f"  {row['kind']:<8} {row['profile']:<6} {lacks:<32}"
                f" {row['requests']:>3} (budget {row['budget']})"
            )
    shards = phases.get("shards")
    if shards:
        print(
            f"\n== Sharded: {shards['devices']:,} devices over {len(shards['replicas'])}"
            f" replicas at one interval =="
        )
        print(
            f"  polls/s {shards['polls_per_second']:,.1f}"
            f" (due {shards['expected_polls_per_second']:,.1f}),"
            f" on time {100 * shards['on_time_share']:.2f} %, {shards['cores']:.2f} cores"
            f" ({shards['cpu_per_1000_polls']:.3f} s / 1k polls), simulator"
            f" {shards['simulator_cores']:.2f} cores, machine {shards['machine_busy_cores']:.2f}"
        )
        print(f"  poll lateness: {lateness_text(shards['lateness'])}")
        for i, rep in enumerate(shards["replicas"]):
            print(
                f"  replica {i}: {rep['devices']:,} devices ({rep['devices_up']:,.0f} up"
                f"{'' if rep['steady'] else ', not steady'}), on time"
                f" {100 * rep['on_time_share']:.2f} %, {rep['cores']:.3f} cores,"
                f" RSS {fmt_bytes(rep['rss_bytes'])} ({fmt_bytes(rep['rss_per_device_bytes'])}"
                " per device)"
            )
        print(f"  phases (s): {shards['phase_seconds']}")


def target_size(results: list[SizeResult]) -> SizeResult | None:
    return next(
        (r for r in results if r.n == TARGET_N), max(results, key=lambda r: r.n, default=None)
    )


def phase_verdicts(results: list[SizeResult], phases: dict[str, Any]) -> list[Verdict]:
    out: list[Verdict] = []
    at = target_size(results)
    if at is not None:
        where = f"at N={at.n:,}" + ("" if at.n == TARGET_N else f" (no {TARGET_N:,} run)")
        out.append(
            Verdict(
                "with the ledger: ≥ 99.5 % on time, ≤ 0.3 of a core, ≤ 40 KB RSS per device",
                at.on_time_share >= 0.995
                and at.exporter_cores <= 0.3
                and at.rss_per_device_bytes <= 40_000,
                f"{100 * at.on_time_share:.2f} %, {at.exporter_cores:.3f} of a core,"
                f" {fmt_bytes(at.rss_per_device_bytes)} per device {where}",
            )
        )
        off = at.state_off
        if off:
            p99_on, p99_off = at.lateness.get("p99", 0.0), off["lateness"].get("p99", 0.0)
            out.append(
                Verdict(
                    "state-store writes never delay a poll (no poll late; p99 lateness with"
                    f" the store on within {ms(STORE_DELAY)} of the store off)",
                    at.polls_late == 0 and p99_on <= p99_off + STORE_DELAY,
                    f"{at.polls_late:,.0f} late; p99 {ms(p99_on)} on vs {ms(p99_off)} off {where}",
                )
            )
    cadence = phases.get("cadence")
    if cadence:
        out.append(
            Verdict(
                "≤ 1.2 HTTP requests per device per poll in steady state",
                0 < cadence["requests_per_poll"] <= 1.2,
                f"{cadence['requests_per_poll']:.4f} counted by the devices over one whole"
                f" identity interval ({cadence['interval']:g} : {cadence['slow_interval']:g} :"
                f" {cadence['identity_interval']:g} s)",
            )
        )
    first = phases.get("first_poll")
    if first:
        worst = {
            kind: max(row["requests"] for row in first if row["kind"] == kind)
            for kind in ("charger", "meter")
        }
        out.append(
            Verdict(
                "first poll ≤ 8 requests for a charger, ≤ 5 for a meter",
                all(row["requests"] <= row["budget"] for row in first),
                f"at most {worst['charger']} (charger), {worst['meter']} (meter), default"
                " profiles and firmware lacking optional methods",
            )
        )
    shards = phases.get("shards")
    if shards:
        per_replica = max(rep["rss_per_device_bytes"] for rep in shards["replicas"])
        out.append(
            Verdict(
                f"{shards['devices']:,} devices over {len(shards['replicas'])} replicas:"
                " ≥ 99.5 % of polls on time",
                shards["on_time_share"] >= 0.995,
                f"{100 * shards['on_time_share']:.2f} %; {shards['cores']:.2f} cores"
                f" ({1e6 * shards['cores'] / shards['devices']:.1f} µs CPU a second per device),"
                f" RSS {fmt_bytes(per_replica)} per device per replica at most",
            )
        )
    return out
