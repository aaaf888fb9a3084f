"""Golden expositions: what a user sees for each simulated device profile.

A failing test prints the diff of the exposition. After an intended change, regenerate with
`UPDATE_GOLDEN=1 pytest tests/test_golden.py` and review the diff in git.
"""

from __future__ import annotations

import difflib
import os
import re
import time
from pathlib import Path

import pytest

from exporter.device.poller import Poller, PollSettings, Target
from exporter.outputs.prometheus import render_probe
from exporter.simulator.server import DeviceSpec

from .conftest import FleetFactory

GOLDEN = Path(__file__).parent / "golden"
PROFILES = [
    "1p7k",
    "1p7k-old",
    "1p7k-partial",
    "1p7k-spec",
    "1p7k-short",
    "3p22k",
    "em",
    "em-merged",
    "3em",
]
# Timing values differ on every run; everything else is deterministic in a frozen fleet.
VOLATILE = re.compile(
    r"^((?:lektrico_poll_duration_seconds|lektrico_last_poll_success_timestamp_seconds)\{.*\}) .*$",
    re.MULTILINE,
)


# The schedule is evaluated at the poll's time: polls happen at this one, a Tuesday at 23:00 in
# the simulated chargers' Europe/Bucharest.
POLL_TIME = 1764709200.0


class FixedWallClock:
    monotonic = staticmethod(time.monotonic)

    @staticmethod
    def time() -> float:
        return POLL_TIME


@pytest.mark.parametrize("profile", PROFILES)
async def test_exposition_matches_golden_file(
    make_fleet: FleetFactory, profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("exporter.device.poller.time", FixedWallClock)
    fleet = await make_fleet([DeviceSpec(profile, profile, seed=1)], frozen=True)
    poller = Poller(PollSettings(interval=60, timeout=5), [])
    poller.set_targets(
        [Target(name=profile, base_url=fleet.url(profile), labels=(("site", "lab"),))]
    )
    try:
        # A first poll leaves some slow methods to the next ones (two a poll): the golden
        # exposition is the device's full one, once they are all in.
        for _ in range(4):
            reading = await poller.poll(poller.devices[profile])
    finally:
        await poller.close()
    actual = VOLATILE.sub(r"\1 <volatile>", render_probe(reading).decode())
    path = GOLDEN / f"{profile}.prom"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(actual)
    expected = path.read_text()
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(True), actual.splitlines(True), str(path), "actual"
        )
    )
    assert actual == expected, f"exposition for {profile} changed:\n{diff}"
