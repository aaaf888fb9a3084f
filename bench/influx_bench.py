"""InfluxDB output throughput for a 1,000-device fleet: points/s serialised and written.

    .venv/bin/python -m bench.influx_bench [--devices 1000] [--polls 30]

Readings are built from simulated devices' replies exactly as the poller builds them (without
HTTP, which is the poller's cost, not the output's). "Serialised" is Reading → line protocol.
"Written" is the whole output path: publish (serialise, queue), batches gzip'ed and sent with
influxdb-client to a local VictoriaMetrics started here, until all of it is accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

from exporter.catalogue import table as cat
from exporter.catalogue.selfmetrics import SelfMetrics
from exporter.config.schema import parse_config
from exporter.device.normalise import extract, normalise_reply
from exporter.outputs.influx.lines import Serializer
from exporter.outputs.influx.writer import InfluxWriter
from exporter.reading import Reading, Sample
from exporter.simulator.device import ManualClock, make_device
from harness.servers import VictoriaMetrics

PROFILES = ("1p7k",) * 4 + ("3p22k",) * 3 + ("em",) * 2 + ("3em",)


def fleet_readings(devices: int, polls: int, interval: float = 15.0) -> list[list[Reading]]:
    """`polls` rounds of one reading per device, `interval` apart in device and poll time."""
    clock = ManualClock()
    fleet = [
        make_device(f"dev{i:04d}", PROFILES[i % len(PROFILES)], seed=i, clock=clock)
        for i in range(devices)
    ]
    models = [cat.MODELS[cat.model_from_device_id(d.device_id)] for d in fleet]
    start = time.time() - polls * interval
    rounds = []
    for n in range(polls):
        clock.advance(interval)
        readings = []
        for device, model in zip(fleet, models, strict=True):
            replies = {m: normalise_reply(device.read(m)) for m in device.methods}
            samples = [
                Sample("lektrico_up", (), 1.0),
                Sample("lektrico_poll_duration_seconds", (), 0.02),
                *extract(model, replies, Counter()),
                *(
                    Sample("lektrico_poll_errors_total", (("reason", r),), 0.0)
                    for r in cat.POLL_ERROR_REASONS
                ),
            ]
            readings.append(
                Reading(
                    device.name,
                    (("site", "bench"),),
                    start + n * interval,
                    True,
                    0.02,
                    model.name,
                    tuple(samples),
                )
            )
        rounds.append(readings)
    return rounds


def bench_serialise(rounds: list[list[Reading]]) -> tuple[float, int, int]:
    serializer = Serializer("s")
    points = size = 0
    t0 = time.perf_counter()
    for readings in rounds:
        for reading in readings:
            data = serializer.encode(reading)
            points += data.count(b"\n")
            size += len(data)
    return time.perf_counter() - t0, points, size


async def bench_write(rounds: list[list[Reading]], workdir: Path) -> tuple[float, float, float]:
    """(seconds for the first poll, seconds for the others, points written by the others).

    The first poll's time is mostly VictoriaMetrics registering the fleet's new series.
    """
    vm = VictoriaMetrics(workdir / "vm")
    await vm.start()
    try:
        config = parse_config(
            f"influxdb: {{url: '{vm.url}', bucket: bench, org: bench, precision: s, "
            "batch_size: 5000, flush_interval: 1s}"
        )
        assert config.influxdb is not None
        metrics = SelfMetrics()
        writer = InfluxWriter(config.influxdb, metrics)
        await writer.start()
        written = "lektrico_influxdb_points_written_total"
        out = []
        for part in (rounds[:1], rounds[1:]):
            before = metrics.registry.get_sample_value(written) or 0.0
            t0 = time.perf_counter()
            for readings in part:
                for reading in readings:
                    writer.publish(reading)
                await asyncio.sleep(0)  # the writer task runs between polls, as in the exporter
            await writer.flush()
            out.append(time.perf_counter() - t0)
            out.append((metrics.registry.get_sample_value(written) or 0.0) - before)
        await writer.close()
        return out[0], out[2], out[3]
    finally:
        await vm.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--polls", type=int, default=11)
    args = parser.parse_args()

    rounds = fleet_readings(args.devices, args.polls)
    readings = args.devices * args.polls
    seconds, points, size = bench_serialise(rounds)
    per_poll = points / readings
    print(f"fleet: {args.devices} devices x {args.polls} polls = {readings} readings")
    print(f"points: {points} ({per_poll:.1f} a reading, {size / points:.0f} bytes a point)")
    print(f"serialised: {points / seconds:,.0f} points/s ({readings / seconds:,.0f} readings/s)")
    with tempfile.TemporaryDirectory() as tmp:
        first, elapsed, written = asyncio.run(bench_write(rounds, Path(tmp)))
    print(
        f"written to VictoriaMetrics: {written / elapsed:,.0f} points/s "
        f"({written:.0f} points in {elapsed:.2f} s: publish, gzip, batches of 5000; "
        f"before that the first poll, creating the fleet's series, took {first:.2f} s)"
    )
    needed = args.devices * per_poll / 15
    print(f"a {args.devices}-device fleet polled every 15 s needs {needed:,.0f} points/s")
    hour_100 = 100 * per_poll * 240
    print(
        f"an hour of 100 devices at 15 s: {hour_100:,.0f} points "
        f"(the default buffer of 2,000,000 holds {2_000_000 / hour_100:.1f} h)"
    )


if __name__ == "__main__":
    main()
