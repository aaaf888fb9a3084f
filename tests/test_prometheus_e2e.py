"""A real Prometheus scrapes the exporter, through /metrics and through /probe relabelling."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from exporter.outputs.prometheus import Exposition
from exporter.simulator.server import DeviceSpec
from harness.servers import Prometheus, require_binary

from .conftest import ExporterFactory, FleetFactory, fetch, fleet_config

PROMETHEUS_CONFIG = """
global: {{scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}}
scrape_configs:
  - job_name: fleet
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
  - job_name: probe
    metrics_path: /probe
    static_configs: [{{targets: ["c1", "{c3}"]}}]
    relabel_configs:
      - {{source_labels: [__address__], target_label: __param_target}}
      - {{source_labels: [__param_target], target_label: instance}}
      - {{target_label: __address__, replacement: "127.0.0.1:{port}"}}
"""


async def until_result(
    prom: Prometheus, promql: str, count: int, seconds: float = 20.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while True:
        result = await prom.query(promql)
        if len(result) == count:
            return result
        assert time.monotonic() < deadline, f"{promql}: {len(result)} series, want {count}"
        await asyncio.sleep(0.25)


def value(result: list[dict[str, Any]]) -> float:
    return float(result[0]["value"][1])


async def test_prometheus_scrapes_metrics_and_probe(
    tmp_path: Path, make_fleet: FleetFactory, make_exporter: ExporterFactory
) -> None:
    fleet = await make_fleet(
        [
            DeviceSpec("c1", "1p7k", seed=1),
            DeviceSpec("c3", "3p22k", seed=2),
            DeviceSpec("m1", "em", seed=3),
            DeviceSpec("m3", "3em", seed=4),
        ],
        frozen=True,
    )
    exp = await make_exporter(fleet_config(fleet, site="lab"))
    prom = Prometheus(
        tmp_path / "prom", PROMETHEUS_CONFIG.format(port=exp.port, c3=fleet.host("c3"))
    )
    await prom.start()
    try:
        ups = await until_result(prom, 'lektrico_up{job="fleet"} == 1', 4)
        assert {r["metric"]["device"] for r in ups} == {"c1", "c3", "m1", "m3"}
        assert all(r["metric"]["site"] == "lab" for r in ups)

        info = fleet.device("c1").read("Charger_info.Get")
        energy = await until_result(
            prom, 'lektrico_energy_joules_total{job="fleet",device="c1"}', 1
        )
        assert value(energy) == float(info["total_charged_energy"]) * 3.6e6
        c3 = fleet.device("c3").read("Charger_info.Get")
        amps = await until_result(prom, 'sum(lektrico_current_amperes{job="fleet",device="c3"})', 1)
        assert abs(value(amps) - sum(c3["currents"])) < 1e-9
        phases = await until_result(prom, 'lektrico_meter_power_watts{job="fleet",device="m1"}', 1)
        assert phases[0]["metric"]["phase"] == "L1"

        probed = await until_result(prom, 'lektrico_up{job="probe"} == 1', 2)
        assert {r["metric"]["instance"] for r in probed} == {"c1", fleet.host("c3")}
        assert {r["metric"]["device"] for r in probed} == {"c1", "c3"}
        power = await until_result(prom, 'lektrico_power_watts{job="probe",instance="c1"}', 1)
        assert value(power) == float(info["instant_power"])
        charging = await until_result(prom, "lektrico_charger_state == 1", 4)
        assert {r["metric"]["job"] for r in charging} == {"fleet", "probe"}
        assert await prom.query('up{job="probe"} == 0') == []
        assert await prom.query('lektrico_poll_errors_total{job="probe"}') == []
    finally:
        await prom.stop()


async def test_promtool_accepts_the_exporter_output(
    tmp_path: Path, make_fleet: FleetFactory, make_exporter: ExporterFactory
) -> None:
    promtool = require_binary("/usr/bin/promtool")
    fleet = await make_fleet(
        [
            DeviceSpec(p, p, seed=i)
            for i, p in enumerate(["1p7k", "1p7k-old", "1p7k-partial", "3p22k", "em", "3em"])
        ],
        frozen=True,
    )
    exp = await make_exporter(fleet_config(fleet))
    base = f"http://127.0.0.1:{exp.port}"
    deadline = time.monotonic() + 10
    while True:
        _, text = await fetch(base + "/metrics")
        if text.count("lektrico_up{") == 6:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    _, probe = await fetch(base + "/probe?target=3p22k")
    for body in (text, probe):
        check = await asyncio.to_thread(
            subprocess.run,
            [promtool, "check", "metrics"],
            input=body,
            text=True,
            capture_output=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout + check.stderr == ""


async def test_prometheus_reads_the_blockwise_gzip_body(
    tmp_path: Path,
    make_fleet: FleetFactory,
    make_exporter: ExporterFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Blocks of two devices, so the gzip body Prometheus asks for is made of many blocks
    # compressed apart and kept between scrapes; Go's gzip reader checks the CRC-32 and length
    # the exporter combined from theirs, so a wrong one would fail the scrape (up == 0).
    monkeypatch.setattr(Exposition, "BLOCK", 2)
    zipped: list[int] = []
    original = Exposition.render_gzip_async

    async def counted(self: Exposition, tail: bytes = b"") -> bytes:
        body = await original(self, tail)
        zipped.append(len(body))
        return body

    monkeypatch.setattr(Exposition, "render_gzip_async", counted)
    names = [f"c{i}" for i in range(5)] + ["m0", "m1"]
    fleet = await make_fleet(
        [
            DeviceSpec(n, "3p22k" if n.startswith("c") else "3em", seed=i)
            for i, n in enumerate(names)
        ]
    )
    exp = await make_exporter(fleet_config(fleet, site="lab"))
    prom = Prometheus(
        tmp_path / "prom", PROMETHEUS_CONFIG.format(port=exp.port, c3=fleet.host("c1"))
    )
    await prom.start()
    try:
        ups = await until_result(prom, 'lektrico_up{job="fleet"} == 1', len(names))
        assert {r["metric"]["device"] for r in ups} == set(names)
        # Several scrapes in, with devices polled between them: blocks kept and blocks redone.
        await until_result(prom, 'count_over_time(up{job="fleet"}[1m]) >= 4', 1)
        assert await prom.query('up{job="fleet"} == 0') == []
        assert (
            await prom.query(
                'count_over_time(up{job="fleet"}[1m]) != sum_over_time(up{job="fleet"}[1m])'
            )
            == []
        )
        energy = await until_result(prom, 'lektrico_energy_joules_total{job="fleet"}', 5)
        assert all(float(r["value"][1]) > 0 for r in energy)
    finally:
        await prom.stop()
    assert len(zipped) >= 4  # Prometheus asked for gzip, and got the block-wise body
