"""What the session ledger adds to a poll, in-process: CPU per reading and per flush, memory.

    .venv/bin/python -m bench.ledgercost                 # 10,000 devices, 20 rounds
    .venv/bin/python -m bench.ledgercost --memory        # live memory per device instead

Readings are the exporter's own (the simulator's replies through normalise.extract), from 40
simulated chargers and meters of every profile on a hand-moved clock, given to `--devices`
device names; each round feeds every device one reading 15 s after the last through the
ledger stage (SessionsStage.apply, with a tariff), as the poller would. Printed: CPU µs per
reading, and for one flush of every device's state, the snapshot on the event loop and the
write in the store's thread. bench/run.py measures the whole exporter (the ledger is on there
as by default); this isolates the ledger's share.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

from exporter.catalogue import table as cat
from exporter.config.schema import parse_config
from exporter.device.normalise import extract, normalise_reply
from exporter.reading import Reading, Sample
from exporter.sessions.stage import SessionsStage
from exporter.simulator.device import Device, ManualClock, make_device

PROFILES = ("1p7k", "3p22k", "3em", "1p7k-old", "em")
MODEL = {"1p7k": "1p7k", "1p7k-old": "1p7k", "3p22k": "3p22k", "em": "em", "3em": "3em"}
TARIFFS = (
    "tariffs: {default: home, table: {home: {currency: EUR, timezone: Europe/Bucharest,"
    " periods: [{name: night, price: 0.1, from: '22:00', to: '07:00'}, {name: day, price: 0.2}]}}}"
)


def replies_of(profile: str, device: Device) -> tuple[str, tuple[Sample, ...]]:
    model = cat.MODELS[MODEL[profile]]
    replies = {
        m.name: normalise_reply(device.read(m.name), m.name)
        for m in cat.methods_for(model.kind)
        if m.name in device.methods
    }
    return model.name, tuple(extract(model, replies, Counter()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--memory", action="store_true", help="trace live memory (slower)")
    args = p.parse_args()
    clock = ManualClock()
    protos = [
        (profile, make_device(f"p{i}", profile, seed=i, clock=clock))
        for i, profile in enumerate(PROFILES * 8)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config(f"state: {{path: '{Path(tmp) / 'state.db'}'}}\n{TARIFFS}")
        stage = SessionsStage(config)
        stage.store.open()
        if args.memory:
            tracemalloc.start()
        spent = 0.0
        for r in range(args.rounds):
            base = [replies_of(profile, device) for profile, device in protos]
            batch = [
                Reading(
                    f"dev-{i:05d}",
                    (("site", "x"),),
                    1_790_000_000.0 + r * 15.0 + i * 1e-4,
                    True,
                    0.01,
                    *base[i % len(base)],
                )
                for i in range(args.devices)
            ]
            t0 = time.process_time()
            for reading in batch:
                stage.apply(reading)
            spent += time.process_time() - t0
            clock.advance(15.0)
            if r < args.rounds - 1:  # the last round's changes are flushed below
                stage._dirty.clear()
                stage._sessions.clear()
        del batch, base
        if args.memory:
            live, _ = tracemalloc.get_traced_memory()
            print(f"ledger live memory: {live / args.devices / 1000:.2f} kB per device")
        t0 = time.process_time()
        flush = stage._take()
        snapshot = time.process_time() - t0
        assert flush is not None
        t0 = time.perf_counter()
        stage.store.write(flush)
        write = time.perf_counter() - t0
        stage.store.close()
    readings = args.devices * args.rounds
    print(f"ledger stage: {spent / readings * 1e6:.1f} us CPU per reading ({readings:,} readings)")
    changed = len(flush.states)
    print(
        f"one flush of {changed:,} device states and {len(flush.sessions):,} sessions: "
        f"{snapshot * 1e3:.0f} ms snapshot on the loop ({snapshot / changed * 1e6:.0f} us a "
        f"device), {write * 1e3:.0f} ms write in the store's thread"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
