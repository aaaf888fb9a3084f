"""What the measuring client adds to a scrape's time: aiohttp's client against http.client
(what bench.run times scrapes with) and curl, reading the same body from the same server.

    .venv/bin/python -m bench.scrapeclient              # a 74 MB body, 5 rounds

The server is aiohttp serving the body as /metrics does (exporter.web.server.Parts), on
127.0.0.1, with nothing else running in its loop.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import shutil
import statistics
import time

import aiohttp
from aiohttp import web

from exporter.web.server import Parts
from harness.processes import free_port

LINE = b'lektrico_current_amperes{device="sim-00001",site="bench",phase="L1"} 5.468\n'


def http_client_get(port: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t0 = time.perf_counter()
    conn.request("GET", "/metrics", headers={"Accept-Encoding": "identity"})
    conn.getresponse().read()
    seconds = time.perf_counter() - t0
    conn.close()
    return seconds


async def curl_get(port: int) -> float:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "/dev/null", "-w", "%{time_total}",
        f"http://127.0.0.1:{port}/metrics", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return float(out)


async def measure(size_mb: float, rounds: int) -> None:
    body = LINE * int(size_mb * 1e6 / len(LINE))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=Parts(body, b"", content_type="text/plain"))

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    times: dict[str, list[float]] = {"aiohttp": [], "http.client": [], "curl": []}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(rounds):
                t0 = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
                    await r.read()
                times["aiohttp"].append(time.perf_counter() - t0)
                times["http.client"].append(await asyncio.to_thread(http_client_get, port))
                if shutil.which("curl"):
                    times["curl"].append(await curl_get(port))
    finally:
        await runner.cleanup()
    print(f"{len(body) / 1e6:.1f} MB body, {rounds} rounds, median (min-max):")
    for name, values in times.items():
        if values:
            print(
                f"  {name:12} {1000 * statistics.median(values):6.0f} ms "
                f"({1000 * min(values):.0f}-{1000 * max(values):.0f})"
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=float, default=74.0)
    p.add_argument("--rounds", type=int, default=5)
    opts = p.parse_args()
    asyncio.run(measure(opts.size_mb, opts.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
