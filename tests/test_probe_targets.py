"""`/probe?target=` reaches allowed addresses only, whatever the string.

The grammar of a target is strict (IPv4, [IPv6] without zone id, RFC 1123 hostname, optional
port); the address that is checked is the one connected to, and the device URL is built from
the parsed parts only. Strings built to smuggle another host into the URL (zone ids carrying
`%`, `@`, `#`, `?`, `/`, `]`) get a 4xx and no connection is made anywhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import string
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
import yarl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.app import Exporter
from exporter.config.addresses import TargetError, parse_target
from exporter.config.schema import ConfigError, parse_config
from exporter.simulator.server import DeviceSpec, SimulatedFleet
from exporter.web.server import ProbePolicy
from harness.processes import free_port

ALLOW = (ipaddress.ip_network("fd00::/64"), ipaddress.ip_network("127.0.0.1/32"))


async def probe(session: aiohttp.ClientSession, base: str, target: str) -> tuple[int, str]:
    async with session.get(f"{base}/probe", params={"target": target}) as resp:
        return resp.status, await resp.text()


@pytest.fixture
async def setup() -> AsyncIterator[tuple[SimulatedFleet, str, aiohttp.ClientSession]]:
    """An exporter allowing fd00::/64 and 127.0.0.1, a device at 127.0.0.1 it may probe, and
    a victim at 127.0.0.2 it must never reach."""
    fleet = SimulatedFleet(
        [DeviceSpec("ok", "1p7k"), DeviceSpec("victim", "1p7k", address="127.0.0.2")],
        frozen=True,
    )
    await fleet.start()
    config = parse_config(
        f"listen: '127.0.0.1:{free_port()}'\n"
        "devices: []\n"
        "poll: {interval: 60s, timeout: 1s}\n"
        "probe: {allow: ['fd00::/64', 127.0.0.1/32]}\n"
    )
    exp = Exporter(config)
    await exp.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield fleet, f"http://127.0.0.1:{exp.port}", session
    finally:
        await exp.stop()
        await fleet.stop()


def smuggling_targets(victim: str) -> list[str]:
    """Targets whose IPv6 zone id carries URL metacharacters, each aiming at `victim`."""
    out = []
    for zone in ("%25", "%", "%eth0"):
        for tail in ("@{v}", "@{v}/", "@{v}#", "@{v}?", "@{v}/x", "]@{v}", "#@{v}"):
            body = f"fd00::1{zone}{tail.format(v=victim)}"
            out += [f"[{body}]", f"[{body}]:80", f"{body}", f"http://[{body}]/"]
    host, port = victim.rsplit(":", 1)
    for zone in ("%25", "%", "%eth0"):
        # The zone id may hold "[" and "@": the part after it becomes the URL's real host.
        out += [
            f"[fd00::1{zone}@[::ffff:{host}]:{port}",
            f"[fd00::1{zone}x@[::ffff:{host}]:{port}/",
        ]
    out += [
        f"[fd00::1]@{victim}",
        f"[fd00::1]:80@{victim}",
        f"127.0.0.1@{victim}",
        f"127.0.0.1:80/@{victim}",
        f"127.0.0.1#@{victim}",
        f"http://127.0.0.1@{victim}",
        f"[::ffff:{victim.split(':')[0]}]:{victim.split(':')[1]}",
        f"{victim}",
    ]
    return out


async def test_zone_id_and_userinfo_tricks_never_reach_another_host(
    setup: tuple[SimulatedFleet, str, aiohttp.ClientSession],
) -> None:
    fleet, base, session = setup
    victim = fleet.host("victim")
    answers = {t: await probe(session, base, t) for t in smuggling_targets(victim)}
    assert [c for c in fleet.calls if c.device == "victim"] == []
    wrong = {t: a for t, a in answers.items() if a[0] not in (400, 403)}
    assert wrong == {}
    # The allowed device is still reachable by address, so the refusals are not blanket ones.
    status, text = await probe(session, base, fleet.host("ok"))
    assert status == 200 and "lektrico_up" in text and "} 1\n" in text


async def test_unparseable_targets_get_400_never_500(
    setup: tuple[SimulatedFleet, str, aiohttp.ClientSession],
) -> None:
    _, base, session = setup
    for target in (
        "[fd00::1",
        "[fd00::1]:",
        "[fd00::1]:99999",
        "[fd00::1]:0",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1: 80",
        "[]",
        "[:]",
        "1.2.3.4.5",
        "256.1.1.1",
        "-bad-.example",
        "a..b",
        "fd00::1::80",
        " 127.0.0.1",
        "127.0.0.1\n",
        "http://[fd00::1]:80/path",
        "https://127.0.0.1",
        "ünïcode.example",
    ):
        status, _ = await probe(session, base, target)
        assert status == 400, target


async def test_hostname_target_is_resolved_once_and_every_address_checked(
    setup: tuple[SimulatedFleet, str, aiohttp.ClientSession],
) -> None:
    fleet, base, session = setup
    port = fleet.host("ok").rsplit(":", 1)[1]
    # localhost resolves (from /etc/hosts) to 127.0.0.1 and possibly ::1; ::1 is not allowed,
    # so when it is among the answers the target is refused as a whole.
    infos = await asyncio.get_running_loop().getaddrinfo("localhost", int(port))
    addresses = {info[4][0] for info in infos}
    status, _ = await probe(session, base, f"localhost:{port}")
    if addresses <= {"127.0.0.1"}:
        assert status == 200
    else:
        assert status == 403
    status, _ = await probe(session, base, f"no-such-host.invalid:{port}")
    assert status == 403


async def test_hostname_resolving_inside_the_allow_list_is_probed(
    make_fleet: object,
) -> None:
    fleet = SimulatedFleet([DeviceSpec("ok", "1p7k")], frozen=True)
    await fleet.start()
    config = parse_config(
        f"listen: '127.0.0.1:{free_port()}'\n"
        "devices: []\n"
        "poll: {interval: 60s, timeout: 1s}\n"
        "probe: {allow: [127.0.0.0/8, '::1/128']}\n"
    )
    exp = Exporter(config)
    await exp.start()
    try:
        port = fleet.host("ok").rsplit(":", 1)[1]
        async with aiohttp.ClientSession() as session:
            status, text = await probe(session, f"http://127.0.0.1:{exp.port}", f"localhost:{port}")
        infos = await asyncio.get_running_loop().getaddrinfo("localhost", int(port))
        first = infos[0][4][0]
        if first == "127.0.0.1":  # the simulator listens on IPv4 only
            assert status == 200 and "} 1\n" in text, text
        else:
            assert status == 200
    finally:
        await exp.stop()
        await fleet.stop()


def test_allow_list_refuses_zone_ids() -> None:
    with pytest.raises(ConfigError, match="zone id"):
        parse_config("devices: []\nprobe: {allow: ['fe80::%eth0/64']}\n")


# ---- the grammar, for any string ------------------------------------------------------------

METACHARACTERS = "%[]@#?/:.\\ \t\n&=+;,~!$'()*"
PIECES = st.sampled_from(
    [
        "fd00::1",
        "fd00::",
        "127.0.0.1",
        "127.0.0.2",
        "::ffff:127.0.0.2",
        "[",
        "]",
        "%25",
        "http://",
        "localhost",
        "example.com",
        ":80",
        ":8080",
        "0",
        "1",
    ]
)
TARGETS = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=string.hexdigits + METACHARACTERS, max_size=60),
    st.lists(st.one_of(PIECES, st.sampled_from(list(METACHARACTERS))), max_size=10).map("".join),
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TARGETS)
def test_any_string_is_refused_or_connects_only_to_an_allowed_address(text: str) -> None:
    """The property behind /probe: a parse either fails (4xx) or yields an address, and the
    URL the device client will connect to names exactly that address and port."""
    try:
        target = parse_target(text)
    except TargetError as exc:
        assert exc.status == 400
        return
    if target.ip is None:  # a hostname: resolution is checked in the tests above
        assert all(c in string.ascii_lowercase + string.digits + "-._" for c in target.host)
        return
    policy = ProbePolicy(allow=ALLOW)
    try:
        url = asyncio.run(policy.url_for(target))
    except TargetError as exc:
        assert exc.status == 403
        assert not any(target.ip in net for net in ALLOW if net.version == target.ip.version)
        return
    parsed = yarl.URL(url)
    assert parsed.user is None and parsed.password is None
    assert parsed.path in ("", "/") and not parsed.query_string and not parsed.fragment
    assert parsed.port == target.port
    connected = ipaddress.ip_address(parsed.host or "")
    assert any(connected in net for net in ALLOW if net.version == connected.version)


async def test_random_strings_over_http_are_4xx_or_probe_an_allowed_device(
    setup: tuple[SimulatedFleet, str, aiohttp.ClientSession],
) -> None:
    """The same property end to end, over real sockets: 1,500 seeded random targets built
    from address pieces and URL metacharacters, aimed at the victim's address and port."""
    fleet, base, session = setup
    victim_host, victim_port = fleet.host("victim").rsplit(":", 1)
    pieces = [
        "fd00::1",
        "127.0.0.1",
        victim_host,
        f"::ffff:{victim_host}",
        f"@[::ffff:{victim_host}]",
        f":{victim_port}",
        victim_port,
        "[",
        "]",
        "%25",
        "%",
        "http://",
        "localhost",
        *METACHARACTERS,
    ]
    rng = random.Random(20261202)
    statuses: Counter[int] = Counter()
    for _ in range(1500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        status, _ = await probe(session, base, text)
        assert status in (200, 400, 403), (text, status)
        statuses[status] += 1
    assert [c for c in fleet.calls if c.device == "victim"] == []
    assert statuses[400] and statuses[403]
