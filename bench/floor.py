"""The bare aiohttp floor: what fetching the same devices costs a client that does nothing else.

It runs in its own process, on the exporter's runtime, so that its CPU time is its own:

    python -m bench.floor URLS_FILE CONCURRENCY SECONDS RATE    # prints one JSON line

`run_floor` starts it from the benchmark and reads its result.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bench.fleet import Fleet
from bench.results import MAIN_METHOD_OF
from harness.processes import PY, Processes


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


def main(argv: Sequence[str]) -> int:
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
    name = f"floor-{n}{'-paced' if rate else ''}"
    proc = procs.start([PY, "-m", "bench.floor", *args], name)
    try:
        await asyncio.to_thread(proc.wait, seconds + 60)
    finally:
        await procs.stop(proc)
    lines = procs.output(name).splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the floor failed ({proc.returncode}); see {out / f'{name}.err'}")
    line = lines[-1]
    result: dict[str, float] = json.loads(line)
    done = result["ok"]
    result["rps"] = done / result["seconds"] if result["seconds"] else 0.0
    result["cpu_per_1000"] = 1000 * result["cpu"] / done if done else float("nan")
    return result


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
