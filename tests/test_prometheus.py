"""Prometheus text exposition: what a scraper parses, family by family, device by device."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import os
import shutil
import subprocess
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.catalogue import table as cat
from exporter.device.normalise import extract, normalise_reply
from exporter.outputs.prometheus import (
    Exposition,
    escape,
    format_value,
    render_device,
    render_probe,
)
from exporter.reading import Labels, Reading, Sample
from harness.servers import unavailable

CAPTURES = Path(__file__).parent / "captures"
TRICKY = ["back\\slash", 'say "hi"', "line\nbreak", 'all \\ " \n three', "plain"]


def health(up: bool = True, reason: str | None = None) -> list[Sample]:
    samples = [
        Sample("lektrico_up", (), 1.0 if up else 0.0),
        Sample("lektrico_poll_duration_seconds", (), 0.125),
        Sample("lektrico_last_poll_success_timestamp_seconds", (), 1_700_000_000.5),
        Sample("lektrico_device_info", info_labels(), 1.0),
    ]
    if reason:
        samples.append(Sample("lektrico_poll_errors_total", (("reason", reason),), 3.0))
    return samples


def info_labels(alias: str = "Garage") -> Labels:
    return (
        ("device_id", "1p7k_500006"),
        ("model", "1p7k"),
        ("serial", "500006"),
        ("fw_version", "1.47"),
        ("fw_id", ""),
        ("board_revision", "B"),
        ("alias", alias),
    )


LIVE = [
    Sample("lektrico_power_watts", (), 1179.57),
    Sample("lektrico_heap_free_bytes", (), 29732.0),
    Sample("lektrico_energy_joules_total", (), 6_700_028_400.0),
    Sample("lektrico_current_amperes", (("phase", "L1"),), 5.468),
    Sample("lektrico_charger_state", (("state", "C"),), 1.0),
    Sample("lektrico_charger_state", (("state", "A"),), 0.0),
]


def reading(
    device: str = "garage",
    user_labels: Labels = (("site", "home"),),
    up: bool = True,
    samples: list[Sample] | None = None,
) -> Reading:
    if samples is None:
        samples = health(up, None if up else "timeout") + (LIVE if up else [])
    return Reading(
        device=device,
        user_labels=user_labels,
        time=1_700_000_000.0,
        up=up,
        duration=0.125,
        model="1p7k",
        samples=tuple(samples),
        reason=None if up else "timeout",
    )


def parse(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by (sample name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def sample_lines(body: bytes) -> list[str]:
    return [line for line in body.decode().splitlines() if line and not line.startswith("#")]


def names_in(body: bytes) -> set[str]:
    return {line.split("{", 1)[0].split(" ", 1)[0] for line in sample_lines(body)}


def fleet(*readings: Reading) -> Exposition:
    exposition = Exposition()
    for r in readings:
        exposition.publish(r)
    return exposition


# ---- parsing and escaping ------------------------------------------------------------------


def test_rendered_device_parses_with_every_value_and_label() -> None:
    body = fleet(reading()).render()

    parsed = parse(body)

    base = (("device", "garage"), ("site", "home"))
    assert parsed[("lektrico_power_watts", base)] == 1179.57
    assert parsed[("lektrico_current_amperes", tuple(sorted((*base, ("phase", "L1")))))] == 5.468
    assert parsed[("lektrico_energy_joules_total", base)] == 6_700_028_400.0
    assert parsed[("lektrico_charger_state", tuple(sorted((*base, ("state", "C")))))] == 1.0
    assert len(parsed) == len(health()) + len(LIVE)


@pytest.mark.parametrize("tricky", TRICKY)
def test_device_name_is_escaped(tricky: str) -> None:
    body = fleet(reading(device=tricky)).render()

    devices = {dict(labels)["device"] for _, labels in parse(body)}

    assert devices == {tricky}


@pytest.mark.parametrize("tricky", TRICKY)
def test_user_label_value_is_escaped(tricky: str) -> None:
    body = fleet(reading(user_labels=(("site", tricky), ("room", "x")))).render()

    sites = {dict(labels)["site"] for _, labels in parse(body)}

    assert sites == {tricky}


@pytest.mark.parametrize("tricky", TRICKY)
def test_alias_label_is_escaped(tricky: str) -> None:
    samples = [
        Sample("lektrico_up", (), 1.0),
        Sample("lektrico_device_info", info_labels(tricky), 1.0),
    ]
    body = fleet(reading(samples=samples)).render()

    (alias,) = {dict(k)["alias"] for name, k in parse(body) if name == "lektrico_device_info"}

    assert alias == tricky


def test_escape_doubles_backslashes_before_escaping_quotes_and_newlines() -> None:
    assert escape('a\\"b\nc') == 'a\\\\\\"b\\nc'


# ---- value formatting ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.0, "1"), (0.0, "0"), (-0.0, "0"), (29732.0, "29732"), (6_700_028_400.0, "6700028400")],
)
def test_integral_values_are_written_without_a_fraction(value: float, text: str) -> None:
    assert format_value(value) == text


def test_integral_values_render_without_a_fraction_in_the_exposition() -> None:
    body = fleet(reading()).render().decode()

    assert 'lektrico_heap_free_bytes{device="garage",site="home"} 29732\n' in body
    assert 'lektrico_energy_joules_total{device="garage",site="home"} 6700028400\n' in body


def test_int_sample_value_renders_like_a_float() -> None:
    assert format_value(29732) == "29732"


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_finite_values_round_trip(value: float) -> None:
    assert float(format_value(value)) == value


@pytest.mark.parametrize(
    ("value", "text"), [(math.nan, "NaN"), (math.inf, "+Inf"), (-math.inf, "-Inf")]
)
def test_non_finite_values_use_the_exposition_spelling(value: float, text: str) -> None:
    assert format_value(value) == text


# ---- families ------------------------------------------------------------------------------


def test_help_and_type_appear_once_per_family_with_three_devices() -> None:
    body = fleet(reading("a"), reading("b"), reading("c")).render().decode()

    helps = Counter(line.split()[2] for line in body.splitlines() if line.startswith("# HELP "))
    types = Counter(line.split()[2] for line in body.splitlines() if line.startswith("# TYPE "))
    assert set(helps.values()) == {1}
    assert helps == types
    assert set(helps) == names_in(body.encode())


def test_families_are_contiguous_across_devices() -> None:
    body = fleet(reading("a"), reading("b", up=False), reading("c")).render()

    order = [line.split("{", 1)[0] for line in sample_lines(body)]
    runs = [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]
    assert len(runs) == len(set(runs)), runs


def test_each_family_header_comes_right_before_its_samples() -> None:
    body = fleet(reading("a"), reading("b")).render().decode().splitlines()

    for i, line in enumerate(body):
        if line.startswith("# TYPE "):
            name = line.split()[2]
            assert body[i - 1].startswith(f"# HELP {name} ")
            assert body[i + 1].startswith(name + "{")


def test_families_follow_the_catalogue_order() -> None:
    body = fleet(reading("a"), reading("b")).render()

    order = list(dict.fromkeys(line.split("{", 1)[0] for line in sample_lines(body)))
    catalogue_order = [m.name for m in cat.CATALOGUE if m.name in order]
    assert order == catalogue_order


# ---- publishing, removal, compression, probe -----------------------------------------------


def test_device_that_goes_down_loses_its_live_families_but_keeps_up_zero() -> None:
    exposition = fleet(reading("garage"), reading("street"))

    exposition.publish(reading("garage", up=False))
    garage = {name: v for (name, _), v in of_device(exposition.render(), "garage").items()}
    assert garage["lektrico_up"] == 0.0
    assert "lektrico_device_info" in garage
    assert not {s.metric for s in LIVE} & set(garage)


def of_device(body: bytes, device: str) -> dict[Any, float]:
    return {k: v for k, v in parse(body).items() if dict(k[1])["device"] == device}


def test_device_going_down_leaves_other_devices_untouched() -> None:
    exposition = fleet(reading("garage"), reading("street"))
    before = of_device(exposition.render(), "street")

    exposition.publish(reading("garage", up=False))

    assert of_device(exposition.render(), "street") == before


def test_republishing_replaces_the_device_values() -> None:
    exposition = fleet(reading("garage"))
    samples = [*health(), Sample("lektrico_power_watts", (), 7000.0)]

    exposition.publish(reading("garage", samples=samples))
    body = exposition.render().decode()

    assert body.count("lektrico_power_watts{") == 1
    assert 'lektrico_power_watts{device="garage",site="home"} 7000\n' in body


def test_removed_device_disappears_with_families_only_it_had() -> None:
    only_garage = [*health(), Sample("lektrico_temperature_celsius", (), 23.7)]
    exposition = fleet(reading("garage", samples=only_garage), reading("street"))

    exposition.remove("garage")
    body = exposition.render()

    assert {dict(k)["device"] for _, k in parse(body)} == {"street"}
    assert b"lektrico_temperature_celsius" not in body
    assert exposition.devices() == 1


# Samples a device may report: a family of one, a family of two (phases), a value that
# changes type or goes non-finite, and a family that may come in two places of one reading.
POOL = [
    Sample("lektrico_power_watts", (), 1179.57),
    Sample("lektrico_power_watts", (), 1.0),
    Sample("lektrico_current_amperes", (("phase", "L1"),), 5.468),
    Sample("lektrico_current_amperes", (("phase", "L2"),), math.nan),
    Sample("lektrico_current_amperes", (("phase", "L2"),), 0.0),
    Sample("lektrico_charger_state", (("state", "C"),), 1.0),
    Sample("lektrico_charger_state", (("state", "A"),), 0.0),
    Sample("lektrico_temperature_celsius", (), math.inf),
    Sample("lektrico_temperature_celsius", (), 23.7),
]
READINGS = st.builds(
    lambda device, labels, up, picks: reading(
        device, labels, up, [*health(up, None if up else "rpc"), *(POOL[i] for i in picks)]
    ),
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from([(), (("site", "home"),), (("site", "work"),)]),
    st.booleans(),
    st.lists(st.integers(0, len(POOL) - 1), max_size=8),
)


@given(st.lists(st.one_of(READINGS, st.sampled_from(["a", "b", "c"])), max_size=25))
def test_any_publishes_and_removals_give_the_body_of_the_last_readings_alone(
    steps: list[Reading | str],
) -> None:
    """Each poll re-renders only the families whose samples changed; whatever came before,
    the body is the one the devices' last readings give on their own."""
    exposition = Exposition()
    last: dict[str, Reading] = {}
    for step in steps:
        if isinstance(step, str):
            exposition.remove(step)
            last.pop(step, None)
        else:
            exposition.publish(step)
            last[step.device] = step

    assert by_family(exposition.render()) == by_family(fleet(*last.values()).render())
    assert exposition.devices() == len(last)


def by_family(body: bytes) -> list[tuple[str, list[str]]]:
    """Each family's header and its lines, in the body's order; devices in any order (a slot
    freed by a removal is taken by the next new device)."""
    families = body.decode().split("# HELP ")
    return [(f.split("\n", 2)[0], sorted(f.split("\n")[2:])) for f in families if f]


def test_gzip_body_decompresses_to_the_plain_body() -> None:
    exposition = fleet(reading("a"), reading("b"))

    compressed = exposition.render_gzip()

    assert gzip.decompress(compressed) == exposition.render()


def test_gzip_body_with_a_tail_is_one_gzip_member() -> None:
    exposition = fleet(reading("a"), reading("b"))
    tail = b"# TYPE lektrico_devices_up gauge\nlektrico_devices_up 2\n"

    compressed = exposition.render_gzip(tail)

    # One member: decoders that stop after the first member (curl --compressed) see it all.
    decoder = zlib.decompressobj(31)
    assert decoder.decompress(compressed) == exposition.render() + tail
    assert decoder.eof and decoder.unused_data == b""


def test_gzip_body_follows_a_new_publish() -> None:
    exposition = fleet(reading("a"))
    exposition.render_gzip()

    exposition.publish(reading("b"))

    assert gzip.decompress(exposition.render_gzip()) == exposition.render()
    assert b'device="b"' in exposition.render()


def test_plain_body_of_a_large_fleet_is_joined_off_the_loop_as_it_was_asked_for() -> None:
    exposition = fleet(*(reading(f"d{i:04}") for i in range(Exposition.THREAD_FROM + 10)))
    before = exposition.render()
    exposition.publish(reading("d0000", up=False))  # no cached body: the thread joins

    async def scrape_while_a_poll_lands() -> tuple[bytes, ...]:
        scrape = asyncio.ensure_future(exposition.render_async())
        await asyncio.sleep(0)  # the chunks are taken; the join runs in its thread
        exposition.publish(reading("d0001", up=False))
        return await scrape

    parts = asyncio.run(scrape_while_a_poll_lands())

    assert len(parts) > 1  # family by family, never one join of the whole body
    body = b"".join(parts)
    assert body != before and body != exposition.render()
    assert body.count(b'lektrico_up{device="d0000",site="home"} 0') == 1
    assert b'lektrico_up{device="d0001",site="home"} 1' in body


def test_plain_body_of_a_small_fleet_is_the_rendered_one() -> None:
    exposition = fleet(reading("a"), reading("b"))

    assert asyncio.run(exposition.render_async()) == (exposition.render(),)


def test_probe_excludes_the_exporters_own_metrics() -> None:
    samples = [
        *health(reason="timeout"),
        *LIVE,
        Sample("lektrico_values_dropped_total", (("reason", "type"),), 2.0),
    ]

    body = render_probe(reading(samples=samples))

    names = names_in(body)
    assert "lektrico_poll_errors_total" not in names
    assert "lektrico_values_dropped_total" not in names
    assert {"lektrico_up", "lektrico_power_watts"} <= names
    assert parse(body)  # and it parses


def test_metrics_include_the_exporters_own_per_device_metrics() -> None:
    body = fleet(reading(samples=health(reason="timeout"))).render()

    assert "lektrico_poll_errors_total" in names_in(body)


def test_render_device_keeps_only_the_asked_groups() -> None:
    block = render_device(reading(samples=health(reason="rpc")), frozenset({cat.Group.HEALTH}))

    assert set(block) == {
        "lektrico_up",
        "lektrico_poll_duration_seconds",
        "lektrico_last_poll_success_timestamp_seconds",
        "lektrico_device_info",
    }


# ---- promtool on a whole fleet built from the captures -------------------------------------


def capture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CAPTURES / name).read_text())
    return data


def fleet_replies() -> dict[str, tuple[str, dict[str, dict[str, Any]]]]:
    fw147 = capture("1p7k-charger_info.get-fw1.47.json")
    charger_common = {
        "Charger_config.Get": capture("1p7k-charger_config.get-library-docstring.json"),
        "Counters_config.Get": {
            "total_charged_time": 1234,
            "total_charged_sessions": 56,
            "total_charged_energy": 1861.119,
            "reset_counter": 7,
            "last_session_energy": 3514,
        },
        "System_currents.Get": {"cable_current ": 32, "user_current": 16, "em_current ": 6},
        "Active_errors.Get": {"state_machine_e_activated": False, "overtemp": True},
        "Logged_errors.Get": dict.fromkeys(cat.ERROR_FLAGS, False),
        "App_config.Get": {
            "headless": True,
            "charger_alias": 'Gar"age\\',
            "user_power": 7360,
            "charging_schedule_enabled": True,
        },
        "Wifi_status.Get": {
            "connected": True,
            "sta_ip": "192.168.1.20",
            "sta_name": "Home\nNet",
            "rssi": -61,
            "bssid": "aa:bb:cc:dd:ee:ff",
        },
        "EM_status.Get": {"em_offline ": False},
        "Sw_version.Get": {"fw_version": "1.47", "fw_id": "20230109-124642/v1.22-36-g56a3edd"},
        "Dynamic_current.Get": {"dynamic_current": 16, "relay_mode": 0},
        "Charging_schedule.Get": {
            "charging_schedule": [
                {"start_d": 1, "start_h": 0, "start_m": 0, "end_d": 7, "end_h": 23, "end_m": 59}
                | {"current": 16, "lb_mode": 1}
            ]
        },
    }
    meter = capture("em-meter_info-merged-library-mock.json")
    return {
        "garage": (
            "1p7k",
            {
                "Charger_info.Get": fw147,
                "Device_info.Get": {"device_id": "1p7k_500006", "connected_phase": 1},
                **charger_common,
            },
        ),
        "carport": (
            "1p7k",
            {"Charger_info.Get": capture("1p7k-charger_info.get-fw1.51-partial.json")},
        ),
        "barn": (
            "3p22k",
            {
                "Charger_info.Get": {**fw147, "currents": [16.0, 15.8, 16.1]},
                "Device_info.Get": {"device_id": "3p22k_500123"},
                **charger_common,
            },
        ),
        "mains": (
            "3em",
            {"Meter_info.Get": meter, "App_config.Get": capture("em-app_config.get.json")},
        ),
        "sub": ("em", {"Meter_info.Get": meter, "Device_info.Get": {"device_id": "m2w_81001"}}),
        "mystery": ("unknown", {"Charger_info.Get": {**fw147, "extended_charger_state": "X"}}),
    }


def full_fleet() -> Exposition:
    exposition = Exposition()
    for name, (model, replies) in fleet_replies().items():
        normalised = {method: normalise_reply(reply) for method, reply in replies.items()}
        dropped: Counter[str] = Counter()
        samples = [
            Sample("lektrico_up", (), 1.0),
            Sample("lektrico_poll_duration_seconds", (), 0.042),
            Sample("lektrico_last_poll_success_timestamp_seconds", (), 1_700_000_000.25),
            *extract(cat.MODELS[model], normalised, dropped, now=1_700_000_000.25),
            Sample("lektrico_method_supported", (("method", "Charger_info.Get"),), 1.0),
            Sample("lektrico_poll_errors_total", (("reason", "timeout"),), 1.0),
            Sample(
                "lektrico_method_errors_total",
                (("method", "Counters_config.Get"), ("reason", "timeout")),
                1.0,
            ),
        ]
        exposition.publish(reading(name, (("site", 'h"q\\\n'),), samples=samples))
    exposition.publish(reading("offline", up=False))
    return exposition


def test_full_fleet_covers_every_device_family_in_the_catalogue() -> None:
    body = full_fleet().render()

    # Derived families need a history of polls: test_sessions_e2e checks those on /metrics.
    device_families = {
        m.name
        for m in cat.CATALOGUE
        if m.name != "lektrico_values_dropped_total" and not isinstance(m.extract, cat.Derived)
    }
    assert names_in(body) == device_families


def test_promtool_accepts_a_full_fleet_exposition() -> None:
    promtool = shutil.which("promtool") or (
        "/usr/bin/promtool" if os.access("/usr/bin/promtool", os.X_OK) else None
    )
    if promtool is None:
        unavailable("promtool is not installed (install Prometheus to run this check)")
    body = full_fleet().render()

    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )

    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert (result.stdout + result.stderr).strip() == b""
