"""The garbage collector's pauses, the event loop's lag and the objects a device keeps, while
bench.pollcost polls a fleet in-process through the app's whole sink chain.

    .venv/bin/python -m bench.gcpauses -- --app --devices 10000 --interval 15 \\
        --concurrency 500 --settle 70 --window 60
    .venv/bin/python -m bench.gcpauses --freeze -- --app --devices 10000 ...   # the variant
    .venv/bin/python -m bench.gcpauses --census-only -- --app --devices 2000 --interval 15 \\
        --concurrency 200 --settle 60 --window 15

Every argument after `--` is bench.pollcost's. After `--settle` s it records each collection's
duration by generation (gc.callbacks) and how late a 10 ms sleep wakes (the loop's lag, which
every poll start waits through); halfway through the window it counts the tracked objects by
type (gc.get_objects: what start-up froze is not among them), per device. `--freeze` tries a
scheme the exporter does not use: collect the young generation every second and freeze its
survivors, with a full collection every `--full` s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import bench.pollcost as pollcost


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    cut = argv.index("--") if "--" in argv else len(argv)
    own, rest = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--freeze", action="store_true", help="young collections + freeze, each s")
    p.add_argument("--full", type=float, default=100.0, help="with --freeze: s between fulls")
    p.add_argument("--census-only", action="store_true", help="count objects, no timing")
    return p.parse_args(own), rest


class Recorder:
    def __init__(self, settle: float, devices: int) -> None:
        self.start = time.monotonic()
        self.settle = settle
        self.devices = devices
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.lags: list[float] = []
        self.census: Counter[str] = Counter()
        self._began = 0.0

    def settled(self) -> bool:
        return time.monotonic() - self.start > self.settle

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self.settled():
            self.pauses[info["generation"]].append(1000 * (time.perf_counter() - self._began))

    async def lag(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            if self.settled():
                self.lags.append(1000 * (time.perf_counter() - t - 0.01))

    async def count(self, at: float) -> None:
        await asyncio.sleep(at)
        self.census = Counter(type(o).__name__ for o in gc.get_objects())

    def report(self, timing: bool) -> None:
        if timing:
            for generation, pauses in self.pauses.items():
                if pauses:
                    print(
                        f"gen{generation} collections: {len(pauses)}, longest "
                        f"{max(pauses):.0f} ms, in all {sum(pauses):.0f} ms"
                    )
            if self.lags:
                lags = sorted(self.lags)

                def q(f: float) -> float:
                    return lags[min(len(lags) - 1, int(f * len(lags)))]

                print(
                    f"loop lag: p50 {q(0.5):.1f} ms, p99 {q(0.99):.1f} ms, p99.9 "
                    f"{q(0.999):.1f} ms, max {lags[-1]:.0f} ms ({len(lags)} wake-ups)"
                )
        if self.census:
            top = ", ".join(
                f"{name} {n / self.devices:.1f}" for name, n in self.census.most_common(8)
            )
            print(f"tracked objects a device: {top}")


async def young_and_freeze(full: float) -> None:
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(1.0)
        if time.monotonic() - last_full > full:
            gc.unfreeze()
            t = time.perf_counter()
            gc.collect()
            print(f"full collection {1000 * (time.perf_counter() - t):.0f} ms", flush=True)
            last_full = time.monotonic()
        else:
            gc.collect(0)
        gc.freeze()


def main() -> int:
    opts, rest = parse_args(sys.argv[1:])
    sys.argv = ["bench.pollcost", *rest]
    poll_opts = pollcost.parse_args()
    settle = poll_opts.settle if poll_opts.settle is not None else poll_opts.interval * 6 + 2
    rec = Recorder(settle, poll_opts.devices)
    timing = not opts.census_only
    if timing:
        gc.callbacks.append(rec.on_gc)
    runtime = pollcost.exporter_runtime  # type: ignore[attr-defined]

    def wrapped(coro: Coroutine[Any, Any, Any], *args: Any) -> Any:
        async def run() -> Any:
            tasks = [asyncio.ensure_future(rec.count(rec.settle + poll_opts.window / 2))]
            if timing:
                tasks.append(asyncio.ensure_future(rec.lag()))
            if opts.freeze:
                tasks.append(asyncio.ensure_future(young_and_freeze(opts.full)))
            try:
                return await coro
            finally:
                for task in tasks:
                    task.cancel()

        return runtime(run(), *args)

    pollcost.exporter_runtime = wrapped  # type: ignore[attr-defined,assignment]
    try:
        pollcost.main()
    finally:
        rec.report(timing)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
