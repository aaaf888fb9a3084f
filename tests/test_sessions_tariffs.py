"""Tariffs: each energy delta split exactly at period boundaries, midnight, month ends and DST."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from exporter.config.schema import ConfigError, parse_config
from exporter.sessions.ledger import Ledger
from exporter.sessions.tariffs import Tariff, TariffConfig

ZONE = ZoneInfo("Europe/Bucharest")
HOME = {
    "currency": "EUR",
    "timezone": "Europe/Bucharest",
    "periods": [
        {"name": "night", "price": 0.10, "from": "22:00", "to": "07:00"},
        {"name": "weekend", "price": 0.15, "days": ["sat", "sun"]},
        {"name": "day", "price": 0.20},
    ],
}


def local(*args: int) -> float:
    return datetime(*args, tzinfo=ZONE).timestamp()  # type: ignore[misc]


def split(
    tariff: Tariff, wh: float, t0: float, t1: float
) -> dict[tuple[str, str], tuple[float, float]]:
    return {
        (p.month, p.period): (round(p.wh, 9), round(p.cost, 9)) for p in tariff.split(wh, t0, t1)
    }


@pytest.fixture
def home() -> Tariff:
    return Tariff("home", TariffConfig.model_validate(HOME))


def test_a_delta_across_a_period_boundary_is_split_at_it(home: Tariff) -> None:
    # Tuesday 21:30-22:30: half day, half night.
    got = split(home, 1000.0, local(2026, 11, 3, 21, 30), local(2026, 11, 3, 22, 30))

    assert got == {("2026-11", "day"): (500.0, 0.1), ("2026-11", "night"): (500.0, 0.05)}


def test_a_delta_across_a_month_end_belongs_to_both_months(home: Tariff) -> None:
    # Monday 30 November 23:00 → Tuesday 1 December 01:00, all night.
    got = split(home, 2000.0, local(2026, 11, 30, 23, 0), local(2026, 12, 1, 1, 0))

    assert got == {("2026-11", "night"): (1000.0, 0.1), ("2026-12", "night"): (1000.0, 0.1)}


def test_the_weekday_rule_changes_at_midnight(home: Tariff) -> None:
    # Friday 12:00 → Saturday 12:00: day until 22:00, night until 07:00, then weekend.
    got = split(home, 2400.0, local(2026, 11, 6, 12, 0), local(2026, 11, 7, 12, 0))

    assert got == {
        ("2026-11", "day"): (1000.0, 0.2),
        ("2026-11", "night"): (900.0, 0.09),
        ("2026-11", "weekend"): (500.0, 0.075),
    }


def test_the_autumn_dst_change_gives_the_night_its_extra_hour(home: Tariff) -> None:
    # 25 October 2026, 04:00 EEST → 03:00 EET: 00:00-12:00 local lasts 13 hours, 8 of them night.
    # It is a Sunday: the rest is weekend.
    got = split(home, 1300.0, local(2026, 10, 25, 0, 0), local(2026, 10, 25, 12, 0))

    assert got == {("2026-10", "night"): (800.0, 0.08), ("2026-10", "weekend"): (500.0, 0.075)}


def test_the_spring_dst_change_takes_an_hour_from_the_night(home: Tariff) -> None:
    # 29 March 2026, 03:00 EET → 04:00 EEST (a Sunday): 00:00-12:00 local lasts 11 hours.
    got = split(home, 1100.0, local(2026, 3, 29, 0, 0), local(2026, 3, 29, 12, 0))

    assert got == {("2026-03", "night"): (600.0, 0.06), ("2026-03", "weekend"): (500.0, 0.075)}


def test_the_ledger_prices_each_delta_at_the_tariff_in_force() -> None:

    tariff = Tariff("home", TariffConfig.model_validate(HOME))
    ledger = Ledger(15.0, {"home": tariff})
    ledger.choice["c"] = "home"
    device = ledger.device("c")
    from exporter.sessions.ledger import Session

    s = Session(device="c", model="1p7k", labels={}, start=local(2026, 11, 3, 21, 0))
    device._energy(s, 1000.0, local(2026, 11, 3, 21, 30), local(2026, 11, 3, 22, 30), None)
    samples = {(x.metric, x.labels): x.value for x in device.samples()}

    assert samples[
        "lektrico_tariff_energy_joules_total", (("tariff", "home/day"),)
    ] == pytest.approx(1.8e6)
    cost = ("lektrico_energy_cost_total", (("tariff", "home/night"), ("currency", "EUR")))
    assert samples[cost] == pytest.approx(0.05)
    assert s.cost == pytest.approx(0.15)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (
            "tariffs: {table: {h: {currency: E, periods: [{name: a, price: 1, to: '07:00'}]}}}",
            "tariffs.table.h.periods",
        ),
        (
            "tariffs: {table: {h: {currency: E, timezone: Mars, periods: [{name: a, price: 1}]}}}",
            "tariffs.table.h.timezone",
        ),
        (
            "tariffs: {table: {h: {currency: E, periods: [{name: a, price: -1}]}}}",
            "tariffs.table.h.periods[0].price",
        ),
        (
            "tariffs: {table: {h: {currency: E, periods: [{name: a, price: 1, days: [funday]}]}}}",
            "tariffs.table.h.periods[0].days",
        ),
        ("tariffs: {default: nope}", "tariffs.default"),
        (
            "tariffs: {by_label: [{match: {car: company}, tariff: nope}]}",
            "tariffs.by_label[0].tariff",
        ),
        ("devices: [{name: a, host: 127.0.0.1, tariff: nope}]", "devices[0].tariff"),
    ],
)
def test_a_bad_tariff_is_one_line_naming_the_key(body: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(body)

    assert str(caught.value).startswith(key + ":")
    assert "\n" not in str(caught.value)


def test_the_tariff_is_the_devices_own_then_a_label_rule_then_the_default() -> None:
    config = parse_config(
        "tariffs: {default: home, by_label: [{match: {car: company}, tariff: work}], table: "
        "{home: {currency: EUR, periods: [{name: flat, price: 0.2}]},"
        " work: {currency: EUR, periods: [{name: flat, price: 0.3}]}}}"
    )
    rules = config.tariffs
    assert rules is not None

    assert rules.choose("work", {}) == "work"
    assert rules.choose(None, {"car": "company"}) == "work"
    assert rules.choose(None, {"car": "private"}) == "home"
