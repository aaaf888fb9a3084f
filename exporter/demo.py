"""`--demo N`: N simulated devices on 127.0.0.1, plus a few faulty ones, polled and exported in
one process, so a first look shows both a healthy fleet and how problems appear."""

from __future__ import annotations

import itertools
import logging
import shutil
from pathlib import Path

from exporter.app import Exporter, run_until_signal
from exporter.config.schema import Config, DeviceConfig, PollConfig
from exporter.sessions.store import temporary_path
from exporter.simulator.device import Charger
from exporter.simulator.server import DeviceSpec, SimulatedFleet

log = logging.getLogger("lektrico.demo")
PROFILES = ("1p7k", "3p22k", "em", "1p7k-old", "3em", "1p7k-partial")
SITES = ("home", "office", "depot")
DEMO_LISTEN = "127.0.0.1:9654"
SPEED = 30.0  # simulated seconds per real second, so charging sessions come and go quickly
# The faulty devices every demo adds after the N healthy ones: one whose port refuses
# connections (as an unplugged or mistyped charger), one that accepts and never answers (each
# poll times out), and a charger that answers with an active overtemperature error (state E).
FAULTY = (
    DeviceSpec(name="demo-unreachable", profile="1p7k", fault="refuse", seed=9001),
    DeviceSpec(name="demo-timeout", profile="3p22k", fault="hang", seed=9002),
    DeviceSpec(name="demo-error", profile="1p7k", seed=9003),
)
HELD_ERROR = ("demo-error", "overtemp")


def demo_specs(count: int) -> list[DeviceSpec]:
    profiles = itertools.cycle(PROFILES)
    healthy = [
        DeviceSpec(name=f"demo-{i:03d}", profile=next(profiles), seed=i) for i in range(count)
    ]
    return [*healthy, *FAULTY]


def demo_config(config: Config, fleet: SimulatedFleet, listen_given: bool) -> Config:
    devices = [
        DeviceConfig.model_validate(
            {"name": name, "host": fleet.host(name), "labels": {"site": SITES[i % len(SITES)]}}
        )
        for i, name in enumerate(fleet.names)
    ]
    update: dict[str, object] = {"devices": [*config.devices, *devices]}
    # Loopback unless told where to listen, by --listen or by the config's own `listen` (in a
    # container, 0.0.0.0 is what makes the published port reach the demo).
    if not listen_given and "listen" not in config.model_fields_set:
        update["listen"] = DEMO_LISTEN
    if config.state.path is None:  # a demo leaves no state behind
        update["state"] = config.state.model_copy(update={"path": temporary_path()})
    if config.poll == PollConfig():
        # Quicker than the 15 s default so the first page of the demo is already full.
        update["poll"] = PollConfig(interval=5.0, timeout=2.0)
    return config.model_copy(update=update)


async def run_demo(config: Config, count: int, listen_given: bool = False) -> int:
    fleet = SimulatedFleet(demo_specs(count), speed=SPEED)
    await fleet.start()
    demo = demo_config(config, fleet, listen_given)
    try:
        name, cause = HELD_ERROR
        device = fleet.device(name)
        if isinstance(device, Charger):
            device.hold_error(cause)
        exporter = Exporter(demo)
        log.info(
            "demo: %d simulated devices and %d faulty ones (%s); open http://%s/",
            count,
            len(FAULTY),
            ", ".join(spec.name for spec in FAULTY),
            demo.listen,
        )
        await run_until_signal(exporter)
    finally:
        await fleet.stop()
        if demo.state.path is not None and config.state.path is None:
            shutil.rmtree(Path(demo.state.path).parent, ignore_errors=True)
    return 0
