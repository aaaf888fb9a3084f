"""The monthly statement and the session endpoints, on sessions across a month end and a DST
change: the sessions command, /api/sessions(.csv) and /sessions from one store."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from exporter.app import Exporter
from exporter.cli import main as cli_main
from exporter.config.schema import parse_config
from exporter.reading import Reading, Sample
from exporter.sessions.ledger import Ledger, Session
from exporter.sessions.store import Batch, Store, session_row
from exporter.sessions.tariffs import build_tariffs
from harness.processes import free_port
from tests.conftest import fetch

ZONE = ZoneInfo("Europe/Bucharest")
TARIFFS = (
    "tariffs: {default: home, table: {home: {currency: EUR, timezone: Europe/Bucharest,"
    " periods: [{name: night, price: 0.1, from: '22:00', to: '07:00'}, {name: day, price: 0.2}]}}}"
)
STEP = 15.0


def local(*args: int) -> float:
    return datetime(*args, tzinfo=ZONE).timestamp()  # type: ignore[misc]


def charger(t: float, state: str, sid: int, wh: float, total: float, owner: str) -> Reading:
    samples = (
        Sample("lektrico_charger_state", (("state", state),), 1.0),
        Sample("lektrico_power_watts", (), 1000.0 if state == "C" else 0.0),
        Sample("lektrico_session_energy_joules", (), wh * 3600.0),
        Sample("lektrico_session_id", (), float(sid)),
        Sample("lektrico_energy_joules_total", (), total * 3600.0),
    )
    return Reading("garage", (("owner", owner),), t, True, 0.01, "1p7k", samples)


def charge(ledger: Ledger, start: float, end: float, sid: int, owner: str) -> Session:
    """1 kW from start to end, polled every STEP seconds, then unplugged."""
    t, total = start, 1_000_000.0
    while t <= end:
        ledger.feed(charger(t, "C", sid, (t - start) / 3.6, total + (t - start) / 3.6, owner))
        t += STEP
    energy = (t - STEP - start) / 3.6
    for _ in range(3):
        result = ledger.feed(charger(t, "A", sid, energy, total + energy, owner))
        t += STEP
    [done] = result.finished
    return done


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    config = parse_config(TARIFFS)
    ledger = Ledger(STEP, build_tariffs(config.tariffs))
    ledger.choice["garage"] = "home"
    across_dst = charge(ledger, local(2026, 10, 25, 0, 0), local(2026, 10, 25, 12, 0), 6, "<b>x")
    across_month = charge(ledger, local(2026, 10, 31, 22, 0), local(2026, 11, 1, 2, 0), 7, "ana")
    path = tmp_path / "state.db"
    store = Store(str(path))
    store.open()
    store.write(Batch([], [session_row(across_dst), session_row(across_month)]))
    store.close()
    return path


def sessions_command(tmp_path: Path, db: Path, *args: str) -> tuple[int, str]:
    config = tmp_path / "c.yaml"
    config.write_text(f"state: {{path: '{db}'}}\n{TARIFFS}\n")
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(["sessions", "--config", str(config), *args])
    return code, out.getvalue()


def test_a_session_across_a_month_end_is_in_both_statements_with_its_part(
    tmp_path: Path, store_path: Path
) -> None:
    code, oct_text = sessions_command(
        tmp_path, store_path, "--month", "2026-10", "--format", "json"
    )
    _, nov_text = sessions_command(tmp_path, store_path, "--month", "2026-11", "--format", "json")
    october, november = json.loads(oct_text), json.loads(nov_text)

    assert code == 0
    [oct_group] = october["groups"]
    by_period = {t["period"]: (t["energy_kwh"], t["cost"]) for t in oct_group["by_tariff"]}
    # 25 Oct: 00:00-07:00 local is 8 hours (the DST change repeats one), then 5 hours of day;
    # 31 Oct: 22:00-24:00 night.
    assert by_period == {
        "night": (pytest.approx(10.0), pytest.approx(1.0)),
        "day": (pytest.approx(5.0), pytest.approx(1.0)),
    }
    assert oct_group["sessions"] == 2
    [nov_group] = november["groups"]
    assert nov_group["sessions"] == 1
    assert nov_group["energy_kwh"] == pytest.approx(2.0, abs=1e-9)
    [s] = nov_group["sessions_list"]
    assert s["month_energy_wh"] + 2000.0 == pytest.approx(s["energy_wh"], abs=1e-3)


def test_the_statement_groups_by_a_label_and_prints_as_table_and_csv(
    tmp_path: Path, store_path: Path
) -> None:
    _, table = sessions_command(tmp_path, store_path, "--month", "2026-10", "--group-by", "owner")
    _, text = sessions_command(
        tmp_path, store_path, "--month", "2026-10", "--group-by", "owner", "--format", "csv"
    )
    rows = list(csv.DictReader(io.StringIO(text)))

    assert "owner ana: 1 sessions, 2.000 kWh" in table
    assert "owner <b>x: 1 sessions, 13.000 kWh" in table
    assert sorted((r["owner"], round(float(r["energy_wh"]))) for r in rows) == [
        ("<b>x", 13000),
        ("ana", 2000),
    ]


def test_a_month_that_is_not_one_is_refused(tmp_path: Path, store_path: Path) -> None:
    code, _ = sessions_command(tmp_path, store_path, "--month", "November")

    assert code == 2


@pytest.fixture
async def exporter(store_path: Path) -> AsyncIterator[str]:
    config = parse_config(f"listen: 127.0.0.1:{free_port()}\nstate: {{path: '{store_path}'}}\n")
    exp = Exporter(config)
    await exp.start()
    yield f"http://127.0.0.1:{exp.port}"
    await exp.stop()


async def test_api_sessions_filters_by_device_time_and_label(exporter: str) -> None:
    _, everything = await fetch(f"{exporter}/api/sessions")
    _, after = await fetch(f"{exporter}/api/sessions?from=2026-10-30T00:00:00Z")
    _, before = await fetch(f"{exporter}/api/sessions?to=2026-10-26")
    _, ana = await fetch(f"{exporter}/api/sessions?owner=ana&device=garage")
    _, nobody = await fetch(f"{exporter}/api/sessions?device=other")
    status, bad = await fetch(f"{exporter}/api/sessions?from=yesterday")

    def ids(body: str) -> list[int]:
        return [s["session_id"] for s in json.loads(body)["sessions"]]

    assert ids(everything) == [6, 7]
    assert ids(after) == [7]
    assert ids(before) == [6]
    assert ids(ana) == [7]
    assert ids(nobody) == []
    assert status == 400 and "from" in bad


async def test_api_sessions_csv_has_the_documented_columns(exporter: str) -> None:
    status, text = await fetch(f"{exporter}/api/sessions.csv")
    rows = list(csv.DictReader(io.StringIO(text)))

    assert status == 200
    assert list(rows[0])[:8] == [
        "device",
        "session_id",
        "open",
        "start",
        "end",
        "start_unix",
        "end_unix",
        "energy_wh",
    ]
    assert rows[1]["start"] == "2026-10-31T20:00:00Z"
    assert rows[1]["parts"].startswith("2026-10/night=2000.000/0.200000;2026-11/night=")
    assert rows[1]["label_owner"] == "ana" and rows[1]["open"] == "false"


async def test_sessions_page_is_the_statement_escaped_and_self_contained(exporter: str) -> None:
    status, page = await fetch(f"{exporter}/sessions?month=2026-10&group_by=owner")

    assert status == 200
    assert "<b>x" not in page and "&lt;b&gt;x" in page
    assert "13.000" in page and "2.000" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
