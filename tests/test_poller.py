"""The fleet poller against simulated devices over real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import pytest

from exporter.catalogue import table as cat
from exporter.device.poller import MAX_SLOW_PER_POLL, Poller, PollSettings, Target, spread
from exporter.reading import Reading
from exporter.simulator.server import DeviceSpec, SimulatedFleet

from .conftest import FleetFactory, override_replies

FAST = PollSettings(
    interval=0.5,
    timeout=0.3,
    concurrency=16,
    slow_interval=60.0,
    identity_interval=600.0,
    max_backoff=2.0,
)


def targets(fleet: SimulatedFleet) -> list[Target]:
    return [Target(name=n, base_url=fleet.url(n)) for n in fleet.names]


def calls_by_device(fleet: SimulatedFleet) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for call in fleet.calls:
        out.setdefault(call.device, []).append(call.rpc_method)
    return out


def value(reading: Reading, metric: str, **labels: str) -> float | None:
    want = tuple(labels.items())
    for s in reading.samples:
        if s.metric == metric and all(item in s.labels for item in want):
            return s.value
    return None


async def settle(poller: Poller, name: str, polls: int = 4) -> Reading:
    """Poll until the slow methods a first poll leaves over are in (two a poll)."""
    st = poller.devices[name]
    reading = await poller.poll(st)
    for _ in range(polls - 1):
        reading = await poller.poll(st)
    return reading


async def run_poller(poller: Poller, seconds: float) -> None:
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_hanging_charger_does_not_delay_others(make_fleet: FleetFactory) -> None:
    specs = [DeviceSpec(f"ok{i}", "1p7k", seed=i) for i in range(12)]
    specs += [DeviceSpec(f"hang{i}", "1p7k", fault="hang", seed=i) for i in range(3)]
    fleet = await make_fleet(specs)
    readings: list[Reading] = []
    poller = Poller(FAST, [readings.append])
    poller.set_targets(targets(fleet))
    try:
        await run_poller(poller, 2.6)
    finally:
        await poller.close()
    healthy = [r for r in readings if r.device.startswith("ok")]
    hung = [r for r in readings if r.device.startswith("hang")]
    polls = Counter(r.device for r in healthy)
    assert all(polls[f"ok{i}"] >= 4 for i in range(12)), polls
    assert all(r.up for r in healthy)
    # A healthy poll waiting on a hung one would take its 0.3 s; a first poll (eight requests)
    # on a loaded machine takes up to ~0.15 s.
    assert max(r.duration for r in healthy) < 0.25
    assert hung and all(not r.up and r.reason == "timeout" for r in hung)
    assert min(r.duration for r in hung) >= 0.29


async def test_steady_state_is_one_request_per_poll(make_fleet: FleetFactory) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", seed=3)], frozen=True)
    poller = Poller(FAST, [])
    poller.set_targets(targets(fleet))
    st = poller.devices["c1"]
    try:
        first = await poller.poll(st)
        assert len(fleet.calls) <= 8
        await settle(poller, "c1", 3)
        after_first = len(fleet.calls)
        for _ in range(10):
            await poller.poll(st)
    finally:
        await poller.close()
    assert first.up
    methods = {c.rpc_method for c in fleet.calls[:after_first]}
    assert {
        "Device_id.Get",
        "Charger_config.Get",
        "Sw_version.Get",
        "Charger_info.Get",
        "Counters_config.Get",
        "System_currents.Get",
        "Wifi_status.Get",
        "App_config.Get",
        "Logged_errors.Get",
        "EM_status.Get",
        "Dynamic_current.Get",
        "Charging_schedule.Get",
    } <= methods
    assert [c.rpc_method for c in fleet.calls[after_first:]] == ["Charger_info.Get"] * 10


async def test_active_errors_asked_only_when_charger_reports_them(
    make_fleet: FleetFactory,
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", seed=3)], frozen=True)
    info = fleet.device("c1").read("Charger_info.Get")
    flagged = {"value": False}
    override_replies(
        fleet,
        "c1",
        {
            "Charger_info.Get": lambda: {**info, "has_active_errors": flagged["value"]},
            "Active_errors.Get": {"overtemp": True, "rcd_error": False},
        },
    )
    poller = Poller(FAST, [])
    poller.set_targets(targets(fleet))
    st = poller.devices["c1"]
    try:
        quiet = await settle(poller, "c1")
        flagged["value"] = True
        before = len(fleet.calls)
        loud = await poller.poll(st)
        asked = [c.rpc_method for c in fleet.calls[before:]]
    finally:
        await poller.close()
    assert value(quiet, "lektrico_error_active", error="overtemp") == 0
    assert "Active_errors.Get" not in [c.rpc_method for c in fleet.calls[:before]]
    assert asked == ["Charger_info.Get", "Active_errors.Get"]
    assert value(loud, "lektrico_error_active", error="overtemp") == 1


async def test_counters_refreshed_when_session_changes(make_fleet: FleetFactory) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", seed=3)], frozen=True)
    info = fleet.device("c1").read("Charger_info.Get")
    session = {"id": 7}
    override_replies(
        fleet,
        "c1",
        {
            "Charger_info.Get": lambda: {**info, "session_id": session["id"]},
        },
    )
    poller = Poller(FAST, [])
    poller.set_targets(targets(fleet))
    st = poller.devices["c1"]
    try:
        await settle(poller, "c1")
        before = len(fleet.calls)
        session["id"] = 8
        await poller.poll(st)
        asked = [c.rpc_method for c in fleet.calls[before:]]
    finally:
        await poller.close()
    assert asked == ["Charger_info.Get", "Counters_config.Get"]


async def test_concurrent_polls_of_one_device_share_one_request(
    make_fleet: FleetFactory,
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", fault="slow:0.2", seed=3)], frozen=True)
    poller = Poller(PollSettings(interval=5, timeout=4), [])
    poller.set_targets(targets(fleet))
    st = poller.devices["c1"]
    try:
        await settle(poller, "c1")
        before = len(fleet.calls)
        readings = await asyncio.gather(*(poller.poll(st) for _ in range(5)))
    finally:
        await poller.close()
    assert len({id(r) for r in readings}) == 1
    assert [c.rpc_method for c in fleet.calls[before:]] == ["Charger_info.Get"]


async def test_device_that_stays_down_is_backed_off(make_fleet: FleetFactory) -> None:
    fleet = await make_fleet(
        [DeviceSpec("up", "1p7k"), DeviceSpec("down", "1p7k", fault="http500")]
    )
    readings: list[Reading] = []
    settings = PollSettings(
        interval=0.2, timeout=0.15, slow_interval=60, identity_interval=600, max_backoff=1.0
    )
    poller = Poller(settings, [readings.append])
    poller.set_targets(targets(fleet))
    try:
        await run_poller(poller, 3.0)
    finally:
        await poller.close()
    polls = Counter(r.device for r in readings)
    assert polls["up"] >= 13
    assert 3 <= polls["down"] <= 8, polls  # 0.2, 0.2, 0.4, 0.8, 1.0, 1.0 ...
    assert all(r.reason == "http" and not r.up for r in readings if r.device == "down")


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("hang", "timeout"),
        ("reset", "connect"),
        ("refuse", "connect"),
        ("http500", "http"),
        ("nonjson", "json"),
        ("rpcerror", "rpc"),
        ("truncated", "http"),
    ],
)
async def test_faulty_device_is_down_with_reason(
    make_fleet: FleetFactory, fault: str, reason: str
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", seed=1)], frozen=True)
    poller = Poller(FAST, [])
    poller.set_targets(targets(fleet))
    st = poller.devices["c1"]
    try:
        good = await poller.poll(st)
        fleet.set_fault("c1", fault)
        bad = await poller.poll(st)
    finally:
        await poller.close()
    assert good.up and not bad.up
    assert bad.reason == reason and bad.error
    live = {s.metric for s in bad.samples} - {
        "lektrico_up",
        "lektrico_poll_duration_seconds",
        "lektrico_last_poll_success_timestamp_seconds",
        "lektrico_device_info",
        "lektrico_method_supported",
        "lektrico_poll_errors_total",
        "lektrico_method_errors_total",
        "lektrico_values_dropped_total",
    }
    assert live == set()
    assert value(bad, "lektrico_poll_errors_total", reason=reason) == 1


async def test_reply_without_charger_values_is_a_schema_error(make_fleet: FleetFactory) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", seed=1)], frozen=True)
    override_replies(fleet, "c1", {"Charger_info.Get": {"unexpected": 1}})
    poller = Poller(FAST, [])
    poller.set_targets(targets(fleet))
    try:
        reading = await poller.poll(poller.devices["c1"])
    finally:
        await poller.close()
    assert not reading.up and reading.reason == "schema"
    assert "Charger_info.Get" in (reading.error or "")


@pytest.mark.parametrize("spelling", ["canonical", "lower"])
async def test_method_spelling_fallback_is_remembered(
    make_fleet: FleetFactory, spelling: str
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", spelling=spelling, seed=1)], frozen=True)
    poller = Poller(FAST, [])
    poller.set_targets(targets(fleet))
    st = poller.devices["c1"]
    try:
        first = await settle(poller, "c1")
        before = len(fleet.calls)
        second = await poller.poll(st)
    finally:
        await poller.close()
    assert first.up and second.up
    expected = "Charger_info.Get" if spelling == "canonical" else "charger_info.get"
    assert [c.rpc_method for c in fleet.calls[before:]] == [expected]


async def test_meter_polls_meter_info(make_fleet: FleetFactory) -> None:
    fleet = await make_fleet([DeviceSpec("m1", "3em", seed=1)], frozen=True)
    poller = Poller(FAST, [])
    poller.set_targets(targets(fleet))
    try:
        reading = await poller.poll(poller.devices["m1"])
    finally:
        await poller.close()
    asked = {c.rpc_method for c in fleet.calls}
    assert reading.up and reading.model == "3em"
    assert "Meter_info.Get" in asked and "Charger_info.Get" not in asked
    assert value(reading, "lektrico_meter_voltage_volts", phase="L3") is not None


async def test_old_firmware_without_methods_stays_up(make_fleet: FleetFactory) -> None:
    fleet = await make_fleet([DeviceSpec("old", "1p7k-old", seed=1)], frozen=True)
    poller = Poller(FAST, [])
    poller.set_targets(targets(fleet))
    st = poller.devices["old"]
    try:
        first = await settle(poller, "old")
        second = await poller.poll(st)
    finally:
        await poller.close()
    assert first.up and second.up
    assert "Charger_config.Get" in st.unsupported
    assert value(first, "lektrico_error_logged", error="state_e_activated") is not None
    assert value(first, "lektrico_current_limit_amperes", limit="cable") is not None


def test_start_times_are_spread_over_the_interval() -> None:
    offsets = sorted(spread(f"charger-{i}", 15.0) for i in range(1000))
    assert offsets[0] >= 0 and offsets[-1] < 15.0
    buckets = Counter(int(o) for o in offsets)
    assert len(buckets) == 15 and max(buckets.values()) < 110  # ~67 a second, none crowded


@pytest.mark.parametrize("fleet_size", [3, 12])
async def test_a_small_fleet_is_polled_at_once_a_large_one_spread(
    make_fleet: FleetFactory, fleet_size: int
) -> None:
    """Polls start at once when the fleet fits in the poll slots (a home owner's first
    reading), spread over the interval when it does not (no burst at a fleet's start)."""
    fleet = await make_fleet([DeviceSpec(f"d{i}", "1p7k") for i in range(fleet_size)], frozen=True)
    readings: list[Reading] = []
    settings = PollSettings(interval=60.0, timeout=2.0, concurrency=4)
    poller = Poller(settings, [readings.append])
    poller.set_targets(targets(fleet))
    try:
        await run_poller(poller, 1.0)
    finally:
        await poller.close()
    polled = {r.device for r in readings}
    if fleet_size <= settings.concurrency:
        assert polled == set(fleet.names)
    else:  # spread over 60 s: about one in 60 starts in the first second
        assert len(polled) < fleet_size // 2


async def test_reload_keeps_unchanged_devices(make_fleet: FleetFactory) -> None:
    fleet = await make_fleet([DeviceSpec(n, "1p7k") for n in ("a", "b", "c")], frozen=True)
    removed: list[str] = []
    poller = Poller(FAST, [])
    poller.on_remove(removed.append)
    all_targets = targets(fleet)
    poller.set_targets(all_targets[:2])
    kept = poller.devices["a"]
    try:
        await poller.poll(kept)
        poller.set_targets([all_targets[0], all_targets[2]])
    finally:
        await poller.close()
    assert poller.devices["a"] is kept and kept.reading is not None
    assert set(poller.devices) == {"a", "c"} and removed == ["b"]


async def test_polls_finish_on_time_under_concurrency_limit(make_fleet: FleetFactory) -> None:
    fleet = await make_fleet([DeviceSpec(f"d{i}", "1p7k", seed=i) for i in range(40)])
    readings: list[Reading] = []
    poller = Poller(PollSettings(interval=0.5, timeout=0.4, concurrency=4), [readings.append])
    poller.set_targets(targets(fleet))
    started = time.monotonic()
    try:
        await run_poller(poller, 2.2)
    finally:
        await poller.close()
    assert time.monotonic() - started < 3
    assert len(readings) >= 40 * 3
    assert poller.metrics.polls_late._value.get() == 0


SLOW_CHARGER_METHODS = {
    m.name for m in cat.methods_for(cat.CHARGER) if m.cadence is cat.Cadence.SLOW
}


async def test_first_poll_of_a_busy_fleet_leaves_slow_methods_to_later_polls(
    make_fleet: FleetFactory,
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", seed=3)], frozen=True)
    poller = Poller(FAST, [])
    poller.set_targets(targets(fleet))
    st = poller.devices["c1"]
    per_poll: list[list[str]] = []
    try:
        for _ in range(6):
            before = len(fleet.calls)
            reading = await poller._worker.poll(st, busy=True)
            assert reading.up
            per_poll.append([c.rpc_method for c in fleet.calls[before:]])
    finally:
        await poller.close()
    slow = [[m for m in methods if m in SLOW_CHARGER_METHODS] for methods in per_poll]
    assert all(len(methods) <= MAX_SLOW_PER_POLL for methods in slow), slow
    fetched = [m for methods in slow for m in methods]
    # Every slow method once, two a poll, then the steady one request a poll.
    assert sorted(fetched) == sorted(SLOW_CHARGER_METHODS - st.unsupported)
    assert per_poll[-1] == ["Charger_info.Get"]


async def test_a_poller_that_is_behind_leaves_slow_methods_until_it_keeps_up(
    make_fleet: FleetFactory,
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", seed=3)], frozen=True)
    settings = PollSettings(interval=5.0, timeout=2.0, concurrency=4, slow_interval=0.6)
    poller = Poller(settings, [])
    poller.set_targets(targets(fleet))
    st = poller.devices["c1"]

    async def poll_slow(behind: bool) -> list[str]:
        before = len(fleet.calls)
        assert (await poller._worker.poll(st, behind=behind)).up
        return [c.rpc_method for c in fleet.calls[before:] if c.rpc_method in SLOW_CHARGER_METHODS]

    try:
        # The first poll of a poller that is behind is identification and the main method.
        assert await poll_slow(behind=True) == []
        assert await poll_slow(behind=True) == []
        await asyncio.sleep(0.7)  # the slow methods waited a whole slow interval: one goes
        assert len(await poll_slow(behind=True)) == 1
        assert await poll_slow(behind=True) == []
        # Caught up: they come, MAX_SLOW_PER_POLL a poll.
        assert len(await poll_slow(behind=False)) == MAX_SLOW_PER_POLL
    finally:
        await poller.close()


async def test_poller_is_behind_when_a_poll_starts_over_a_second_late(
    make_fleet: FleetFactory,
) -> None:
    fleet = await make_fleet([DeviceSpec(f"c{i}", "1p7k", seed=i) for i in range(2)])
    poller = Poller(PollSettings(interval=5.0, timeout=2.0, concurrency=4), [])
    poller.set_targets(targets(fleet))
    try:
        assert not poller.behind
        poller._schedule(poller.devices["c0"], time.monotonic() - 1.5)
        assert poller.behind
        poller._schedule(poller.devices["c1"], time.monotonic())
        assert not poller.behind
    finally:
        await poller.close()


async def test_poller_is_busy_when_a_quarter_of_its_slots_are_taken(
    make_fleet: FleetFactory,
) -> None:
    specs = [DeviceSpec(f"h{i}", "1p7k", fault="hang", seed=i) for i in range(6)]
    fleet = await make_fleet(specs)
    settings = PollSettings(interval=5.0, timeout=2.0, concurrency=4)
    poller = Poller(settings, [])
    poller.set_targets(targets(fleet))
    try:
        assert not poller.busy
        for name in ("h0", "h1"):
            poller._schedule(poller.devices[name], time.monotonic())
        assert poller.busy and poller._running == 2
        for name in ("h2", "h3", "h4"):
            poller._schedule(poller.devices[name], time.monotonic())
        # At most `concurrency` in flight; the fifth waits for a slot, outside its timeout.
        assert poller._running == 4 and len(poller._waiting) == 1
        assert poller.devices["h4"].queued and poller.devices["h4"].inflight is None
    finally:
        await poller.close()


async def test_a_recovering_device_does_not_fetch_every_slow_method_at_once(
    make_fleet: FleetFactory,
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", seed=1)], frozen=True)
    quick = PollSettings(
        interval=0.5, timeout=0.3, concurrency=4, slow_interval=0.0, identity_interval=600.0
    )
    poller = Poller(quick, [])
    poller.set_targets(targets(fleet))
    st = poller.devices["c1"]
    try:
        assert (await poller.poll(st)).up
        fleet.set_fault("c1", "http500")
        assert not (await poller.poll(st)).up
        fleet.set_fault("c1", "none")
        before = len(fleet.calls)
        assert (await poller.poll(st)).up
    finally:
        await poller.close()
    methods = [c.rpc_method for c in fleet.calls[before:]]
    assert len([m for m in methods if m in SLOW_CHARGER_METHODS]) <= MAX_SLOW_PER_POLL, methods


async def test_find_by_address_follows_reloads() -> None:
    poller = Poller(FAST, [])
    a = Target("a", "http://127.0.0.5:8080")
    b = Target("b", "http://127.0.0.6")
    try:
        poller.set_targets([a, b])
        assert poller.find("127.0.0.5:8080") is poller.devices["a"]
        assert poller.find("127.0.0.5") is poller.devices["a"]
        assert poller.find("http://127.0.0.6") is poller.devices["b"]
        assert poller.find("b") is poller.devices["b"]

        poller.set_targets([a, Target("c", "http://127.0.0.5:9090")])

        assert poller.find("127.0.0.6") is None and poller.find("b") is None
        assert poller.find("127.0.0.5:9090") is poller.devices["c"]
        assert poller.find("127.0.0.5") is poller.devices["a"]  # the first at that host
    finally:
        await poller.close()


async def test_a_poll_that_raises_frees_its_slot_for_the_waiting_ones(
    make_fleet: FleetFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = await make_fleet([DeviceSpec(f"c{i}", "1p7k", seed=i) for i in range(3)], frozen=True)
    readings: list[Reading] = []
    two = asyncio.Event()

    def sink(reading: Reading) -> None:
        readings.append(reading)
        if len(readings) == 2:
            two.set()

    poller = Poller(PollSettings(interval=5.0, timeout=2.0, concurrency=1), [sink])
    poller.set_targets(targets(fleet))
    original = poller._worker.reading_of

    def broken(st: Any, *args: Any) -> Reading:
        if st.name == "c0":
            raise RuntimeError("a bug while building the reading")
        return original(st, *args)

    monkeypatch.setattr(poller._worker, "reading_of", broken)
    try:
        for name in ("c0", "c1", "c2"):
            poller._schedule(poller.devices[name], time.monotonic())
        async with asyncio.timeout(5):
            await two.wait()
    finally:
        await poller.close()
    assert sorted(r.device for r in readings) == ["c1", "c2"]
    assert poller._running == 0


async def test_a_device_back_from_failures_reads_its_slow_methods_again_two_a_poll(
    make_fleet: FleetFactory,
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", seed=2)], frozen=True)
    poller = Poller(FAST, [])  # slow_interval 60 s: nothing is due again by time in this test
    poller.set_targets(targets(fleet))
    st = poller.devices["c1"]
    per_poll: list[list[str]] = []
    try:
        assert (await poller.poll(st)).up
        fleet.set_fault("c1", "http500")
        assert not (await poller.poll(st)).up
        fleet.set_fault("c1", "none")
        for _ in range(5):
            before = len(fleet.calls)
            assert (await poller.poll(st)).up
            per_poll.append([c.rpc_method for c in fleet.calls[before:]])
    finally:
        await poller.close()
    slow = [[m for m in methods if m in SLOW_CHARGER_METHODS] for methods in per_poll]
    assert all(len(methods) <= MAX_SLOW_PER_POLL for methods in slow), slow
    assert sorted(m for methods in slow for m in methods) == sorted(
        SLOW_CHARGER_METHODS - st.unsupported
    )


async def test_a_poll_leaves_no_connection_open_on_the_device() -> None:
    """One connection a poll, closed by the exporter when the poll is done: a charger's small
    HTTP server must not hold an idle socket for us between polls (15 s apart)."""
    replies = {
        "/rpc/Device_info.Get": {"device_id": "1p7k_123456"},
        "/rpc/Charger_info.Get": {"charger_state": "A", "instant_power": 0, "session_id": 1},
    }
    opened: list[asyncio.Event] = []

    async def device(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        closed = asyncio.Event()
        opened.append(closed)
        try:
            while request := await reader.readuntil(b"\r\n\r\n"):
                path = request.split(b" ", 2)[1].decode()
                body = json.dumps(replies[path]).encode() if path in replies else b"{}"
                status = b"200 OK" if path in replies else b"404 Not Found"
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            closed.set()
            writer.close()

    server = await asyncio.start_server(device, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    poller = Poller(FAST, [])
    poller.set_targets([Target("c1", f"http://127.0.0.1:{port}")])
    try:
        for _ in range(2):
            assert (await poller.poll(poller.devices["c1"])).up
            async with asyncio.timeout(1):  # the exporter closed every connection it opened
                for closed in opened:
                    await closed.wait()
    finally:
        await poller.close()
        server.close()
        await server.wait_closed()
    assert len(opened) >= 3  # identity, main method, slow methods: a connection each


# ---- device methods and firmware: up from the main method only ------------------------------

UNKNOWN_ANSWERS = ("http404", "http500", "html", "rpc-1", "rpc-6", "rpc-32601")
# Half the optional methods of a v2.0 charger, and the identity extras.
LACKING = (
    "Charger_config.Get",
    "Sw_version.Get",
    "Counters_config.Get",
    "Logged_errors.Get",
    "Dynamic_current.Get",
    "Charging_schedule.Get",
)


def supported(reading: Reading) -> dict[str, float]:
    return {
        dict(s.labels)["method"]: s.value
        for s in reading.samples
        if s.metric == "lektrico_method_supported"
    }


def method_errors(reading: Reading) -> dict[tuple[str, str], float]:
    return {
        (dict(s.labels)["method"], dict(s.labels)["reason"]): s.value
        for s in reading.samples
        if s.metric == "lektrico_method_errors_total"
    }


@pytest.mark.parametrize("answer", UNKNOWN_ANSWERS)
async def test_charger_answering_unknown_methods_any_way_is_up_with_what_it_supports(
    make_fleet: FleetFactory, answer: str
) -> None:
    spec = DeviceSpec("c1", "1p7k", seed=1, unknown_method=answer, lacks=LACKING)
    fleet = await make_fleet([spec], frozen=True)
    poller = Poller(FAST, [])
    poller.set_targets(targets(fleet))
    try:
        readings = [await poller.poll(poller.devices["c1"]) for _ in range(4)]
    finally:
        await poller.close()
    assert all(r.up for r in readings), [r.error for r in readings]
    known = supported(readings[-1])
    assert {m: known[m] for m in LACKING} == dict.fromkeys(LACKING, 0.0)
    assert known["Charger_info.Get"] == known["Device_id.Get"] == known["App_config.Get"] == 1
    assert method_errors(readings[-1])[("Sw_version.Get", "unsupported")] == 1
    assert value(readings[-1], "lektrico_power_watts") is not None
    assert value(readings[-1], "lektrico_current_limit_amperes", limit="cable") is not None
    # Each method the firmware lacks was asked once, in one spelling.
    asked = Counter(c.rpc_method for c in fleet.calls)
    assert all(asked[m] == 1 for m in LACKING), asked


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("hang", "timeout"), ("reset", "connect"), ("truncated", "http"), ("http500", "unsupported")],
)
async def test_optional_method_failing_costs_only_its_values(
    make_fleet: FleetFactory, fault: str, reason: str
) -> None:
    spec = DeviceSpec("c1", "1p7k", seed=1, method_faults={"System_currents.Get": fault})
    fleet = await make_fleet([spec], frozen=True)
    poller = Poller(FAST, [])
    poller.set_targets(targets(fleet))
    try:
        readings = [await poller.poll(poller.devices["c1"]) for _ in range(4)]
    finally:
        await poller.close()
    assert all(r.up for r in readings), [r.error for r in readings]
    last = readings[-1]
    assert method_errors(last) == {("System_currents.Get", reason): 1}
    assert value(last, "lektrico_current_limit_amperes", limit="cable") is None
    assert value(last, "lektrico_current_limit_amperes", limit="install") is not None  # CI
    assert value(last, "lektrico_sessions_total") is not None
    assert (
        value(
            last, "lektrico_poll_errors_total", reason=reason if reason != "unsupported" else "http"
        )
        == 0
    )
    if reason == "unsupported":
        assert supported(last)["System_currents.Get"] == 0


async def test_device_is_down_only_when_its_main_method_fails(make_fleet: FleetFactory) -> None:
    spec = DeviceSpec("c1", "1p7k", seed=1, method_faults={"Charger_info.Get": "http500"})
    fleet = await make_fleet([spec], frozen=True)
    poller = Poller(FAST, [])
    poller.set_targets(targets(fleet))
    try:
        reading = await poller.poll(poller.devices["c1"])
    finally:
        await poller.close()
    assert not reading.up and reading.reason == "http"
    assert "Charger_info.Get" in (reading.error or "")


class FakeTime:
    """The poller's clock, moved by hand: hours of polling in a second of real time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


@pytest.mark.parametrize(
    ("profile", "lacks", "first_budget"),
    [
        ("1p7k", (), 8),
        ("1p7k", LACKING, 8),
        ("3p22k", (), 8),
        ("em", (), 5),
        ("3em", ("Sw_version.Get", "Wifi_status.Get", "Device_info.Get"), 5),
        ("1p7k-old", (), 8),
    ],
)
async def test_request_budget_first_poll_steady_state_and_unsupported_methods(
    make_fleet: FleetFactory,
    monkeypatch: pytest.MonkeyPatch,
    profile: str,
    lacks: tuple[str, ...],
    first_budget: int,
) -> None:
    fleet = await make_fleet([DeviceSpec("d", profile, seed=1, lacks=lacks)], frozen=True)
    clock = FakeTime()
    monkeypatch.setattr("exporter.device.poller.time", clock)
    settings = PollSettings()  # 15 s polls, slow methods every 10 min, identity hourly
    poller = Poller(settings, [])
    poller.set_targets(targets(fleet))
    st = poller.devices["d"]
    polls = int(3 * settings.identity_interval / settings.interval)  # three hours
    try:
        first = await poller.poll(st)
        first_requests = len(fleet.calls)
        for _ in range(polls - 1):
            clock.now += settings.interval
            assert (await poller.poll(st)).up
    finally:
        await poller.close()
    assert first.up and first_requests <= first_budget, [c.rpc_method for c in fleet.calls]
    steady = (len(fleet.calls) - first_requests) / (polls - 1)
    assert steady <= 1.2, Counter(c.rpc_method for c in fleet.calls)
    asked = Counter(c.rpc_method for c in fleet.calls)
    unsupported = [m for m, ok in st.supported.items() if not ok]
    assert set(lacks) <= set(unsupported)
    for method in unsupported:  # once at the start, then once per identity interval
        assert asked[method] <= 3 + 1, (method, asked[method])


# ---- re-identification: a firmware update, another unit at the address ----------------------


async def test_firmware_change_in_the_main_reply_reidentifies_in_the_same_poll(
    make_fleet: FleetFactory,
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", seed=1, lacks=("Logged_errors.Get",))])
    device = fleet.device("c1")
    firmware = {"fw_version": "1.60", "fw_id": "old"}
    override_replies(
        fleet,
        "c1",
        {
            "Charger_info.Get": lambda: {**device.read("Charger_info.Get"), **firmware},
            "Sw_version.Get": lambda: dict(firmware),
        },
    )
    poller = Poller(FAST, [])  # identity refresh due in 600 s only
    poller.set_targets(targets(fleet))
    st = poller.devices["c1"]
    try:
        before = await settle(poller, "c1")
        firmware.update(fw_version="1.62", fw_id="new")
        start = len(fleet.calls)
        after = await poller.poll(st)
        asked = [c.rpc_method for c in fleet.calls[start:]]
        await settle(poller, "c1", 3)
        again = [c.rpc_method for c in fleet.calls[start:]]
    finally:
        await poller.close()
    info = {
        dict(s.labels)["fw_version"]: dict(s.labels)["fw_id"]
        for s in after.samples
        if s.metric == "lektrico_device_info"
    }
    assert (
        dict(next(s.labels for s in before.samples if s.metric == "lektrico_device_info"))[
            "fw_version"
        ]
        == "1.60"
    )
    assert info == {"1.62": "new"}
    assert asked[:4] == [
        "Charger_info.Get",
        "Device_id.Get",
        "Charger_config.Get",
        "Sw_version.Get",
    ]
    # An unsupported method is asked again on new firmware (with the slow ones, two a poll).
    assert again.count("Logged_errors.Get") == 1


async def test_charger_swapped_for_a_meter_is_up_as_the_meter_in_the_same_poll(
    make_fleet: FleetFactory,
) -> None:
    charger = await make_fleet([DeviceSpec("unit", "1p7k", seed=1)], frozen=True)
    port = int(charger.host("unit").rsplit(":", 1)[1])
    poller = Poller(FAST, [])
    poller.set_targets(targets(charger))
    st = poller.devices["unit"]
    try:
        was = await settle(poller, "unit")
        await charger.stop()
        meter = await make_fleet([DeviceSpec("unit", "3em", seed=2, port=port)], frozen=True)
        now = await poller.poll(st)
        later = await settle(poller, "unit", 3)
    finally:
        await poller.close()
    assert was.up and was.model == "1p7k"
    assert now.up and now.model == "3em" and later.up
    metrics = {s.metric for s in later.samples}
    assert "lektrico_meter_power_watts" in metrics
    assert not metrics & {"lektrico_power_watts", "lektrico_charger_state", "lektrico_error_logged"}
    info = dict(next(s.labels for s in later.samples if s.metric == "lektrico_device_info"))
    assert info["device_id"] == meter.device("unit").device_id
    assert info["fw_version"] == "1.15" and info["serial"] == str(meter.device("unit").serial)
    assert supported(later).get("Charger_info.Get") is None  # nothing of the charger stays


async def test_charger_swapped_for_another_charger_keeps_nothing_of_the_first(
    make_fleet: FleetFactory,
) -> None:
    first = await make_fleet([DeviceSpec("unit", "3p22k", seed=1)], frozen=True)
    port = int(first.host("unit").rsplit(":", 1)[1])
    settings = PollSettings(interval=0.5, timeout=0.3, slow_interval=60.0, identity_interval=0.0)
    poller = Poller(settings, [])  # identity every poll: the swap is seen at the next one
    poller.set_targets(targets(first))
    st = poller.devices["unit"]
    try:
        was = await settle(poller, "unit")
        await first.stop()
        second = await make_fleet([DeviceSpec("unit", "1p7k-old", seed=5, port=port)], frozen=True)
        now = await poller.poll(st)
    finally:
        await poller.close()
    assert was.model == "3p22k" and now.up and now.model == "1p7k"
    info = dict(next(s.labels for s in now.samples if s.metric == "lektrico_device_info"))
    assert info["device_id"] == second.device("unit").device_id
    assert info["fw_version"] == "1.47" and info["board_revision"] == ""  # old firmware's
    # The old unit's slow values are gone until the new unit answers them.
    assert value(now, "lektrico_current_amperes", phase="L3") is None


async def test_compressing_device_is_up_with_the_same_values(make_fleet: FleetFactory) -> None:
    plain_fleet = await make_fleet([DeviceSpec("c", "3p22k", seed=1)], frozen=True)
    gzip_fleet = await make_fleet([DeviceSpec("c", "3p22k", seed=1, compress="gzip")], frozen=True)
    poller = Poller(FAST, [])
    poller.set_targets([Target("plain", plain_fleet.url("c")), Target("gz", gzip_fleet.url("c"))])
    try:
        plain = await settle(poller, "plain")
        packed = await settle(poller, "gz")
    finally:
        await poller.close()
    assert packed.up, packed.error

    def values(r: Reading) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        skip = {"lektrico_poll_duration_seconds", "lektrico_last_poll_success_timestamp_seconds"}
        return {(s.metric, s.labels): s.value for s in r.samples if s.metric not in skip}

    assert values(packed) == values(plain)
    assert value(packed, "lektrico_power_watts") is not None


async def test_methods_seen_failing_while_the_device_was_down_are_asked_again_once_it_is_back(
    make_fleet: FleetFactory,
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", seed=1)], frozen=True)
    poller = Poller(FAST, [])  # identity refresh due in 600 s only
    poller.set_targets(targets(fleet))
    st = poller.devices["c1"]
    try:
        await settle(poller, "c1")
        fleet.set_fault("c1", "rpcerror")  # every method: error frame -1
        down = await poller.poll(st)
        fleet.set_fault("c1", "none")
        back = await settle(poller, "c1")
    finally:
        await poller.close()
    assert not down.up and down.reason == "rpc"
    assert back.up and supported(back)["Device_id.Get"] == 1
    assert supported(back)["Sw_version.Get"] == 1
