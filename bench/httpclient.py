"""What a device request costs the exporter's HTTP client against aiohttp's client session.

    .venv/bin/python -m bench.httpclient                 # 1,000 devices, 3 rounds of each
    .venv/bin/python -m bench.httpclient --devices 2000 --seconds 15 --rounds 5

The simulator serves `--devices` chargers on loopback (one address each, as bench.run's fleet);
each client then fetches their main method in its own process on the exporter's runtime
(uvloop and its GC settings), so its CPU time is its own: flat out (`--concurrency` requests
in flight, 1,000 requests for each of `--seconds`) and paced at `--rate` requests a second for
`--seconds`, each request a task as a poller sends them. The counts are bounded because the
kernel tracks every loopback connection after it ends (120 s for one closed, 10 s for one
reset): a table full drops packets, and the requests after time out. Both clients do the
same: one connection a request, no keep-alive, the body read whole and parsed. Printed: CPU
ms a request, median over the rounds, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from harness.processes import PY, ROOT, Processes, free_port

Fetch = Callable[[str, int], Awaitable[bytes]]


async def aiohttp_fetcher(concurrency: int) -> tuple[Fetch, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=max(concurrency * 2, 100), limit_per_host=1, force_close=True
        ),
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,
    )

    async def fetch(host: str, port: int) -> bytes:
        url = f"http://{host}:{port}/rpc/Charger_info.Get"
        async with session.get(url, allow_redirects=False) as resp:
            return await resp.read()

    return fetch, session.close


async def exporter_fetcher(concurrency: int) -> tuple[Fetch, Callable[[], Awaitable[None]]]:
    from exporter.device.http import HttpClient

    http = HttpClient(max(concurrency * 2, 100))

    async def fetch(host: str, port: int) -> bytes:
        request = (
            f"GET /rpc/Charger_info.Get HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "User-Agent: lektrico-exporter\r\nAccept-Encoding: gzip, deflate\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        return (await http.get(False, host, port, request, 65536)).body

    return fetch, http.close


async def client(
    kind: str, hosts: list[tuple[str, int]], concurrency: int, seconds: float, rate: float
) -> dict[str, float]:
    fetch, close = await (aiohttp_fetcher if kind == "aiohttp" else exporter_fetcher)(concurrency)
    ok = failed = 0

    async def one(i: int) -> None:
        nonlocal ok, failed
        host, port = hosts[i % len(hosts)]
        try:
            async with asyncio.timeout(5):
                orjson.loads(await fetch(host, port))
            ok += 1
        except Exception:  # counted: a benchmark of the fast path must see none
            failed += 1

    loop = asyncio.get_running_loop()
    cpu0, t0 = time.process_time(), loop.time()
    if rate > 0:
        tasks: set[asyncio.Task[None]] = set()
        for i in range(int(rate * seconds)):  # bounded: rate x seconds requests
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    else:  # a fixed count, not a time: loopback's connection tracking holds each for 120 s
        counter = iter(range(int(seconds * 1000)))

        async def worker() -> None:
            for i in counter:
                await one(i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, loop.time() - t0
    await close()
    return {"ok": ok, "failed": failed, "cpu_ms": 1000 * cpu / max(ok, 1), "rps": ok / wall}


def child(argv: list[str]) -> int:
    from exporter.cli import run as exporter_runtime

    kind, hosts_file, concurrency, seconds, rate = argv
    hosts = [(h, int(p)) for h, p in json.loads(Path(hosts_file).read_text())]
    result = exporter_runtime(client(kind, hosts, int(concurrency), float(seconds), float(rate)))
    print(json.dumps(result))
    return 0


def run_child(
    kind: str, hosts_file: Path, opts: argparse.Namespace, rate: float
) -> dict[str, float]:
    args = [kind, str(hosts_file), str(opts.concurrency), str(opts.seconds), str(rate)]
    out = subprocess.run(
        [PY, "-m", "bench.httpclient", "--child", *args],
        capture_output=True,
        cwd=ROOT,
        timeout=opts.seconds + 60,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return result


async def main(opts: argparse.Namespace) -> None:
    procs = Processes(Path(tempfile.mkdtemp(prefix="bench-httpclient-")))
    targets = procs.workdir / "targets.yaml"
    port = free_port()
    sim = procs.start(
        [PY, "-m", "exporter", "simulate", "--devices", str(opts.devices), "--mix", "1p7k",
         "--address-base", "127.201.0.1", "--port", str(port), "--processes", "2",
         "--targets-file", str(targets), "--frozen"],
        "simulator",
    )  # fmt: skip
    try:
        if not await procs.wait_output(sim, "simulator", b"simulating", 60):
            raise SystemExit("the simulator did not start")
        import yaml

        devices = yaml.safe_load(targets.read_text())["devices"]
        hosts = [d["host"].rsplit(":", 1) for d in devices]
        hosts_file = procs.workdir / "hosts.json"
        hosts_file.write_text(json.dumps(hosts))
        print(
            f"{opts.devices} devices, {opts.seconds:g} s a run, {opts.rounds} rounds; flat out at"
            f" {opts.concurrency} in flight, paced at {opts.rate:g}/s"
        )
        for label, rate in (("flat out", 0.0), (f"paced {opts.rate:g}/s", opts.rate)):
            cpu: dict[str, list[float]] = {"aiohttp": [], "exporter": []}
            failed = dict.fromkeys(cpu, 0)
            for _ in range(opts.rounds):
                for kind in cpu:  # alternated, so a drift of the machine hits both alike
                    result = await asyncio.to_thread(run_child, kind, hosts_file, opts, rate)
                    cpu[kind].append(result["cpu_ms"])
                    failed[kind] += int(result["failed"])
            a, e = (statistics.median(cpu[k]) for k in ("aiohttp", "exporter"))
            print(
                f"  {label:>14}: aiohttp session {a:.3f} ms a request, exporter's client"
                f" {e:.3f} ms ({a / e:.1f}x less); failed {failed['aiohttp']} and"
                f" {failed['exporter']}"
            )
    finally:
        await procs.stop_all()


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.httpclient", description=__doc__)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--rate", type=float, default=667.0, help="paced requests a second")
    opts = p.parse_args(argv)
    if not 1 <= opts.devices <= 20_000 or not 1 <= opts.seconds <= 120:
        p.error("--devices must be 1..20000 and --seconds 1..120")
    return opts


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        raise SystemExit(child(sys.argv[2:]))
    asyncio.run(main(parse(sys.argv[1:])))
