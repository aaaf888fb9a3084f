"""The long soak: a fleet with the fault-matrix mix, polled for minutes, watched from /proc.

    .venv/bin/python -m bench.soak                          # 1,000 devices, 10 minutes
    .venv/bin/python -m bench.soak --devices 2000 --minutes 30 --interval 15

It runs what tests/test_reliability.py runs in CI for one minute (the same FleetRun and the
same verdict, from harness/fleet.py), for as long as asked: the simulator CLI serves N devices
on their own 127.x.y.z addresses, of which 10 % hang, 5 % reset, 2.5 % answer garbage, 2.5 %
non-JSON, 5 % answer just under the timeout and 2 % flap; the exporter polls them from its own
process. Every `--step` seconds one line: elapsed time, the exporter's open file descriptors and
RSS, devices up, polls and late polls so far. At the end the verdict: healthy polls on time,
faulty devices down for the right reason, log free of tracebacks and errors, and fd and RSS
growth over the window (least-squares trend, after warm-up) under the bounds. Exit status 0 when
every promise held.

Bounded: the run ends after `--minutes` (plus start-up, at most a few minutes); every process
it starts is killed at the end, also on Ctrl-C or an error. Traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from harness.fleet import FleetRun, Snapshot, judge, mib
from harness.processes import Processes, raise_fd_limit


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--minutes", type=float, default=10.0, help="soak window after warm-up")
    p.add_argument("--interval", type=float, default=10.0, help="poll.interval, seconds")
    p.add_argument("--timeout", type=float, default=2.0, help="poll.timeout, seconds")
    p.add_argument("--concurrency", type=int, default=64, help="poll.concurrency")
    p.add_argument("--step", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--sim-processes", type=int, default=2)
    p.add_argument("--fd-bound", type=int, default=64, help="allowed fd growth over the window")
    p.add_argument("--rss-bound-mib", type=float, default=16.0, help="allowed RSS growth, MiB")
    p.add_argument("--out", type=Path, help="keep logs here (default: a temporary directory)")
    return p.parse_args(argv)


async def soak(opts: argparse.Namespace, workdir: Path, procs: Processes) -> int:
    run = FleetRun(
        workdir,
        procs,
        devices=opts.devices,
        interval=opts.interval,
        timeout=opts.timeout,
        concurrency=opts.concurrency,
        sim_processes=opts.sim_processes,
    )
    window = opts.minutes * 60
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        t0 = time.monotonic()
        await run.start()
        await run.warm_up(session, 60 + 3 * opts.interval + opts.devices / 100)
        await run.arm_slow(session)
        print(
            f"{opts.devices} devices up and polled in {time.monotonic() - t0:.0f}s; logs in "
            f"{workdir}"
        )
        print(f"{'t (s)':>7} {'fds':>6} {'RSS MiB':>8} {'up':>6} {'polls':>9} {'late':>6}")
        snaps: list[Snapshot] = []
        calls_before = await run.calls(session)
        start = time.monotonic()
        for i in range(int(window / opts.step) + 1):
            snap = await run.sample(session)
            snaps.append(snap)
            up = sum(1 for v in snap.up.values() if v == 1)
            print(
                f"{time.monotonic() - start:7.0f} {snap.fds:6d} {snap.rss / 2**20:8.1f} "
                f"{up:6d} {snap.polls:9.0f} {snap.late:6.0f}",
                flush=True,
            )
            assert run.exporter is not None
            if run.exporter.poll() is not None:
                print("the exporter exited", file=sys.stderr)
                return 1
            await asyncio.sleep(max(0.0, start + (i + 1) * opts.step - time.monotonic()))
        calls_after = await run.calls(session)
        elapsed = time.monotonic() - start
    verdict = judge(
        run,
        snaps,
        calls_before,
        calls_after,
        elapsed,
        fd_bound=opts.fd_bound,
        rss_bound=int(opts.rss_bound_mib * 2**20),
    )
    print()
    print(f"healthy polls on time        {verdict.on_time:.4%}")
    print(f"healthy devices polled       {verdict.polls_per_device_ok:.4%} every interval")
    print(f"late polls (exporter)        {verdict.late_ratio:.4%}")
    print(f"exporter CPU                 {verdict.cpu:.0%} of one core")
    print(f"slow devices up              {verdict.slow_up:.4%}")
    print(f"faulty devices wrong         {len(verdict.wrong)}")
    print(f"log lines with errors        {len(verdict.problems)}")
    print(f"fd growth over the window    {verdict.fd_growth} (bound {verdict.fd_bound})")
    print(
        f"RSS growth over the window   {verdict.rss_growth / 2**20:.1f} MiB "
        f"(bound {verdict.rss_bound / 2**20:.0f} MiB); first/last {mib([snaps[0].rss])[0]}/"
        f"{mib([snaps[-1].rss])[0]} MiB"
    )
    failures = verdict.failures()
    print("VERDICT:", "PASS" if not failures else "FAIL")
    for failure in failures:
        print("  -", failure)
    return 0 if not failures else 1


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str]) -> int:
    opts = parse_args(argv)
    raise_fd_limit()  # children inherit it
    signal.signal(signal.SIGTERM, interrupt)
    with tempfile.TemporaryDirectory(prefix="lektrico-soak-") as tmp:
        workdir = opts.out or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        procs = Processes(workdir)
        try:
            return asyncio.run(soak(opts, workdir, procs))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            procs.kill_all()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
