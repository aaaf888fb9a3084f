"""The device simulator keeps its promises: plausible physics, real quirks, real faults."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from exporter.simulator import (
    NO_ANOMALIES,
    Anomalies,
    DeviceSpec,
    ManualClock,
    SimulatedFleet,
    make_device,
)
from exporter.simulator.cli import add_arguments, plan_fleet
from exporter.simulator.device import Charger
from exporter.simulator.server import ControlServer
from harness.processes import free_port

REPO = Path(__file__).resolve().parent.parent
CHARGER_PROFILES = ("1p7k-old", "1p7k", "1p7k-partial", "3p22k")
FW_147_KEYS = {  # captures/1p7k-charger_info.get-fw1.47.json
    "charger_state",
    "session_energy",
    "charging_time",
    "session_id",
    "instant_power",
    "current",
    "currents",
    "current_limit_reason",
    "voltage",
    "voltages",
    "temperature",
    "energy_index",
    "total_charged_energy",
    "headless",
    "led_max_brightness",
    "install_current",
    "dynamic_current",
    "em_current",
    "fw_version",
    "extended_charger_state",
    "has_active_errors",
    "charger_is_paused",
    "heap_free",
    "pwm_current",
}
FW_151_KEYS = {  # captures/1p7k-charger_info.get-fw1.51-partial.json
    "charger_state",
    "extended_charger_state",
    "session_energy",
    "instant_power",
    "currents",
    "voltages",
    "total_charged_energy",
    "dynamic_current",
    "relay_mode",
    "has_active_errors",
    "charger_is_paused",
    "current_limit_reason",
    "temperature",
    "fw_version",
    "headless",
    "install_current",
}

AsyncTest = Callable[..., Awaitable[None]]


def bounded(seconds: float = 10.0) -> Callable[[AsyncTest], AsyncTest]:
    """Fail an async test that runs longer than ``seconds`` instead of hanging the suite."""

    def decorate(test: AsyncTest) -> AsyncTest:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            async with asyncio.timeout(seconds):
                await test(*args, **kwargs)

        return run

    return decorate


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as client:
        yield client


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, json.loads(await response.read())


def history(
    profile: str, seed: int, days: float, step: float, anomalies: Anomalies | None = None
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(Charger_info, Counters_config) polled every ``step`` simulated seconds."""
    clock = ManualClock()
    device = make_device("c", profile, seed=seed, clock=clock, anomalies=anomalies)
    polls = []
    for _ in range(int(days * 86400 / step)):
        clock.advance(step)
        polls.append((device.read("Charger_info.Get"), device.read("Counters_config.Get")))
    return polls


# --- state machine ------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["1p7k", "1p7k-old", "3p22k"])
def test_counters_never_decrease_and_energy_follows_power(profile: str) -> None:
    step = 47.0
    max_watts = 32 * 242 * (3 if profile == "3p22k" else 1)
    # Without energy resets, which take session_energy back to 0 on purpose.
    polls = history(profile, seed=3, days=4, step=step, anomalies=NO_ANOMALIES)
    for (info0, count0), (info1, count1) in itertools.pairwise(polls):
        assert info1["total_charged_energy"] >= info0["total_charged_energy"]
        assert info1["session_id"] >= info0["session_id"]
        assert 0 <= info1["current_limit_reason"] <= (7 if profile == "1p7k-old" else 11)
        for key in ("total_charged_time", "total_charged_sessions", "total_charged_energy"):
            assert count1[key] >= count0[key], key
        if info1["session_id"] != info0["session_id"]:
            assert info1["session_id"] == info0["session_id"] + 1
            continue
        gained_wh = info1["session_energy"] - info0["session_energy"]
        charged_s = info1["charging_time"] - info0["charging_time"]
        assert gained_wh >= -0.01 and 0 <= charged_s <= step
        # Energy only accrues while charging, never faster than the hardware can deliver.
        assert gained_wh <= max_watts * (charged_s + 1) / 3600 + 0.02
        assert info1["session_energy"] <= max_watts * (info1["charging_time"] + 1) / 3600
        if (
            info0["extended_charger_state"] == info1["extended_charger_state"] == "C"
            and info0["instant_power"] == info1["instant_power"]
        ):
            assert gained_wh == pytest.approx(info1["instant_power"] * step / 3600, abs=0.02)
            kwh = info1["total_charged_energy"] - info0["total_charged_energy"]
            assert kwh * 1000 == pytest.approx(gained_wh, abs=1.5)


@pytest.mark.parametrize("profile", ["1p7k", "3p22k"])
def test_power_is_currents_times_voltages(profile: str) -> None:
    polls = history(profile, seed=5, days=1, step=61)
    charging = [info for info, _ in polls if info["charger_state"] == "C"]
    assert charging
    for info in charging:
        watts = sum(i * v for i, v in zip(info["currents"], info["voltages"], strict=True))
        assert info["instant_power"] == pytest.approx(watts, rel=0.001)
        assert 0 < info["instant_power"] <= 32 * 242 * len([v for v in info["voltages"] if v])
    idle = [info for info, _ in polls if info["charger_state"] == "A"]
    assert idle and all(info["instant_power"] == 0 for info in idle)


def test_chargers_visit_every_episode_over_simulated_weeks() -> None:
    seen: set[str] = set()
    for seed in range(4):
        seen |= {info["extended_charger_state"] for info, _ in history("1p7k", seed, 14, 60)}
    assert {"A", "B", "B_AUTH", "B_PAUSE", "B_SCHEDULER", "C", "E", "LOCKED", "OTA"} <= seen


def test_chargers_give_every_documented_limit_reason_and_idle_errors_over_weeks() -> None:
    reasons: set[int] = set()
    idle_errors: set[str] = set()
    for profile in ("1p7k", "3p22k"):
        for seed in range(6):
            clock = ManualClock()
            device = make_device("c", profile, seed=seed, clock=clock)
            for _ in range(int(21 * 86400 / 120)):
                clock.advance(120)
                info = device.read("Charger_info.Get")
                reasons.add(info["current_limit_reason"])
                if info["extended_charger_state"] == "A" and info["has_active_errors"]:
                    active = device.read("Active_errors.Get")
                    idle_errors |= {k for k, v in active.items() if v}
    assert reasons == set(range(12))
    assert idle_errors and "state_e_activated" not in idle_errors


def test_paused_and_error_states_report_consistently() -> None:
    clock = ManualClock()
    device = make_device("c", "1p7k", seed=2, clock=clock)
    saw_pause = False
    logged: set[str] = set()
    for _ in range(20000):
        clock.advance(60)
        info = device.read("Charger_info.Get")
        active = {k for k, v in device.read("Active_errors.Get").items() if v}
        now_logged = {k for k, v in device.read("Logged_errors.Get").items() if v}
        if info["extended_charger_state"] == "B_PAUSE":
            saw_pause = True
            assert info["charger_is_paused"] and info["instant_power"] == 0
        if info["extended_charger_state"] == "E":
            assert info["has_active_errors"] and active - {"state_e_activated"}
            assert active <= now_logged
        else:
            # Outside E, an error may be active while idle (a failed self-test), never E's.
            assert info["has_active_errors"] == bool(active)
            assert "state_e_activated" not in active
            assert not active or info["extended_charger_state"] == "A"
            assert active <= now_logged
        assert logged <= now_logged  # logged flags stay set
        logged = now_logged
    assert saw_pause and len(logged) >= 2


def test_session_end_records_last_session_energy() -> None:
    # Without energy resets: after one, last_session_energy is the whole session's, more.
    polls = history("1p7k", seed=7, days=3, step=30, anomalies=NO_ANOMALIES)
    ended = 0
    for (info0, _), (info1, count1) in itertools.pairwise(polls):
        if (
            info1["charger_state"] == "A"
            and info0["charger_state"] != "A"
            and info0["session_energy"] > 0
        ):
            ended += 1
            assert abs(count1["last_session_energy"] - info1["session_energy"]) <= 1
    assert ended >= 2


ALWAYS = Anomalies(flap=1.0, energy_reset=1.0, reboot=1.0)


def test_anomalies_are_seeded_and_each_session_records_what_it_got() -> None:
    def walk(anomalies: Anomalies) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]]]:
        clock = ManualClock()
        device = make_device("c", "1p7k", seed=12, clock=clock, anomalies=anomalies)
        assert isinstance(device, Charger)
        seen = []
        for _ in range(2 * 86400 // 5):
            clock.advance(5)
            offline = device.offline
            info = device.read("Charger_info.Get")
            seen.append(
                (offline, info["charger_state"], info["session_id"], info["session_energy"])
            )
        return seen, list(device.generated)

    seen, truth = walk(ALWAYS)
    again, _ = walk(ALWAYS)
    assert seen == again  # the same seed, the same episodes
    done = [s for s in truth if s["end"] is not None]
    assert len(done) >= 8
    kinds = Counter[str]()
    for s in done:
        kinds.update(s["anomalies"])
        assert s["reboots"] >= ("gap" in s["anomalies"])
    assert min(kinds["state_flap"], kinds["energy_reset"], kinds["gap"]) >= 2
    # Inside a session: a reset takes session_energy to 0 in a pause; a flap reads A with the
    # same session_id; a reboot answers nothing for a while.
    pairs = list(itertools.pairwise(seen))
    assert any(b[3] == 0 < a[3] and a[2] == b[2] and b[1] == "B" for a, b in pairs)
    assert any(a[1] == "C" and b[1] == "A" and a[2] == b[2] for a, b in pairs)
    assert any(b[0] and not a[0] and a[2] == b[2] for a, b in pairs)

    quiet, plain = walk(NO_ANOMALIES)
    assert not any(offline for offline, *_ in quiet)
    assert all(s["anomalies"] == {} and s["reboots"] == 0 for s in plain)


def test_after_an_energy_reset_last_session_energy_is_the_whole_sessions() -> None:
    clock = ManualClock()
    device = make_device("c", "1p7k", seed=12, clock=clock, anomalies=ALWAYS)
    assert isinstance(device, Charger)
    checked = 0
    done = 0
    for _ in range(2 * 86400 // 30):
        clock.advance(30)
        last = device.read("Counters_config.Get")["last_session_energy"]
        ended = [s for s in device.generated if s["end"] is not None]
        if len(ended) > done:
            done = len(ended)
            assert last == round(ended[-1]["wh"])
            checked += "energy_reset" in ended[-1]["anomalies"]
    assert checked >= 3


@bounded(20)
async def test_a_reboot_resets_connections_over_the_socket_then_the_session_goes_on(
    session: aiohttp.ClientSession,
) -> None:
    spec = DeviceSpec("c1", "1p7k", seed=12, anomalies=Anomalies(0.0, 0.0, 1.0))
    async with SimulatedFleet([spec], speed=3000.0) as fleet:
        device = fleet.device("c1")
        assert isinstance(device, Charger)
        answers: list[tuple[bool, int | None]] = []
        while not (answers and answers[-1][0] and any(not ok for ok, _ in answers)):
            try:
                _, info = await get(session, fleet.url("c1") + "/rpc/Charger_info.Get")
                answers.append((True, info["session_id"]))
            except aiohttp.ClientError:
                answers.append((False, None))
            await asyncio.sleep(0.01)
    down = next(i for i, (ok, _) in enumerate(answers) if not ok)
    up = next(i for i in range(down, len(answers)) if answers[i][0])
    assert down > 0 and answers[down - 1][1] == answers[up][1]  # the same session after it


@bounded(10)
async def test_accelerated_clock_moves_devices_on_the_wire(session: aiohttp.ClientSession) -> None:
    async with SimulatedFleet([DeviceSpec("c1", "1p7k", seed=4)], speed=20000.0) as fleet:
        readings = []
        for _ in range(8):
            _, info = await get(session, fleet.url("c1") + "/rpc/Charger_info.Get")
            readings.append(info)
            await asyncio.sleep(0.15)
    energies = [r["total_charged_energy"] for r in readings]
    assert energies == sorted(energies)
    assert len({r["session_id"] for r in readings}) > 1  # 20000x: a session every few polls


# --- profiles on the wire -------------------------------------------------------------------


@pytest.fixture
async def zoo() -> AsyncIterator[SimulatedFleet]:
    specs = [DeviceSpec(p, p, seed=1) for p in (*CHARGER_PROFILES, "em", "3em")]
    async with SimulatedFleet(specs, frozen=True) as fleet:
        yield fleet


@bounded()
async def test_old_firmware_quirks(zoo: SimulatedFleet, session: aiohttp.ClientSession) -> None:
    url = zoo.url("1p7k-old") + "/rpc/"
    _, info = await get(session, url + "Charger_info.Get")
    _, currents = await get(session, url + "System_currents.Get")
    _, em = await get(session, url + "EM_status.Get")
    _, errors = await get(session, url + "Logged_errors.Get")
    _, counters = await get(session, url + "Counters_config.Get")
    _, app = await get(session, url + "App_config.Get")
    status, frame = await get(session, url + "Charger_config.Get")

    assert set(info) == FW_147_KEYS and info["fw_version"] == "1.47"
    assert isinstance(info["total_charged_energy"], float)
    assert "cable_current " in currents and "em_current " in currents
    assert "cable_current" not in currents and "temperature_current" not in currents
    assert em == {"em_offline ": False}
    assert "state_machine_e_activated" in errors
    assert "state_e_activated" not in errors and "state_machine_na_error" not in errors
    assert isinstance(counters["total_charged_energy"], int) and "reset_counter" in counters
    assert "user_power" not in app
    assert status == 404 and frame["error"]["code"] == -6
    assert (await get(session, url + "Board_revision.Get"))[0] == 404


@bounded()
async def test_v2_charger_api(zoo: SimulatedFleet, session: aiohttp.ClientSession) -> None:
    url = zoo.url("1p7k") + "/rpc/"
    _, currents = await get(session, url + "System_currents.Get")
    _, errors = await get(session, url + "Active_errors.Get")
    _, counters = await get(session, url + "Counters_config.Get")
    _, app = await get(session, url + "App_config.Get")
    _, config = await get(session, url + "Charger_config.Get")
    _, board = await get(session, url + "Board_revision.Get")
    _, ident = await get(session, url + "Device_id.Get")

    assert {"temperature_current", "user_power_current", "cable_current"} <= set(currents)
    assert not any(key.endswith(" ") for key in currents)
    assert "state_machine_na_error" in errors and "state_e_activated" in errors
    assert isinstance(counters["total_charged_energy"], float)
    assert "reset_counter" not in counters
    assert app["user_power"] == 7360
    assert set(config) == {
        "overtemp_threshold",
        "critical_temp_threshold",
        "voltage_gain",
        "current_gain",
        "calibration_temperature",
        "rcd_enabled",
        "serial_number",
        "board_revision",
        "temp_offset",
    }
    assert board["board_revision"] == config["board_revision"]
    assert ident["device_id"] == f"1p7k_{config['serial_number']:06d}"


@bounded()
async def test_partial_firmware_omits_keys_like_fw151(
    zoo: SimulatedFleet, session: aiohttp.ClientSession
) -> None:
    _, info = await get(session, zoo.url("1p7k-partial") + "/rpc/Charger_info.Get")
    assert set(info) == FW_151_KEYS


@bounded()
async def test_three_phase_charger_reports_voltage_zero(
    zoo: SimulatedFleet, session: aiohttp.ClientSession
) -> None:
    _, info = await get(session, zoo.url("3p22k") + "/rpc/Charger_info.Get")
    _, ident = await get(session, zoo.url("3p22k") + "/rpc/Device_info.Get")
    assert info["charger_state"] == "C"  # frozen chargers are always charging
    assert info["voltage"] == 0 and info["current"] > 0
    assert all(v > 200 for v in info["voltages"]) and all(i > 0 for i in info["currents"])
    assert ident["device_id"].startswith("3p22k_") and ident["connected_phase"] == 3


@bounded()
async def test_meters(zoo: SimulatedFleet, session: aiohttp.ClientSession) -> None:
    _, em = await get(session, zoo.url("em") + "/rpc/Meter_info.Get")
    _, em_id = await get(session, zoo.url("em") + "/rpc/Device_id.Get")
    _, em_app = await get(session, zoo.url("em") + "/rpc/App_config.Get")
    _, em3 = await get(session, zoo.url("3em") + "/rpc/Meter_info.Get")
    _, em3_id = await get(session, zoo.url("3em") + "/rpc/Device_id.Get")
    _, em_config = await get(session, zoo.url("em") + "/rpc/M2w_config.Get")
    _, em_sw = await get(session, zoo.url("em") + "/rpc/Sw_version.Get")
    status, unknown = await get(session, zoo.url("em") + "/rpc/Charger_info.Get")

    # Real meters spread their values over Meter_info, App_config and Sw_version.
    assert set(em) == {"current", "voltage", "active_p", "power_factor"}
    assert em["current"][1:] == em["voltage"][1:] == em["active_p"][1:] == [0.0, 0.0]
    assert em["voltage"][0] > 200 and 0 <= em_app["load_balancing_mode"] <= 4
    assert em_app["breaker_rating"] > 0 and em_sw["fw_version"] == "1.15"
    assert em_id["device_id"].startswith("m2w_81") and len(em_id["device_id"]) == 12
    assert em_id["device_id"].endswith(f"{em_config['serial_number']:06d}")
    assert em_config["board_revision"] in ("A", "B")
    assert all(v > 200 for v in em3["voltage"]) and all(i > 0 for i in em3["current"])
    assert em3_id["device_id"].startswith("m2w_83")
    assert status == 200 and unknown["error"]["code"] == -32601  # as this profile answers


def test_three_phase_meters_sometimes_export_to_the_grid() -> None:
    clock = ManualClock()
    meters = [make_device(f"m{i}", "3em", seed=0, clock=clock) for i in range(6)]
    powers = []
    for _ in range(100):
        clock.advance(10)
        powers += [p for m in meters for p in m.read("Meter_info.Get")["active_p"]]
    assert min(powers) < 0 < max(powers)


def test_device_ids_stay_unique_in_a_large_fleet() -> None:
    fleet = SimulatedFleet(DeviceSpec(f"d{i}", "em") for i in range(3000))
    ids = {fleet.device(name).device_id for name in fleet.names}
    assert len(ids) == 3000


def test_only_loopback_addresses_are_bound() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        SimulatedFleet([DeviceSpec("c1")], host="0.0.0.0")
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        SimulatedFleet([DeviceSpec("c1", address="192.168.1.10", port=80)])


# --- determinism ----------------------------------------------------------------------------


@bounded()
async def test_frozen_fleets_answer_byte_identically(session: aiohttp.ClientSession) -> None:
    specs = [DeviceSpec(p, p, seed=9) for p in (*CHARGER_PROFILES, "em", "3em")]
    bodies: list[dict[str, bytes]] = []
    for _ in range(2):
        async with SimulatedFleet(specs, frozen=True) as fleet:
            replies = {}
            for name in fleet.names:
                for method in fleet.device(name).methods:
                    async with session.get(f"{fleet.url(name)}/rpc/{method}") as response:
                        replies[f"{name} {method}"] = await response.read()
            bodies.append(replies)
        await asyncio.sleep(0.05)  # a frozen device ignores the passing of time
    assert bodies[0] == bodies[1]
    other = make_device("1p7k", "1p7k", seed=10, frozen=True)
    assert other.reply("Charger_info.Get") != bodies[0]["1p7k Charger_info.Get"]


# --- faults ---------------------------------------------------------------------------------


@pytest.fixture
async def fleet() -> AsyncIterator[SimulatedFleet]:
    async with SimulatedFleet(
        [DeviceSpec("c1", "1p7k", seed=1), DeviceSpec("c2", "1p7k", seed=2)], frozen=True
    ) as started:
        yield started


async def fetch(
    fleet: SimulatedFleet, name: str = "c1", timeout: float = 1.0, method: str = "Charger_info.Get"
) -> tuple[int, str, bytes]:
    # A fresh session per call: a fault must not hide behind a pooled connection.
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as client,
        client.get(f"{fleet.url(name)}/rpc/{method}") as response,
    ):
        return response.status, response.content_type, await response.read()


@bounded()
async def test_hang_times_the_client_out_and_leaves_others_alone(fleet: SimulatedFleet) -> None:
    fleet.set_fault("c1", "hang")
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await fetch(fleet, timeout=0.5)
    assert time.monotonic() - started >= 0.45
    assert (await fetch(fleet, "c2"))[0] == 200


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("reset", aiohttp.ClientOSError),
        ("truncated", aiohttp.ClientPayloadError),
        ("refuse", aiohttp.ClientConnectorError),
    ],
)
@bounded()
async def test_connection_faults_raise_client_errors(
    fleet: SimulatedFleet, mode: str, error: type[Exception]
) -> None:
    fleet.set_fault("c1", mode)
    with pytest.raises(error):
        await fetch(fleet)
    fleet.set_fault("c1", "none")
    assert (await fetch(fleet))[0] == 200


@bounded()
async def test_reply_faults(fleet: SimulatedFleet) -> None:
    fleet.set_fault("c1", "http500")
    assert (await fetch(fleet))[0] == 500
    fleet.set_fault("c1", "nonjson")
    status, content_type, body = await fetch(fleet)
    assert (status, content_type) == (200, "text/html") and body.startswith(b"<!DOCTYPE html>")
    fleet.set_fault("c1", "rpcerror")
    status, _, body = await fetch(fleet)
    frame = json.loads(body)
    assert status == 200 and frame["error"] == {"code": -1, "message": "General fail."}
    assert frame["src"] == fleet.device("c1").device_id


@bounded()
async def test_garbage_sends_wrong_types_deterministically(fleet: SimulatedFleet) -> None:
    _, _, healthy = await fetch(fleet)
    fleet.set_fault("c1", "garbage")
    _, _, first = await fetch(fleet)
    _, _, second = await fetch(fleet)
    good, bad = json.loads(healthy), json.loads(first)
    assert first == second and set(good) == set(bad)
    wrong = [k for k in good if type(good[k]) is not type(bad[k]) or bad[k] != bad[k]]
    assert any(isinstance(bad[k], str) for k in wrong)
    assert len(wrong) >= 5


@bounded()
async def test_slow_answers_after_the_delay(fleet: SimulatedFleet) -> None:
    fleet.set_fault("c1", "slow:0.4")
    started = time.monotonic()
    status, _, _ = await fetch(fleet)
    assert status == 200 and time.monotonic() - started >= 0.38
    with pytest.raises(asyncio.TimeoutError):
        await fetch(fleet, timeout=0.2)


@bounded()
async def test_flap_alternates_between_healthy_and_reset(fleet: SimulatedFleet) -> None:
    fleet.set_fault("c1", "flap:0.4")
    assert (await fetch(fleet))[0] == 200
    await asyncio.sleep(0.5)
    with pytest.raises(aiohttp.ClientOSError):
        await fetch(fleet)
    await asyncio.sleep(0.4)
    assert (await fetch(fleet))[0] == 200


def test_bad_fault_names_are_rejected() -> None:
    fleet = SimulatedFleet([DeviceSpec("c1")])
    for bad in ("explode", "slow", "slow:-1", "hang:3"):
        with pytest.raises(ValueError):
            fleet.set_fault("c1", bad)
    with pytest.raises(KeyError):
        fleet.set_fault("nobody", "hang")


@pytest.mark.parametrize(
    ("spelling", "canonical", "lower"),
    [("both", 200, 200), ("canonical", 200, 404), ("lower", 404, 200)],
)
@bounded()
async def test_spelling_modes(
    fleet: SimulatedFleet, spelling: str, canonical: int, lower: int
) -> None:
    fleet.set_spelling("c1", spelling)
    assert (await fetch(fleet, method="Charger_info.Get"))[0] == canonical
    assert (await fetch(fleet, method="charger_info.get"))[0] == lower
    status, _, body = await fetch(fleet, method="No_such.Get")
    assert status == 404 and json.loads(body)["error"]["code"] == -6


@bounded()
async def test_non_read_methods_are_recorded_and_refused(
    fleet: SimulatedFleet, session: aiohttp.ClientSession
) -> None:
    before = fleet.device("c1").reply("App_config.Get")
    url = fleet.url("c1") + "/rpc/"
    async with session.post(
        url + "App_config.Set", json={"config_key": "charger_locked", "config_value": True}
    ) as r:
        set_status, set_frame = r.status, await r.json()
    _, start_frame = await get(session, url + "Charge.Start")
    _, reset_frame = await get(session, url + "device.reset")

    assert set_status == 200
    for frame in (set_frame, start_frame, reset_frame):
        assert frame["error"] == {"code": -7, "message": "Prohibited action error."}
    assert fleet.device("c1").reply("App_config.Get") == before
    calls = [(c.device, c.http_method, c.rpc_method) for c in fleet.calls]
    assert calls == [
        ("c1", "POST", "App_config.Set"),
        ("c1", "GET", "Charge.Start"),
        ("c1", "GET", "device.reset"),
    ]
    fleet.calls.clear()  # conftest fails any test whose fleet saw writes; these were ours


@bounded()
async def test_alias_markup_travels_as_plain_json(
    fleet: SimulatedFleet, session: aiohttp.ClientSession
) -> None:
    fleet.set_alias("c1", '<script>alert("x")</script>')
    _, info = await get(session, fleet.url("c1") + "/rpc/Device_info.Get")
    assert info["charger_alias"] == '<script>alert("x")</script>'


@bounded()
async def test_many_devices_share_a_port_on_their_own_loopback_addresses(
    session: aiohttp.ClientSession,
) -> None:
    base = random.Random().randrange(2, 250)
    port = random.Random().randrange(20000, 60000)
    specs = [
        DeviceSpec(f"d{i}", "em", address=f"127.2.{base}.{i + 1}", port=port) for i in range(30)
    ]
    async with SimulatedFleet(specs) as fleet:
        ids = set()
        for name in fleet.names:
            assert fleet.host(name).endswith(f":{port}")
            ids.add((await get(session, fleet.url(name) + "/rpc/Device_id.Get"))[1]["device_id"])
    assert len(ids) == 30


@bounded()
async def test_call_log_file(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    log = tmp_path / "calls.jsonl"
    async with SimulatedFleet([DeviceSpec("c1")], keep_calls=False, call_log=str(log)) as fleet:
        await get(session, fleet.url("c1") + "/rpc/Wifi_status.Get")
        await get(session, fleet.url("c1") + "/rpc/Charge.Stop")
        assert fleet.calls == []
        assert sum(fleet.call_counts().values()) == 2
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["device"], x["http_method"], x["rpc_method"]) for x in lines] == [
        ("c1", "GET", "Wifi_status.Get"),
        ("c1", "GET", "Charge.Stop"),
    ]


# --- control API ----------------------------------------------------------------------------


@bounded()
async def test_control_api(fleet: SimulatedFleet, session: aiohttp.ClientSession) -> None:
    control = ControlServer([fleet])
    await control.start()
    try:
        _, listing = await get(session, control.url + "/devices")
        async with session.post(control.url + "/devices/c1/fault", json={"mode": "http500"}) as r:
            assert r.status == 200 and (await r.json())["fault"] == "http500"
        async with session.post(control.url + "/devices/c1/alias", json={"alias": "<b>x</b>"}) as r:
            assert r.status == 200
        async with session.post(control.url + "/devices/c1/fault", json={"mode": "boom"}) as r:
            assert r.status == 400
        async with session.post(control.url + "/devices/zz/fault", json={"mode": "hang"}) as r:
            assert r.status == 404
        status, _, _ = await fetch(fleet)
        await fetch(fleet, "c2", method="Device_info.Get")
        _, calls = await get(session, control.url + "/calls")
    finally:
        await control.stop()
    assert [d["name"] for d in listing["devices"]] == ["c1", "c2"]
    assert listing["devices"][0]["host"] == fleet.host("c1")
    assert status == 500
    assert fleet.device("c1").alias == "<b>x</b>"
    assert calls["by_device"] == {"c1": {"Charger_info.Get": 1}, "c2": {"Device_info.Get": 1}}
    assert calls["total"] == 2


# --- command line ---------------------------------------------------------------------------


def plan(*argv: str) -> list[DeviceSpec]:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return plan_fleet(parser.parse_args(list(argv)))


def test_cli_plans_addresses_profiles_and_faults() -> None:
    specs = plan(
        "--devices",
        "20",
        "--mix",
        "1p7k,em",
        "--fault-share",
        "hang=0.1",
        "--fault",
        "sim-0001=slow:3",
        "--address-base",
        "127.1.0.250",
    )
    assert [s.profile for s in specs[:3]] == ["1p7k", "em", "1p7k"]
    assert (specs[0].address, specs[7].address, specs[0].port) == ("127.1.0.250", "127.1.1.1", 8080)
    assert specs[0].fault == "slow:3"
    assert sum(s.fault == "hang" for s in specs) in (2, 1)  # sim-0001 may have been overridden
    by_port = plan("--devices", "3", "--port-base", "9000")
    assert [(s.address, s.port) for s in by_port] == [
        ("127.0.0.1", 9000),
        ("127.0.0.1", 9001),
        ("127.0.0.1", 9002),
    ]
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        plan("--address-base", "10.0.0.1")
    with pytest.raises(ValueError, match="more than 1"):
        plan("--devices", "10", "--fault-share", "hang=0.6", "--fault-share", "reset=0.6")


def test_cli_refuses_non_loopback_address() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter.simulator.cli", "--address-base", "192.168.1.5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2
    assert "127.0.0.0/8" in result.stderr


@contextlib.contextmanager
def cli_fleet(
    tmp_path: Path, devices: int, net: str, *extra: str
) -> Iterator[tuple[list[dict[str, Any]], int, int]]:
    """`simulate` serving `devices` from two processes on 127.<net>.x.y: the targets it wrote,
    their port and the control API's port, once it says every device listens; it must then
    stop cleanly on SIGTERM."""
    rng = random.Random()
    base = f"127.{net}.{rng.randrange(10, 250)}.1"
    # The devices listen on their own 127.x.y.z addresses; the control API on 127.0.0.1 gets
    # a port the kernel says is free: a random one in the ephemeral range (32768-60999) can be
    # taken by one of the many client connections the suite opens from 127.0.0.1.
    port, control_port = rng.randrange(20000, 32000), free_port()
    targets = tmp_path / "targets.yaml"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter.simulator.cli",
            "--devices",
            str(devices),
            "--processes",
            "2",
            "--address-base",
            base,
            "--port",
            str(port),
            "--targets-file",
            str(targets),
            "--control",
            f"127.0.0.1:{control_port}",
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()  # printed once every device listens
        assert f"simulating {devices} devices" in ready, (
            process.stderr.read() if process.stderr else ""
        )
        yield yaml.safe_load(targets.read_text())["devices"], port, control_port
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_serves_twenty_devices_from_two_processes(tmp_path: Path) -> None:
    with cli_fleet(tmp_path, 20, "1", "--fault", "sim-0002=http500") as (devices, port, control):
        results = asyncio.run(_poll_cli_fleet(devices, control))
    assert len(devices) == 20 and len({d["host"] for d in devices}) == 20
    assert all(d["host"].startswith("127.1.") and d["host"].endswith(f":{port}") for d in devices)
    prefixes = {"1p7k": "1p7k_", "3p22k": "3p22k_", "em": "m2w_81", "3em": "m2w_83"}
    statuses, ids, calls = results
    assert statuses["sim-0002"] == 500
    for device in devices:
        if device["name"] != "sim-0002":
            assert ids[device["name"]].startswith(prefixes[device["labels"]["profile"]])
    assert calls["total"] == 20 and len(calls["by_device"]) == 20


@pytest.mark.timeout(40)  # a worker stuck on a full pipe hangs the control API
def test_cli_control_replies_larger_than_a_pipe_buffer_come_through(tmp_path: Path) -> None:
    """A worker answers the control API over a pipe; a fleet's device list is far larger than
    the pipe's 64 KiB buffer, and must arrive whole on either event loop."""

    async def ask(control_port: int) -> tuple[int, bytes]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session,
            session.get(f"http://127.0.0.1:{control_port}/devices") as response,
        ):
            return response.status, await response.read()

    with cli_fleet(tmp_path, 6000, "2") as (_, _, control):
        status, body = asyncio.run(ask(control))
    assert status == 200 and len(body) > 2 * 65536
    assert len(json.loads(body)["devices"]) == 6000


async def _poll_cli_fleet(
    devices: list[dict[str, Any]], control_port: int
) -> tuple[dict[str, int], dict[str, str], dict[str, Any]]:
    statuses, ids = {}, {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for device in devices:
            async with session.get(f"http://{device['host']}/rpc/Device_id.Get") as response:
                statuses[device["name"]] = response.status
                if response.status == 200:
                    ids[device["name"]] = (await response.json())["device_id"]
        _, calls = await get(session, f"http://127.0.0.1:{control_port}/calls")
    return statuses, ids, calls


# --- firmware fidelity: unknown methods, JSON-RPC frames, compression, quirks ----------------

UNKNOWN_ANSWERS = {
    "http404": (404, "application/json", -6),
    "http500": (500, "text/plain", None),
    "html": (200, "text/html", None),
    "rpc-1": (200, "application/json", -1),
    "rpc-6": (200, "application/json", -6),
    "rpc-32601": (200, "application/json", -32601),
}


@bounded()
@pytest.mark.parametrize("answer", sorted(UNKNOWN_ANSWERS))
async def test_unknown_method_is_answered_as_the_device_is_told(answer: str) -> None:
    specs = [DeviceSpec("c1", "1p7k", unknown_method=answer)]
    async with (
        SimulatedFleet(specs, frozen=True) as fleet,
        aiohttp.ClientSession() as client,
        client.get(fleet.url("c1") + "/rpc/Nothing_here.Get") as resp,
    ):
        body = await resp.read()
        status, content_type, code = UNKNOWN_ANSWERS[answer]
        assert (resp.status, resp.content_type) == (status, content_type)
        if code is not None:
            assert json.loads(body)["error"]["code"] == code


@bounded()
async def test_unknown_method_answer_follows_the_profile_and_the_control_api() -> None:
    specs = [DeviceSpec("c", "3p22k"), DeviceSpec("m", "3em")]
    async with SimulatedFleet(specs, frozen=True) as fleet, aiohttp.ClientSession() as client:
        _, charger = await get(client, fleet.url("c") + "/rpc/Meter_info.Get")
        _, meter = await get(client, fleet.url("m") + "/rpc/Charger_info.Get")
        assert (
            fleet.handle_command(
                {"op": "set", "device": "c", "field": "unknown", "value": "http500"}
            )["unknown"]
            == "http500"
        )
        async with client.get(fleet.url("c") + "/rpc/Meter_info.Get") as resp:
            later = resp.status
    assert charger["error"]["code"] == -6 and meter["error"]["code"] == -1
    assert later == 500


@bounded()
async def test_post_of_a_json_rpc_frame_is_answered_with_a_frame() -> None:
    async with (
        SimulatedFleet([DeviceSpec("c1", "1p7k", seed=1)], frozen=True) as fleet,
        aiohttp.ClientSession() as client,
    ):
        frame = {"id": 42, "src": "test", "method": "Charger_info.Get"}
        async with client.post(fleet.url("c1") + "/rpc", json=frame) as resp:
            reply = await resp.json()
        unknown = {"id": 43, "src": "test", "method": "Nothing.Get"}
        async with client.post(fleet.url("c1") + "/rpc", json=unknown) as resp:
            error = await resp.json()
        expected = fleet.device("c1").read("Charger_info.Get")
    assert reply["id"] == 42 and reply["dst"] == "test" and reply["result"] == expected
    assert reply["src"] == fleet.device("c1").device_id
    assert error["id"] == 43 and error["error"]["code"] == -6
    assert [c.rpc_method for c in fleet.calls] == ["Charger_info.Get", "Nothing.Get"]


@bounded()
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressing_device_compresses_only_for_clients_that_accept_it(
    encoding: str,
) -> None:
    async with (
        SimulatedFleet([DeviceSpec("c1", "1p7k", compress=encoding)], frozen=True) as fleet,
        aiohttp.ClientSession(auto_decompress=False) as client,
    ):
        url = fleet.url("c1") + "/rpc/Charger_info.Get"
        async with client.get(url, headers={"Accept-Encoding": encoding}) as resp:
            packed = (resp.headers.get("Content-Encoding"), await resp.read())
        async with client.get(url, headers={"Accept-Encoding": "identity"}) as resp:
            plain = (resp.headers.get("Content-Encoding"), await resp.read())
    assert packed[0] == encoding and plain[0] is None
    wbits = 16 + 15 if encoding == "gzip" else 15
    assert zlib.decompress(packed[1], wbits) == plain[1]


@bounded()
async def test_default_profiles_reply_without_the_spec_typos_and_quirk_profiles_keep_them(
    session: aiohttp.ClientSession,
) -> None:
    profiles = ("1p7k", "1p7k-spec", "1p7k-short", "em-merged")
    specs = [DeviceSpec(p, p, seed=1) for p in profiles]
    async with SimulatedFleet(specs, frozen=True) as zoo:
        _, dynamic = await get(session, zoo.url("1p7k") + "/rpc/Dynamic_current.Get")
        _, typo = await get(session, zoo.url("1p7k-spec") + "/rpc/Dynamic_current.Get")
        _, short = await get(session, zoo.url("1p7k-short") + "/rpc/Charger_info.Get")
        _, merged = await get(session, zoo.url("em-merged") + "/rpc/Meter_info.Get")
        status, _ = await get(session, zoo.url("em-merged") + "/rpc/M2w_config.Get")
    assert set(dynamic) == {"dynamic_current", "relay_mode"}
    assert set(typo) == {"dynamic_current "}
    assert len(short["currents"]) == len(short["voltages"]) == 1
    assert {"fw_version", "breaker_rating", "load_balancing_mode"} <= set(merged)
    assert status == 404


def test_schedules_are_readable_intervals_and_app_config_says_whether_they_are_on() -> None:
    schedules = []
    for seed in range(20):
        device = make_device("c", "1p7k", seed=seed, frozen=True)
        schedule = device.read("Charging_schedule.Get")["charging_schedule"]
        enabled = device.read("App_config.Get")["charging_schedule_enabled"]
        schedules.append((schedule, enabled))
        for interval in schedule:
            assert 1 <= interval["start_d"] <= 7 and 1 <= interval["end_d"] <= 7
            assert interval["current"] == 0 or 6 <= interval["current"] <= 32
        assert not enabled or schedule
    assert any(enabled for _, enabled in schedules) and any(not s for s, _ in schedules)


def test_cli_sets_the_unknown_method_answer_and_compression_of_every_device() -> None:
    default = plan("--devices", "2", "--mix", "1p7k,3em")
    chosen = plan("--devices", "2", "--unknown-method", "rpc-1", "--compress", "gzip")
    assert [s.unknown_method for s in default] == [None, None]  # as each profile answers
    assert [(s.unknown_method, s.compress) for s in chosen] == [("rpc-1", "gzip")] * 2
    with pytest.raises(SystemExit):
        plan("--unknown-method", "teapot")


@bounded()
async def test_control_api_changes_the_unknown_method_answer_and_compression(
    fleet: SimulatedFleet, session: aiohttp.ClientSession
) -> None:
    control = ControlServer([fleet])
    await control.start()
    try:
        async with session.post(control.url + "/devices/c1/unknown", json={"mode": "html"}) as r:
            answered = (r.status, (await r.json())["unknown"])
        async with session.post(control.url + "/devices/c1/unknown", json={"mode": "x"}) as r:
            refused = r.status
        async with session.post(control.url + "/devices/c1/compress", json={"mode": "gzip"}) as r:
            compressed = (r.status, (await r.json())["compress"])
        async with session.get(fleet.url("c1") + "/rpc/Nothing.Get") as resp:
            page = resp.content_type
    finally:
        await control.stop()
    assert answered == (200, "html") and refused == 400 and compressed == (200, "gzip")
    assert page == "text/html"


def test_a_spec_lacking_a_method_its_profile_does_not_have_is_refused() -> None:
    with pytest.raises(ValueError, match=r"Nothing\.Get"):
        SimulatedFleet([DeviceSpec("c", "1p7k", lacks=("Nothing.Get",))])
