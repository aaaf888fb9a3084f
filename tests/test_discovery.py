"""Discovery: devices announced over real mDNS become targets the exporter polls.

Every test announces services with a real zeroconf responder and browses with another, both on
127.0.0.1: mDNS goes to 224.0.0.251, a link-local group, which Linux delivers over the loopback
interface when the sending socket names it (IP_MULTICAST_IF), even when `lo` lacks the MULTICAST
flag. Nothing is sent on any other interface. Serials are random so that two test runs on one
host cannot confuse each other's announcements.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from exporter.config.schema import ConfigError, DiscoveryConfig, load_config, parse_config
from exporter.device.discovery import Discovery, DiscoveryError, merge, parse_identity
from exporter.device.poller import Target
from exporter.simulator.server import DeviceSpec
from harness.processes import free_port

from .conftest import ExporterFactory, FleetFactory, fetch, fleet_config
from .test_config import EXAMPLE, _commented_block

pytestmark = pytest.mark.timeout(30)
CAPTURE = json.loads((Path(__file__).parent / "captures" / "1p7k-zeroconf-record.json").read_text())
HTTP = "_http._tcp.local."
LOOPBACK = "127.0.0.1"


def fresh_serial() -> int:
    return random.randint(100000, 999999)


def fresh_address() -> str:
    """A loopback address of its own (127.0.0.0/8 is all loopback) for a device nobody polls."""
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"


class Announcer:
    """A zeroconf responder on loopback, announcing services as a device on the network would."""

    def __init__(self) -> None:
        self.zc = AsyncZeroconf(interfaces=[LOOPBACK])
        self._announcing: dict[str, Awaitable[object]] = {}

    async def announce(
        self, instance: str, host: str, properties: dict[str, str], type_: str = HTTP
    ) -> AsyncServiceInfo:
        address, _, port = host.partition(":")
        info = AsyncServiceInfo(
            type_,
            f"{instance}.{type_}",
            addresses=[socket.inet_aton(address)],
            port=int(port),
            properties=properties,
            server=f"{instance.lower()}.local.",
        )
        # A cooperating responder skips the uniqueness probe (a second of queries nobody answers,
        # as serials are random); discovery only sees the announcements, which are unchanged.
        # They repeat for half a second in the background, as they would on a charger.
        self._announcing[info.name] = await self.zc.async_register_service(
            info, cooperating_responders=True
        )
        return info

    async def withdraw(self, info: AsyncServiceInfo) -> None:
        """Send goodbyes, after the last announcement, like a device leaving the network."""
        await self._announcing.pop(info.name)
        await (await self.zc.async_unregister_service(info))


@pytest.fixture
async def announcer() -> AsyncIterator[Announcer]:
    announcer = Announcer()
    yield announcer
    await announcer.zc.async_close()


class Watched:
    """A started Discovery and every list it handed to on_change, with when."""

    def __init__(self, config: DiscoveryConfig) -> None:
        self.changes: list[tuple[float, list[Target]]] = []  # (time.time(), targets)
        self.discovery = Discovery(config, lambda ts: self.changes.append((time.time(), ts)))

    def target(self, name: str) -> Target | None:
        return next((t for t in self.discovery.targets if t.name == name), None)


DiscoveryFactory = Callable[..., Awaitable[Watched]]


@pytest.fixture
async def make_discovery() -> AsyncIterator[DiscoveryFactory]:
    started: list[Watched] = []

    async def start(**settings: Any) -> Watched:
        config = DiscoveryConfig(enabled=True, interfaces=[LOOPBACK], **settings)
        watched = Watched(config)
        await watched.discovery.start()
        started.append(watched)
        return watched

    yield start
    for watched in started:
        await watched.discovery.stop()


async def until(check: Callable[[], object], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not true within {timeout:g}s"
        await asyncio.sleep(0.05)


# ---- what is discovered ---------------------------------------------------------------------


async def test_announced_charger_becomes_a_target_named_by_serial(
    make_fleet: FleetFactory, announcer: Announcer, make_discovery: DiscoveryFactory
) -> None:
    serial = fresh_serial()
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", serial=serial)])
    watched = await make_discovery(labels={"site": "garage"})
    # Exactly what a real charger announces (the capture), with this test's serial and address.
    instance = CAPTURE["name"].removesuffix("._http._tcp").replace("500006", str(serial))
    properties = {**CAPTURE["properties"], "id": fleet.device("c1").device_id}

    await announcer.announce(instance, fleet.host("c1"), properties, type_=CAPTURE["type"])
    await until(lambda: watched.target(f"lektrico-{serial}"))

    assert watched.target(f"lektrico-{serial}") == Target(
        name=f"lektrico-{serial}",
        base_url=f"http://{fleet.host('c1')}",
        labels=(("site", "garage"),),
        model="1p7k",
    )
    assert properties["id"] == f"1p7k_{serial}"


async def test_announced_meter_becomes_a_target_too(
    make_fleet: FleetFactory, announcer: Announcer, make_discovery: DiscoveryFactory
) -> None:
    fleet = await make_fleet([DeviceSpec("m1", "em", serial=fresh_serial())])
    watched = await make_discovery()
    meter_id = fleet.device("m1").device_id  # "m2w_81" + serial
    serial = meter_id.partition("_")[2]

    await announcer.announce(f"Lektrico-em-{serial}", fleet.host("m1"), {"id": meter_id})
    await until(lambda: watched.target(f"lektrico-{serial}"))

    target = watched.target(f"lektrico-{serial}")
    assert meter_id.startswith("m2w_81")
    assert target is not None
    assert (target.model, target.base_url) == ("em", f"http://{fleet.host('m1')}")


async def test_device_already_on_the_network_when_discovery_starts_is_found(
    announcer: Announcer, make_discovery: DiscoveryFactory
) -> None:
    serial, address = fresh_serial(), fresh_address()
    await announcer.announce(f"Lektrico-1p7k-{serial}", f"{address}:80", {"id": f"1p7k_{serial}"})
    await asyncio.sleep(1.0)  # its announcements are over: only answering a query can find it

    watched = await make_discovery()
    await until(lambda: watched.target(f"lektrico-{serial}"))

    target = watched.target(f"lektrico-{serial}")
    assert target is not None and target.base_url == f"http://{address}:80"


async def test_other_http_services_and_lektrico_names_without_serial_are_ignored(
    announcer: Announcer, make_discovery: DiscoveryFactory
) -> None:
    serial, address = fresh_serial(), fresh_address()
    watched = await make_discovery()

    printer = f"Office-Printer-{serial}"
    await announcer.announce(printer, f"{address}:631", {"id": f"1p7k_{serial + 1}"})
    await announcer.announce(f"Lektrico-{serial}", f"{address}:82", {"fw_id": "x"})
    # Announced last, so found last: by then the two before it were seen too.
    await announcer.announce(f"LEKTRICO-3p22k-{serial}", f"{address}:83", {"id": f"3p22k_{serial}"})
    await until(lambda: watched.target(f"lektrico-{serial}"))
    await asyncio.sleep(0.3)

    mine = [t for t in watched.discovery.targets if t.name.endswith((str(serial), str(serial + 1)))]
    assert [(t.name, t.base_url, t.model) for t in mine] == [
        (f"lektrico-{serial}", f"http://{address}:83", "3p22k")
    ]


async def test_port_override_replaces_the_announced_port(
    announcer: Announcer, make_discovery: DiscoveryFactory
) -> None:
    serial, address = fresh_serial(), fresh_address()
    watched = await make_discovery(port_override=8080)

    await announcer.announce(f"Lektrico-1p7k-{serial}", f"{address}:80", {"id": f"1p7k_{serial}"})
    await until(lambda: watched.target(f"lektrico-{serial}"))

    target = watched.target(f"lektrico-{serial}")
    assert target is not None and target.base_url == f"http://{address}:8080"


@pytest.mark.parametrize(
    ("instance", "device_id", "identity"),
    [
        ("Lektrico-1p7k-500006", "1p7k_500006", ("500006", "1p7k")),
        ("Lektrico-em-810006", "m2w_810006", ("810006", "em")),
        ("Lektrico-3em-830006", "m2w_830006", ("830006", "3em")),
        ("Lektrico-newmodel-700001", "x9_700001", ("700001", None)),
        ("Lektrico-3p22k-500007", None, ("500007", "3p22k")),
        ("Lektrico-3p22k-500007", "500007", ("500007", "3p22k")),
        ("Lektrico-500008", None, None),
    ],
)
def test_serial_and_model_come_from_the_txt_id_else_from_the_instance_name(
    instance: str, device_id: str | None, identity: tuple[str, str | None] | None
) -> None:
    assert parse_identity(instance, device_id) == identity


# ---- devices that leave ---------------------------------------------------------------------


def goodbyes(caplog: pytest.LogCaptureFixture, instance: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(f"{instance} said goodbye")]


async def test_device_that_says_goodbye_is_dropped_after_the_grace_period(
    announcer: Announcer, make_discovery: DiscoveryFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lektrico.discovery")
    serial = fresh_serial()
    name, instance, host = f"lektrico-{serial}", f"Lektrico-1p7k-{serial}", f"{fresh_address()}:80"
    watched = await make_discovery(grace_period=1.0)
    info = await announcer.announce(instance, host, {"id": f"1p7k_{serial}"})
    await until(lambda: watched.target(name))

    await announcer.withdraw(info)
    await until(lambda: goodbyes(caplog, instance))
    kept_after_goodbye = watched.target(name) is not None
    await until(lambda: watched.target(name) is None)

    assert kept_after_goodbye
    goodbye_at = goodbyes(caplog, instance)[0].created
    dropped_at = next(at for at, targets in watched.changes if all(t.name != name for t in targets))
    assert 0.9 <= dropped_at - goodbye_at <= 1.5
    assert any(f"no longer polling {name}" in r.getMessage() for r in caplog.records)


async def test_device_back_within_the_grace_period_is_never_dropped(
    announcer: Announcer, make_discovery: DiscoveryFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lektrico.discovery")
    serial = fresh_serial()
    name, instance, host = f"lektrico-{serial}", f"Lektrico-1p7k-{serial}", f"{fresh_address()}:80"
    watched = await make_discovery(grace_period=1.0)
    info = await announcer.announce(instance, host, {"id": f"1p7k_{serial}"})
    await until(lambda: watched.target(name))

    await announcer.withdraw(info)
    await until(lambda: goodbyes(caplog, instance))
    await announcer.announce(instance, host, {"id": f"1p7k_{serial}"})
    await asyncio.sleep(1.5)  # past the grace period counted from the goodbye

    assert watched.target(name) is not None
    assert all(any(t.name == name for t in targets) for _, targets in watched.changes)
    assert any(r.getMessage() == f"{instance} is back" for r in caplog.records)


# ---- together with the configured devices and the poller ------------------------------------


def test_configured_device_wins_over_a_discovered_one_at_the_same_address_or_name() -> None:
    static = [
        Target("garage", "http://192.168.1.20:80"),
        Target("lektrico-500007", "http://charger.example.com:80"),
    ]
    discovered = [
        Target("lektrico-500006", "http://192.168.1.20:80", model="1p7k"),
        Target("lektrico-500007", "http://192.168.1.21:80", model="1p7k"),
        Target("lektrico-500008", "http://192.168.1.20:8080", model="1p7k"),
    ]

    merged = merge(static, discovered)

    assert [t.name for t in merged] == ["garage", "lektrico-500007", "lektrico-500008"]
    assert merged[:2] == static


async def scrape_until(url: str, wanted: str, timeout: float = 8.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        _, body = await fetch(url)
        if wanted in body:
            return body
        assert time.monotonic() < deadline, f"{wanted!r} not in {url} within {timeout:g}s"
        await asyncio.sleep(0.2)


async def test_discovered_device_is_polled_and_up(
    make_fleet: FleetFactory, make_exporter: ExporterFactory, announcer: Announcer
) -> None:
    # Both simulated chargers announce themselves; "static" is also in the config.
    specs = [DeviceSpec(n, "1p7k", serial=fresh_serial()) for n in ("found", "static")]
    fleet = await make_fleet(specs)
    discovery = "discovery: {enabled: true, interfaces: [127.0.0.1], labels: {site: lab}}"
    config = fleet_config(fleet, extra=discovery)
    static_only = [d for d in config.devices if d.name == "static"]
    exporter = await make_exporter(config.model_copy(update={"devices": static_only}))
    found, static = (f"lektrico-{spec.serial}" for spec in specs)

    for spec in specs:
        device_id = fleet.device(spec.name).device_id
        await announcer.announce(
            f"Lektrico-1p7k-{spec.serial}", fleet.host(spec.name), {"id": device_id}
        )
    metrics = f"http://127.0.0.1:{exporter.port}/metrics"
    await scrape_until(metrics, 'lektrico_up{device="static"} 1')
    body = await scrape_until(metrics, f'lektrico_up{{device="{found}",site="lab"}} 1')

    # Other announcers on this host may add devices of their own; none of them is ours.
    assert exporter.discovery is not None and exporter.discovery.targets
    assert {found, "static"} <= set(exporter.poller.devices)
    assert static not in exporter.poller.devices
    assert f'device="{static}"' not in body


async def test_reload_turns_discovery_off_and_drops_the_discovered_devices(
    make_fleet: FleetFactory, make_exporter: ExporterFactory, announcer: Announcer, tmp_path: Path
) -> None:
    spec = DeviceSpec("found", "1p7k", serial=fresh_serial())
    fleet = await make_fleet([spec])
    config_file = tmp_path / "config.yaml"
    on = "discovery: {enabled: true, interfaces: [127.0.0.1]}"
    listen = f"listen: '127.0.0.1:{free_port()}'\npoll: {{interval: 1s, timeout: 500ms}}\n"
    config_file.write_text(listen + on + "\n")
    exporter = await make_exporter(load_config(config_file), config_path=str(config_file))
    device_id = fleet.device("found").device_id
    await announcer.announce(f"Lektrico-1p7k-{spec.serial}", fleet.host("found"), {"id": device_id})
    await until(lambda: f"lektrico-{spec.serial}" in exporter.poller.devices)

    config_file.write_text(listen)
    problem = await exporter.reload()

    assert problem is None
    assert exporter.discovery is None
    assert f"lektrico-{spec.serial}" not in exporter.poller.devices


# ---- configuration ---------------------------------------------------------------------------


def test_discovery_is_off_by_default_and_the_example_section_loads_once_uncommented() -> None:
    text = EXAMPLE.read_text()

    default = parse_config(text, environ={}).discovery
    config = parse_config(text + _commented_block(text, "#discovery:", 0), environ={}).discovery

    assert default == DiscoveryConfig() and not default.enabled
    assert config.enabled and config.service == HTTP and config.name_prefix == "Lektrico-"
    assert (config.interfaces, config.port_override, config.grace_period) == (
        ["192.168.1.5"],
        8080,
        300.0,
    )


async def test_an_interface_address_this_host_does_not_have_is_a_one_line_error() -> None:
    discovery = Discovery(DiscoveryConfig(interfaces=["198.51.100.7"]), lambda targets: None)

    with pytest.raises(DiscoveryError) as caught:
        await discovery.start()

    assert str(caught.value).startswith("discovery cannot listen on 198.51.100.7: ")
    assert "\n" not in str(caught.value)
    await discovery.stop()


# ---- without the zeroconf package -----------------------------------------------------------


def test_enabling_discovery_without_zeroconf_is_a_one_line_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "zeroconf", None)

    with pytest.raises(ConfigError) as caught:
        parse_config("discovery:\n  enabled: true\n", environ={})

    assert str(caught.value) == (
        "discovery.enabled: needs the zeroconf package:"
        " pip install 'lektrico-exporter[discovery]' (line 2)"
    )
    assert parse_config("discovery:\n  enabled: false\n", environ={}).discovery.enabled is False


async def test_starting_discovery_without_zeroconf_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "zeroconf", None)
    discovery = Discovery(DiscoveryConfig(), lambda targets: None)

    with pytest.raises(DiscoveryError, match=r"pip install 'lektrico-exporter\[discovery\]'"):
        await discovery.start()
