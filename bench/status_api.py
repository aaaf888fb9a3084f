"""What the status page's data costs at a fleet's size: `/api/devices`, over HTTP, timed.

    .venv/bin/python -m bench.status_api               # 10,000 devices, about 30 s
    .venv/bin/python -m bench.status_api --devices 1000

An exporter on 127.0.0.1 is configured with N devices (unreachable addresses, polled once an
hour, so polls do not disturb the timing), and each device's status row is filled by one
synthetic reading (charging, up, or down with an error, in the proportions below). Then each
of the page's query shapes is asked 20 times; the median and the slowest are printed, beside
the target (20 ms at 10,000 devices). The first request after start is the slowest: it tells
the status board every device's host, once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from exporter.app import Exporter
from exporter.config.schema import parse_config
from exporter.reading import Reading, Sample
from harness.processes import free_port

QUERIES = {
    "default view (sorted by name)": "",
    "last page, by name descending": "sort=name&order=desc&offset=9900",
    "text filter": "q=dev-0999",
    "sorted by power": "sort=power_w&order=desc",
    "down at one site": "status=down&label=site:s3",
}


def reading(i: int, name: str, labels: tuple[tuple[str, str], ...]) -> Reading:
    up = i % 10 != 0
    info = (
        ("device_id", f"1p7k_{100000 + i}"),
        ("model", "1p7k"),
        ("serial", str(100000 + i)),
        ("fw_version", "1.60"),
        ("fw_id", "x"),
        ("board_revision", "C"),
        ("alias", name),
    )
    samples = (
        Sample("lektrico_device_info", info, 1.0),
        Sample("lektrico_charger_state", (("state", "C" if i % 3 else "A"),), 1.0),
        Sample("lektrico_power_watts", (), 7000.0 if i % 3 else 0.0),
        Sample("lektrico_session_energy_joules", (), 3.6e6 * (i % 7)),
        Sample("lektrico_temperature_celsius", (), 30.0),
        Sample("lektrico_wifi_signal_dbm", (), -60.0),
    )
    return Reading(
        name,
        labels,
        time.time(),
        up,
        0.05,
        "1p7k",
        samples if up else samples[:1],
        None if up else "connect",
        None if up else "Connect call failed ('127.0.0.1', 1)",
    )


async def main(args: argparse.Namespace) -> int:
    n = args.devices
    logging.getLogger("lektrico").setLevel(logging.ERROR)  # the unreachable devices' lines
    devices = [
        {"name": f"dev-{i:05d}", "host": f"127.0.0.1:{20000 + i}", "labels": {"site": f"s{i % 20}"}}
        for i in range(n)
    ]
    work = Path(tempfile.mkdtemp(prefix="lektrico-status-api-"))
    config = parse_config(
        json.dumps(
            {
                "listen": f"127.0.0.1:{free_port()}",
                "devices": devices,
                "poll": {
                    "interval": "1h",
                    "timeout": "1s",
                    "slow_interval": "1h",
                    "identity_interval": "1h",
                    "max_backoff": "1h",
                },
                "state": {"path": str(work / "state.db")},
                "log": {"level": "error"},
            }
        )
    )
    exp = Exporter(config)
    await exp.start()
    try:
        made = [
            reading(i, st.name, st.target.labels)
            for i, st in enumerate(exp.poller.devices.values())
        ]
        t0 = time.perf_counter()
        for r in made:
            exp.status.publish(r)
        per_reading = (time.perf_counter() - t0) / n
        base = f"http://127.0.0.1:{exp.port}/api/devices"
        print(f"status board: {per_reading * 1e6:.1f} us a reading (its share of each poll)")
        print(f"/api/devices at {n:,} devices (target at 10,000: 20 ms)")
        async with aiohttp.ClientSession() as session:
            for label, query in QUERIES.items():
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    async with session.get(f"{base}?{query}") as resp:
                        body = await resp.read()
                        assert resp.status == 200, body[:200]
                    times.append(time.perf_counter() - t0)
                median, slowest = statistics.median(times), max(times)
                print(
                    f"  {label:<32} median {median * 1000:6.1f} ms   slowest "
                    f"{slowest * 1000:6.1f} ms   {len(body):,} bytes"
                )
    finally:
        await exp.stop()
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    return asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(cli())
