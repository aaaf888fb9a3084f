"""The vendor's own client as the oracle: what real firmware replies, and what they mean.

`lektricowifi` (the Lektrico Python client Home Assistant uses) is a test dependency only: the
exporter never imports it. Each default simulator profile must be read by it exactly as Home
Assistant does (`device_config()` once, then `device_info()` at every update), and the values
it gets must be the exporter's for the same replies: both read the simulator at the same
simulated instant, several times as the device moves on.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lektricowifi import Device as VendorDevice
from lektricowifi import DeviceError

from exporter.catalogue import table as cat
from exporter.device.poller import Poller, PollSettings, Target
from exporter.reading import Reading
from exporter.simulator.device import DEFAULT_PROFILES, ManualClock
from exporter.simulator.server import DeviceSpec

from .conftest import FleetFactory

SETTINGS = PollSettings(interval=5.0, timeout=2.0, slow_interval=0.0, identity_interval=600.0)
STEPS = 6  # device_info() polls, each STEP simulated seconds apart
STEP = 997.0
# The vendor's names for the current limit reasons, as ours (lektricowifi CURRENT_LIMIT_REASON).
VENDOR_REASONS = {
    "no_limit": "hardware",
    "installation_current": "install",
    "user_limit": "user",
    "dynamic_limit": "dynamic",
    "schedule": "schedule",
    "em_offline": "em_offline",
    "em": "em",
    "ocpp": "ocpp",
    "overtemperature": "temperature",
    "switching_phases": "phase_switching",
    "1p_charging_disabled": "single_phase_disabled",
}
# The vendor's readable charger states (its _put_readable_format), as ours.
VENDOR_STATES = {
    "available": {"A"},
    "connected": {"B"},
    "need_auth": {"B_AUTH"},
    "paused": {"B_PAUSE"},
    "charging": {"C", "D"},
    "error": {"E", "F"},
    "updating_firmware": {"OTA"},
    "locked": {"LOCKED"},
    "paused_by_scheduler": {"B_SCHEDULER"},
}
VENDOR_FLAGS = (
    "state_e_activated",
    "overtemp",
    "critical_temp",
    "overcurrent",
    "meter_fault",
    "undervoltage_error",
    "overvoltage_error",
    "rcd_error",
    "cp_diode_failure",
    "contactor_failure",
)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


def one(reading: Reading, metric: str, **labels: str) -> float | None:
    want = tuple(labels.items())
    found = [s.value for s in reading.samples if s.metric == metric and s.labels == want]
    return found[0] if found else None


def on(reading: Reading, metric: str) -> str:
    (label,) = [dict(s.labels) for s in reading.samples if s.metric == metric and s.value == 1]
    return next(iter(label.values()))


def info(reading: Reading) -> dict[str, str]:
    (labels,) = [dict(s.labels) for s in reading.samples if s.metric == "lektrico_device_info"]
    return labels


def close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def assert_charger_agrees(vendor: dict[str, Any], reading: Reading, phases: int) -> None:
    assert on(reading, "lektrico_charger_state") in VENDOR_STATES[vendor["charger_state"]]
    assert close(one(reading, "lektrico_power_watts"), vendor["instant_power"])
    assert close(one(reading, "lektrico_session_duration_seconds"), vendor["charging_time"])
    assert close(one(reading, "lektrico_session_energy_joules"), vendor["session_energy"] * 3600)
    assert close(
        one(reading, "lektrico_energy_joules_total"), vendor["total_charged_energy"] * 3.6e6
    )
    assert close(one(reading, "lektrico_temperature_celsius"), vendor["temperature"])
    for i, phase in enumerate(cat.PHASES, start=1):
        current = one(reading, "lektrico_current_amperes", phase=phase)
        voltage = one(reading, "lektrico_voltage_volts", phase=phase)
        if i <= phases:
            assert close(current, vendor[f"current_l{i}"]), phase
            assert close(voltage, vendor[f"voltage_l{i}"]), phase
        else:  # single-phase: the vendor shows 0, the exporter no series
            assert current is None and vendor[f"current_l{i}"] == 0
    assert (
        on(reading, "lektrico_current_limit_reason")
        == (VENDOR_REASONS[vendor["current_limit_reason"]])
    )
    limits = {
        "dynamic": vendor["dynamic_current"],
        "install": vendor["install_current"],
        "user": vendor["user_current"],
    }
    for limit, amperes in limits.items():
        assert close(one(reading, "lektrico_current_limit_amperes", limit=limit), amperes), limit
    assert close(one(reading, "lektrico_relay_mode"), vendor["relay_mode"])
    assert close(one(reading, "lektrico_led_brightness_ratio"), vendor["led_max_brightness"] / 100)
    assert one(reading, "lektrico_config_flag", flag="headless") == (not vendor["require_auth"])
    for flag in VENDOR_FLAGS:
        assert one(reading, "lektrico_error_active", error=flag) == vendor[flag], flag
    assert info(reading)["fw_version"] == vendor["fw_version"]


def assert_meter_agrees(vendor: dict[str, Any], reading: Reading, phases: int) -> None:
    metrics = {
        "current": "lektrico_meter_current_amperes",
        "voltage": "lektrico_meter_voltage_volts",
        "power": "lektrico_meter_power_watts",
        "power_factor": "lektrico_meter_power_factor",
    }
    for key, metric in metrics.items():
        for i, phase in enumerate(cat.PHASES[:phases], start=1):
            assert close(one(reading, metric, phase=phase), vendor[f"{key}_l{i}"]), (key, phase)
    assert close(one(reading, "lektrico_meter_breaker_rating_amperes"), vendor["breaker_curent"])
    mode = cat.LOAD_BALANCING_MODES[vendor["lb_mode"]]
    assert one(reading, "lektrico_meter_load_balancing_mode", mode=mode) == 1
    assert info(reading)["fw_version"] == vendor["fw_version"]


@pytest.mark.parametrize("profile", DEFAULT_PROFILES)
async def test_vendor_client_reads_every_default_profile_as_the_exporter_does(
    make_fleet: FleetFactory, http: httpx.AsyncClient, profile: str
) -> None:
    fleet = await make_fleet([DeviceSpec("d", profile, seed=3)])
    clock = ManualClock(7200.0)
    fleet.device("d")._clock = clock  # both clients read the same instants
    vendor = VendorDevice(fleet.host("d"), asyncClient=http)
    poller = Poller(SETTINGS, [])
    poller.set_targets([Target("d", fleet.url("d"))])
    st = poller.devices["d"]
    kinds: set[str] = set()
    try:
        config = await vendor.device_config()
        for _ in range(3):  # the exporter's first polls, until its slow methods are all in
            await poller.poll(st)
        for _ in range(STEPS):
            clock.advance(STEP)
            seen = await vendor.device_info(config["type"])
            reading = await poller.poll(st)
            assert reading.up, reading.error
            kinds.add(str(seen.get("charger_state", "meter")))
            if reading.model in ("1p7k", "3p22k"):
                assert_charger_agrees(seen, reading, cat.MODELS[reading.model].phases)
            else:
                assert_meter_agrees(seen, reading, cat.MODELS[reading.model].phases)
    finally:
        await poller.close()
    assert config["type"] == reading.model == profile
    assert str(config["serial_number"]) == info(reading)["serial"]
    assert config["board_revision"] == info(reading)["board_revision"]
    assert len(kinds) >= 1


async def test_the_specs_trailing_space_is_a_quirk_the_vendor_client_rejects(
    make_fleet: FleetFactory, http: httpx.AsyncClient
) -> None:
    # Real firmware answers Dynamic_current.Get without the spec text's trailing space: the
    # vendor's client (and Home Assistant) would fail on every v2.0 charger otherwise.
    fleet = await make_fleet([DeviceSpec("d", "1p7k-spec", seed=3)], frozen=True)
    vendor = VendorDevice(fleet.host("d"), asyncClient=http)
    config = await vendor.device_config()
    with pytest.raises((DeviceError, KeyError, ValueError, TypeError)):
        await vendor.device_info(config["type"])
    poller = Poller(SETTINGS, [])
    poller.set_targets([Target("d", fleet.url("d"))])
    try:
        reading = await poller.poll(poller.devices["d"])
    finally:
        await poller.close()
    assert reading.up


def test_the_exporter_never_imports_the_vendor_client() -> None:
    sources = Path(__file__).parents[1] / "exporter"
    imports = ("import lektricowifi", "from lektricowifi")
    users = [p for p in sources.rglob("*.py") if any(i in p.read_text() for i in imports)]
    assert users == []
