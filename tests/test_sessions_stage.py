"""The ledger stage between the poller and the outputs: what it adds, what it isolates, what
it keeps when the store cannot be written."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from exporter.config.schema import parse_config
from exporter.device.poller import Poller, PollSettings, Target
from exporter.reading import Reading, Sample
from exporter.sessions.stage import SESSION_FIELDS, SessionsStage, session_line, state_json
from exporter.sessions.store import Batch, Store

T0 = 1_790_000_000.0


def charger(t: float, state: str = "C", wh: float = 0.0, device: str = "garage") -> Reading:
    samples = (
        Sample("lektrico_charger_state", (("state", state),), 1.0),
        Sample("lektrico_session_energy_joules", (), wh * 3600.0),
        Sample("lektrico_session_id", (), 5.0),
        Sample("lektrico_current_limit_reason", (("reason", "install"),), 1.0),
    )
    return Reading(device, (("site", "home"),), t, True, 0.01, "1p7k", samples)


def stage_at(tmp_path: Path) -> SessionsStage:
    return SessionsStage(parse_config(f"state: {{path: '{tmp_path / 'state.db'}'}}"))


async def test_outputs_and_the_device_get_the_staged_reading_and_one_failing_output_stops_none(
    tmp_path: Path,
) -> None:
    stage = stage_at(tmp_path)
    got: list[Reading] = []

    def broken(reading: Reading) -> None:
        raise RuntimeError("output down")

    poller = Poller(PollSettings(), [broken, got.append], stage=stage.apply)
    poller.set_targets([Target("garage", "http://127.0.0.1:9/")])
    st = poller.devices["garage"]
    polled = charger(T0)
    st.reading = polled
    staged = poller.publish(polled)

    [reading] = got
    assert reading is staged is st.reading
    names = {s.metric for s in reading.samples}
    assert "lektrico_sessions_recorded_total" in names
    assert "lektrico_charger_state" in names
    await poller.close()


def test_a_failing_stage_keeps_the_reading_from_no_output(tmp_path: Path) -> None:
    got: list[Reading] = []

    def broken(reading: Reading) -> Reading:
        raise RuntimeError("ledger bug")

    poller = Poller(PollSettings(), [got.append], stage=broken)
    polled = charger(T0)
    assert poller.publish(polled) is polled
    assert got == [polled]


def test_a_device_removed_and_back_keeps_its_counters(tmp_path: Path) -> None:
    stage = stage_at(tmp_path)
    t = T0
    for state in ("C", "C", "A", "A", "A"):
        stage.apply(charger(t, state, wh=(t - T0) / 3.6))
        t += 15.0
    assert stage.ledger.devices["garage"].counters.sessions == 1
    stage.remove("garage")
    back = stage.apply(charger(t, "A"))

    recorded = [s.value for s in back.samples if s.metric == "lektrico_sessions_recorded_total"]
    assert recorded == [1.0]


def test_a_device_state_is_written_as_json_writes_it(tmp_path: Path) -> None:
    stage = stage_at(tmp_path)
    t = T0
    for state in ("A", "C", "C", "C", "B"):  # mid-session: a session, counters, last values
        stage.apply(charger(t, state, wh=(t - T0) / 3.6 + 0.123456789))
        t += 15.0
    state_of = stage.ledger.devices["garage"].state()

    assert state_of["session"] is not None
    assert json.loads(state_json(state_of)) == json.loads(json.dumps(state_of))
    beyond_64_bits = {"closed_sid": 2**70, "t": 0.1}
    assert state_json(beyond_64_bits) == json.dumps(beyond_64_bits)


def test_a_staged_reading_is_the_reading_with_the_derived_samples(tmp_path: Path) -> None:
    stage = stage_at(tmp_path)
    reading = charger(T0)

    staged = stage.apply(reading)

    assert staged.samples[: len(reading.samples)] == reading.samples
    assert len(staged.samples) > len(reading.samples)
    assert staged == Reading(
        reading.device,
        reading.user_labels,
        reading.time,
        reading.up,
        reading.duration,
        reading.model,
        staged.samples,
        reading.reason,
        reading.error,
    )


async def test_a_failed_store_write_keeps_the_changes_for_the_next_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = stage_at(tmp_path)
    await stage.start()
    calls: list[int] = []
    real = Store.write

    def flaky(self: Store, batch: Batch) -> None:
        calls.append(len(batch.states))
        if len(calls) == 1:
            raise OSError("disk full")
        real(self, batch)

    monkeypatch.setattr(Store, "write", flaky)
    stage.apply(charger(T0, "C", wh=0.0))
    for _ in range(50):
        if len(calls) >= 2:
            break
        await asyncio.sleep(0.1)
    await stage.stop()
    store = Store(str(tmp_path / "state.db"))
    store.open()

    assert calls[:2] == [1, 1]
    assert [name for name, _ in store.states()] == ["garage"]
    assert [s.open for s in store.sessions()] == [True]


def test_a_session_point_is_line_protocol_at_the_session_start() -> None:
    from exporter.sessions.ledger import Session

    s = Session(
        device="gar age",
        model="1p7k",
        labels={"site": "home"},
        start=T0 + 0.25,
        session_id=9,
        end=T0 + 3600,
        open=False,
        energy_wh=7000.0,
        currency="EUR",
        tariff="home",
        anomalies={"gap": 1},
    )

    line = session_line(s, precision="ms").decode()

    assert line.startswith("lektrico_session,device=gar\\ age,model=1p7k,site=home ")
    assert "energy_joules=25200000.0" in line
    assert "session_id=9i" in line and 'anomalies="gap"' in line
    assert line.endswith(f" {int(T0 * 1000) + 250}\n")
    fields = line.rsplit(" ", 1)[0].split("site=home ", 1)[1]
    assert {f.split("=", 1)[0] for f in fields.split(",")} == set(SESSION_FIELDS)
