"""The exporter's HTTP endpoints, served for real and read by a real HTTP client."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from exporter.simulator.server import DeviceSpec

from .conftest import ExporterFactory, FleetFactory, fetch, fleet_config


def families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


async def wait_all_up(base: str, count: int, seconds: float = 5.0) -> str:
    deadline = time.monotonic() + seconds
    while True:
        _, text = await fetch(f"{base}/metrics")
        ups = families(text).get("lektrico_up", [])
        if len(ups) == count and all(v == 1 for _, v in ups):
            return text
        assert time.monotonic() < deadline, f"devices not up in time: {ups}"
        await asyncio.sleep(0.1)


async def test_metrics_serves_every_device_with_its_labels(
    make_fleet: FleetFactory, make_exporter: ExporterFactory
) -> None:
    fleet = await make_fleet(
        [
            DeviceSpec("c1", "1p7k"),
            DeviceSpec("c3", "3p22k"),
            DeviceSpec("m1", "em"),
            DeviceSpec("m3", "3em"),
        ],
        frozen=True,
    )
    exp = await make_exporter(fleet_config(fleet, site="home"))
    text = await wait_all_up(f"http://127.0.0.1:{exp.port}", 4)
    fams = families(text)
    assert {lbl["device"] for lbl, _ in fams["lektrico_up"]} == {"c1", "c3", "m1", "m3"}
    assert all(lbl["site"] == "home" for lbl, _ in fams["lektrico_power_watts"])
    assert {lbl["model"] for lbl, _ in fams["lektrico_device_info"]} == {
        "1p7k",
        "3p22k",
        "em",
        "3em",
    }
    assert len(fams["lektrico_exporter_build_info"]) == 1
    assert fams["lektrico_devices_configured"][0][1] == 4


async def test_metrics_gzip_is_the_same_exposition(
    make_fleet: FleetFactory, make_exporter: ExporterFactory
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k")], frozen=True)
    exp = await make_exporter(fleet_config(fleet, poll="{interval: 5s, timeout: 1s}"))
    base = f"http://127.0.0.1:{exp.port}"
    await wait_all_up(base, 1, seconds=8)
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.get(f"{base}/metrics", headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            zipped = await resp.read()
        async with s.get(f"{base}/metrics", headers={"Accept-Encoding": "identity"}) as resp:
            assert "Content-Encoding" not in resp.headers
            plain = await resp.read()
    device_part = plain.split(b"# HELP lektrico_exporter_build_info")[0]
    assert gzip.decompress(zipped).startswith(device_part)


async def test_probe_configured_device_by_name_and_address(
    make_fleet: FleetFactory, make_exporter: ExporterFactory
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k")], frozen=True)
    exp = await make_exporter(fleet_config(fleet, poll="{interval: 60s, timeout: 2s}"))
    base = f"http://127.0.0.1:{exp.port}"
    for target in ("c1", fleet.host("c1")):
        status, text = await fetch(f"{base}/probe?target={target}")
        fams = families(text)
        assert status == 200
        assert fams["lektrico_up"] == [({"device": "c1"}, 1.0)]
        assert "lektrico_poll_errors_total" not in fams  # exporter's own: /metrics only
        assert "lektrico_power_watts" in fams


async def test_probe_refuses_targets_outside_the_allow_list_without_contacting_them(
    make_fleet: FleetFactory, make_exporter: ExporterFactory
) -> None:
    fleet = await make_fleet(
        [DeviceSpec("known", "1p7k"), DeviceSpec("stranger", "1p7k")], frozen=True
    )
    config = fleet_config(fleet, poll="{interval: 60s, timeout: 2s}")
    config = config.model_copy(update={"devices": config.devices[:1]})
    exp = await make_exporter(config)
    base = f"http://127.0.0.1:{exp.port}"
    for target in (
        fleet.host("stranger"),
        "example.com",
        "10.1.2.3:80",
        "http://169.254.1.1",
        "[::1]:80",
    ):
        status, text = await fetch(f"{base}/probe?target={target}")
        assert status == 403, (target, text)
    status, _ = await fetch(f"{base}/probe")
    assert status == 400
    assert [c for c in fleet.calls if c.device == "stranger"] == []


async def test_probe_reaches_allowed_network(
    make_fleet: FleetFactory, make_exporter: ExporterFactory
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "3p22k")], frozen=True)
    config = fleet_config(
        fleet, extra="probe: {allow: [127.0.0.0/8]}", poll="{interval: 60s, timeout: 2s}"
    )
    exp = await make_exporter(config.model_copy(update={"devices": []}))
    status, text = await fetch(f"http://127.0.0.1:{exp.port}/probe?target={fleet.host('c1')}")
    fams = families(text)
    assert status == 200
    assert fams["lektrico_up"][0][1] == 1
    assert {lbl["phase"] for lbl, _ in fams["lektrico_current_amperes"]} == {"L1", "L2", "L3"}


async def test_probe_answers_within_prometheus_scrape_timeout(
    make_fleet: FleetFactory, make_exporter: ExporterFactory
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", fault="hang")])
    exp = await make_exporter(fleet_config(fleet, poll="{interval: 60s, timeout: 10s}"))
    started = time.monotonic()
    status, text = await fetch(
        f"http://127.0.0.1:{exp.port}/probe?target=c1",
        headers={"X-Prometheus-Scrape-Timeout-Seconds": "1.5"},
    )
    elapsed = time.monotonic() - started
    assert status == 200 and 0.9 < elapsed < 1.4
    assert families(text)["lektrico_up"][0][1] == 0


async def test_concurrent_probes_share_one_poll(
    make_fleet: FleetFactory, make_exporter: ExporterFactory
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k", fault="slow:0.3")], frozen=True)
    exp = await make_exporter(fleet_config(fleet, poll="{interval: 60s, timeout: 5s}"))
    url = f"http://127.0.0.1:{exp.port}/probe?target=c1"
    st = exp.poller.devices["c1"]

    def age() -> None:  # older than the interval: the next probe polls
        assert st.reading is not None
        st.reading = dataclasses.replace(st.reading, time=st.reading.time - 120)

    await fetch(url)
    for _ in range(4):  # until the slow methods a first poll leaves over are in
        age()
        await fetch(url)
    age()
    before = len(fleet.calls)
    results = await asyncio.gather(*(fetch(url) for _ in range(6)))
    assert all(status == 200 for status, _ in results)
    assert [c.rpc_method for c in fleet.calls[before:]] == ["Charger_info.Get"]


async def test_device_page_escapes_device_strings(
    make_fleet: FleetFactory, make_exporter: ExporterFactory
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k")], frozen=True)
    fleet.set_alias("c1", '<script>alert("x")</script>')
    exp = await make_exporter(fleet_config(fleet))
    base = f"http://127.0.0.1:{exp.port}"
    await wait_all_up(base, 1)
    status, page = await fetch(base + "/device/c1")
    assert status == 200
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert 'href="/probe?target=c1"' in page
    status, api = await fetch(base + "/api/devices")
    row = json.loads(api)["devices"][0]
    assert row["alias"] == '<script>alert("x")</script>' and row["status"] == "up"
    assert (await fetch(base + "/device/nope"))[0] == 404


async def test_api_devices_filters_sorts_and_pages(
    make_fleet: FleetFactory, make_exporter: ExporterFactory
) -> None:
    fleet = await make_fleet([DeviceSpec(f"c{i}", "1p7k") for i in range(5)], frozen=True)
    exp = await make_exporter(fleet_config(fleet, site="lab"))
    base = f"http://127.0.0.1:{exp.port}"
    await wait_all_up(base, 5)

    async def names(query: str) -> list[str]:
        status, text = await fetch(f"{base}/api/devices?{query}")
        assert status == 200, text
        return [d["name"] for d in json.loads(text)["devices"]]

    assert await names("") == ["c0", "c1", "c2", "c3", "c4"]
    assert await names("sort=name&order=desc&limit=2") == ["c4", "c3"]
    assert await names("limit=2&offset=2") == ["c2", "c3"]
    assert await names("q=C3") == ["c3"]
    assert await names("status=down") == []
    assert await names("label=site:lab&limit=1") == ["c0"]
    assert await names("label=site:elsewhere") == []
    assert len(await names("sort=labels_text&order=desc")) == 5
    for bad in ("sort=secret", "limit=0", "limit=100000", "offset=-1", "label=nocolon", "status=x"):
        status, text = await fetch(f"{base}/api/devices?{bad}")
        assert status == 400 and "error" in json.loads(text), bad
    summary = json.loads((await fetch(f"{base}/api/devices"))[1])["summary"]
    assert summary["configured"] == summary["up"] == 5
    assert summary["by_label"]["site"]["lab"]["up"] == 5


async def test_health_and_readiness(
    make_exporter: ExporterFactory, make_fleet: FleetFactory
) -> None:
    fleet = await make_fleet([DeviceSpec("c1", "1p7k")], frozen=True)
    exp = await make_exporter(fleet_config(fleet))
    base = f"http://127.0.0.1:{exp.port}"
    assert (await fetch(base + "/-/healthy"))[0] == 200
    assert (await fetch(base + "/-/ready"))[0] == 200


def test_the_schedule_reads_as_words() -> None:
    from exporter.web.pages import schedule_words

    on = {"lektrico_schedule_enabled": 1.0, "lektrico_schedule_intervals": 2.0}
    assert schedule_words({}) is None
    assert schedule_words({**on, "lektrico_schedule_enabled": 0.0}) == "off (2 intervals)"
    assert schedule_words({**on, "lektrico_schedule_active": 0.0}) == (
        "on (2 intervals), no interval active now"
    )
    paused = {**on, "lektrico_schedule_active": 1.0, "lektrico_schedule_current_amperes": 0.0}
    assert schedule_words(paused) == "on (2 intervals), charging paused by the schedule now"
    limited = {
        **paused,
        "lektrico_schedule_current_amperes": 10.0,
        "lektrico_schedule_intervals": 1.0,
    }
    assert schedule_words(limited) == "on (1 interval), an interval limits charging to 10 A now"
