"""The session ledger against the simulator's ground truth, and each anomaly rule on its own.

The simulated chargers run on a hand-moved clock (days of sessions in seconds); each poll's
replies go through the exporter's own normalisation and extraction into a Reading, exactly what
the poller hands the ledger.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from exporter.catalogue import table as cat
from exporter.device.normalise import extract, normalise_reply
from exporter.reading import Reading, Sample
from exporter.sessions.ledger import ANOMALIES, Ledger, Session, trapezoid
from exporter.simulator.device import Anomalies, Charger, ManualClock, make_device
from harness.servers import unavailable

INTERVAL = 15.0
EPOCH = 1_790_000_000.0  # unix time of clock 0


@dataclass
class Sim:
    """One simulated charger polled by hand, with faults a test injects into its replies."""

    charger: Charger
    clock: ManualClock
    model: cat.Model
    overrides: dict[str, Any] = field(default_factory=dict)  # Charger_info keys replaced
    energy_shift: float = 0.0  # Wh taken off session_energy (a firmware reset of it)
    methods: frozenset[str] | None = None  # None: every method the exporter polls

    def reading(self, labels: tuple[tuple[str, str], ...] = ()) -> Reading:
        if self.charger.offline:  # rebooting: the poll fails, as it would over a socket
            return Reading(
                self.charger.name,
                labels,
                EPOCH + self.clock.now(),
                False,
                0.01,
                self.model.name,
                (),
            )
        replies = {}
        for method in cat.methods_for(cat.CHARGER):
            if method.name in self.charger.methods and (
                self.methods is None or method.name in self.methods
            ):
                raw = dict(self.charger.read(method.name))
                if method.name == "Charger_info.Get":
                    raw.update(self.overrides)
                    if self.energy_shift:
                        raw["session_energy"] = round(raw["session_energy"] - self.energy_shift, 2)
                replies[method.name] = normalise_reply(raw, method.name)
        samples = extract(self.model, replies, Counter())
        return Reading(
            device=self.charger.name,
            user_labels=labels,
            time=EPOCH + self.clock.now(),
            up=True,
            duration=0.01,
            model=self.model.name,
            samples=tuple(samples),
        )


def make_sim(name: str, profile: str, seed: int, anomalies: Anomalies | None = None) -> Sim:
    clock = ManualClock()
    charger = make_device(name, profile, seed=seed, clock=clock, anomalies=anomalies)
    assert isinstance(charger, Charger)
    # Poll at whole device seconds: the device's own time is whole seconds, so the truth's
    # boundaries are exactly where a poll can first see them.
    clock.advance(math.ceil(charger._offset) - charger._offset)
    model = cat.MODELS["3p22k" if profile == "3p22k" else "1p7k"]
    return Sim(charger, clock, model)


def truth(sim: Sim, since: float, until: float) -> list[dict[str, Any]]:
    """Sessions the simulator generated wholly between two clock times, in unix time."""
    return [
        {**s, "start": EPOCH + s["start"], "end": EPOCH + s["end"]}
        for s in sim.charger.generated
        if s["end"] is not None and since <= s["start"] and s["end"] <= until
    ]


def run(
    sim: Sim, ledger: Ledger, seconds: float, each: Callable[[int], None] | None = None
) -> list[Session]:
    finished: list[Session] = []
    for i in range(int(seconds / INTERVAL)):
        if each is not None:
            each(i)
        finished.extend(ledger.feed(sim.reading()).finished)
        sim.clock.advance(INTERVAL)
    return finished


def check_against_truth(finished: list[Session], expected: list[dict[str, Any]]) -> None:
    by_start = {round(s.start): s for s in finished}
    assert len(by_start) == len(finished), "two sessions started at one poll"
    for want in expected:
        got = [s for s in finished if want["start"] <= s.start < want["start"] + INTERVAL]
        assert len(got) == 1, f"session {want['session_id']}: recorded {len(got)} times"
        s = got[0]
        assert s.session_id == want["session_id"]
        assert abs(s.energy_wh - want["wh"]) <= 1.0, (s.energy_wh, want["wh"])
        assert s.end is not None
        assert want["end"] <= s.end < want["end"] + INTERVAL
        assert not s.open
        # Every anomaly the simulator injected is flagged, and nothing else.
        assert s.anomalies == want["anomalies"], (want["session_id"], want)
    matched = {
        round(s.start)
        for s in finished
        for w in expected
        if w["start"] <= s.start < w["start"] + INTERVAL
    }
    extra = [s for s in finished if round(s.start) not in matched]
    # Only the session already under way when polling began, whose start nobody saw.
    assert len(extra) <= 1


@pytest.mark.parametrize("profile", ["1p7k", "3p22k", "1p7k-old"])
def test_ledger_equals_simulator_truth_over_days_of_sessions(profile: str) -> None:
    sim = make_sim("garage", profile, seed=7)
    ledger = Ledger(INTERVAL)
    start = sim.clock.now()
    finished = run(sim, ledger, 4 * 86400)
    expected = truth(sim, start, sim.clock.now() - 4 * INTERVAL)

    assert len(expected) >= 25
    check_against_truth(finished, expected)
    flagged = Counter[str]()
    for s in finished:
        flagged.update(s.anomalies)
    assert ledger.devices["garage"].counters.anomalies == dict(flagged)
    assert ledger.devices["garage"].counters.sessions == len(finished)


# The methods whose replies carry what the ledger reads: polling only them keeps days of
# sessions a matter of seconds.
SESSION_METHODS = frozenset({"Charger_info.Get", "Counters_config.Get"})
# Many of each anomaly, with durations tuned to this poll interval.
OFTEN = Anomalies(flap=0.4, energy_reset=0.4, reboot=0.4, poll_interval=INTERVAL)


@pytest.mark.parametrize(("profile", "seed"), [("1p7k", 31), ("3p22k", 32), ("1p7k-old", 33)])
def test_ledger_flags_every_anomaly_the_simulator_injected_and_nothing_else(
    profile: str, seed: int
) -> None:
    sim = make_sim("odd", profile, seed=seed, anomalies=OFTEN)
    sim.methods = SESSION_METHODS
    ledger = Ledger(INTERVAL)
    start = sim.clock.now()
    finished = run(sim, ledger, 2.5 * 86400)
    expected = truth(sim, start, sim.clock.now() - 4 * INTERVAL)

    assert len(expected) >= 30
    injected = Counter[str]()
    for want in expected:
        injected.update(want["anomalies"])
    assert min(injected[k] for k in ("state_flap", "energy_reset", "gap")) >= 3, injected
    # Short reboots too, which lose at most one poll and are nothing to flag.
    assert any(w["reboots"] > w["anomalies"].get("gap", 0) for w in expected)
    # Each session once, its energy within 1 Wh, its boundaries within a poll interval, and
    # exactly the anomalies injected into it.
    check_against_truth(finished, expected)


def test_ledger_without_session_id_still_splits_sessions_by_state() -> None:
    sim = make_sim("old", "1p7k-partial", seed=3)
    ledger = Ledger(INTERVAL)
    start = sim.clock.now()
    finished = run(sim, ledger, 2 * 86400)
    expected = truth(sim, start, sim.clock.now() - 4 * INTERVAL)

    assert len(expected) >= 10
    for want in expected:
        got = [s for s in finished if want["start"] <= s.start < want["start"] + INTERVAL]
        assert len(got) == 1
        assert abs(got[0].energy_wh - want["wh"]) <= 1.0


# ---- injected anomalies, each flagged, nothing else -------------------------------------


def sessions_until(sim: Sim, ledger: Ledger, count: int) -> Iterator[tuple[int, Reading]]:
    """Polls until `count` sessions finished, yielding (poll, reading) before feeding each."""
    done = 0
    i = 0
    while done < count:
        reading = sim.reading()
        yield i, reading
        done += len(ledger.feed(reading).finished)
        sim.clock.advance(INTERVAL)
        i += 1
        assert i < 200_000


def state_of(sim: Sim) -> str:
    return sim.charger.extended_state


def skip_to_charging(sim: Sim, ledger: Ledger) -> None:
    for _ in range(20_000):
        ledger.feed(sim.reading())
        sim.clock.advance(INTERVAL)
        if state_of(sim) == "C" and ledger.devices[sim.charger.name].session is not None:
            return
    raise AssertionError("never charging")


def finish_one(sim: Sim, ledger: Ledger) -> Session:
    for _ in range(20_000):
        result = ledger.feed(sim.reading())
        sim.clock.advance(INTERVAL)
        if result.finished:
            assert len(result.finished) == 1
            return result.finished[0]
    raise AssertionError("never finished")


def test_end_of_charge_flap_does_not_split_the_session_and_is_flagged() -> None:
    sim = make_sim("flappy", "1p7k", seed=11)
    ledger = Ledger(INTERVAL)
    skip_to_charging(sim, ledger)
    first = ledger.devices["flappy"].session
    assert first is not None
    sim.overrides = {"charger_state": "A", "extended_charger_state": "A"}
    for _ in range(2):  # two polls of A, same session_id
        assert ledger.feed(sim.reading()).finished == []
        sim.clock.advance(INTERVAL)
    sim.overrides = {}
    done = finish_one(sim, ledger)

    assert done is first
    assert done.anomalies == {"state_flap": 1}
    assert ledger.devices["flappy"].counters.anomalies == {"state_flap": 1}


def test_three_idle_polls_end_the_session_at_the_first() -> None:
    sim = make_sim("short", "1p7k", seed=11)
    ledger = Ledger(INTERVAL)
    skip_to_charging(sim, ledger)
    sim.overrides = {"charger_state": "A", "extended_charger_state": "A"}
    first_idle = EPOCH + sim.clock.now()
    results = []
    for _ in range(3):
        results.append(ledger.feed(sim.reading()).finished)
        sim.clock.advance(INTERVAL)

    assert [len(r) for r in results] == [0, 0, 1]
    assert results[2][0].end == first_idle
    assert results[2][0].anomalies == {}


def test_session_energy_reset_is_flagged_and_the_segments_are_summed() -> None:
    sim = make_sim("reset", "1p7k", seed=5)
    ledger = Ledger(INTERVAL)
    skip_to_charging(sim, ledger)
    for _ in range(4):
        ledger.feed(sim.reading())
        sim.clock.advance(INTERVAL)
    reset_at = sim.charger.read("Charger_info.Get")["session_energy"]
    sim.energy_shift = reset_at  # the device's figure starts again from 0 here
    start = ledger.devices["reset"].session
    assert start is not None
    done = finish_one(sim, ledger)
    want = next(s for s in sim.charger.generated if s["session_id"] == done.session_id)

    assert abs(done.energy_wh - want["wh"]) <= 1.0
    # The lifetime counter still agrees; last_session_energy is the device's (unshifted).
    assert done.anomalies == {"energy_reset": 1}


def test_missing_polls_inside_a_session_are_a_gap() -> None:
    sim = make_sim("gappy", "3p22k", seed=2)
    ledger = Ledger(INTERVAL)
    skip_to_charging(sim, ledger)
    sim.clock.advance(4 * INTERVAL + 1)  # four polls missed
    done = finish_one(sim, ledger)
    want = next(s for s in sim.charger.generated if s["session_id"] == done.session_id)

    assert done.anomalies == {"gap": 1}
    assert abs(done.energy_wh - want["wh"]) <= 1.0


def test_restart_during_a_session_resumes_it() -> None:
    sim = make_sim("resumed", "1p7k", seed=9)
    ledger = Ledger(INTERVAL)
    skip_to_charging(sim, ledger)
    saved = json.loads(json.dumps(ledger.devices["resumed"].state()))
    again = Ledger(INTERVAL)
    again.restore([("resumed", saved)])
    done = finish_one(sim, again)
    want = next(s for s in sim.charger.generated if s["session_id"] == done.session_id)

    assert done.anomalies == {"restart": 1}
    assert abs(done.energy_wh - want["wh"]) <= 1.0
    assert again.devices["resumed"].counters.sessions == saved["counters"]["sessions"] + 1


def test_session_that_ended_while_the_exporter_was_down_is_closed_with_a_gap() -> None:
    sim = make_sim("away", "1p7k", seed=9)
    ledger = Ledger(INTERVAL)
    skip_to_charging(sim, ledger)
    sid = ledger.devices["away"].session.session_id  # type: ignore[union-attr]
    saved = json.loads(json.dumps(ledger.devices["away"].state()))
    while sim.charger.read("Charger_info.Get")["session_id"] == sid:
        sim.clock.advance(INTERVAL)  # the exporter is down meanwhile
    again = Ledger(INTERVAL)
    again.restore([("away", saved)])
    result = again.feed(sim.reading())
    want = next(s for s in sim.charger.generated if s["session_id"] == sid)

    assert len(result.finished) == 1
    done = result.finished[0]
    assert done.session_id == sid
    assert set(done.anomalies) == {"gap", "restart"}
    assert abs(done.energy_wh - want["wh"]) <= 1.0


def test_a_lifetime_counter_that_disagrees_is_a_counter_mismatch() -> None:
    sim = make_sim("odd", "1p7k", seed=4)
    ledger = Ledger(INTERVAL)
    skip_to_charging(sim, ledger)
    sim.overrides = {"total_charged_energy": 1.0}  # kWh, far below what it was
    done = finish_one(sim, ledger)

    assert "counter_mismatch" in done.anomalies


# ---- derived counters ---------------------------------------------------------------------


def value(samples: Sequence[Sample], metric: str, **labels: str) -> float:
    found = [s.value for s in samples if s.metric == metric and dict(s.labels) == labels]
    assert len(found) == 1, (metric, labels)
    return found[0]


def test_limit_reason_time_and_energy_add_up_to_the_sessions() -> None:
    sim = make_sim("limits", "3p22k", seed=21)
    ledger = Ledger(INTERVAL)
    finished = run(sim, ledger, 86400)
    samples = ledger.devices["limits"].samples()
    names = {s.metric for s in samples}

    assert {"lektrico_charging_limited_seconds_total", "lektrico_sessions_recorded_total"} <= names
    limited = sum(
        s.value for s in samples if s.metric == "lektrico_charging_limited_energy_joules_total"
    )
    in_sessions = sum(s.energy_wh for s in finished) + sum(
        s.energy_wh for s in ledger.open_sessions()
    )
    assert limited / 3600 == pytest.approx(in_sessions, abs=1.0)
    kinds = {
        dict(s.labels)["kind"] for s in samples if s.metric == "lektrico_session_anomalies_total"
    }
    assert kinds == set(ANOMALIES)
    assert value(samples, "lektrico_sessions_recorded_total") == len(finished)


def meter_reading(t: float, powers: tuple[float, ...]) -> Reading:
    samples = tuple(
        Sample("lektrico_meter_power_watts", (("phase", p),), w)
        for p, w in zip(("L1", "L2", "L3"), powers, strict=False)
    )
    return Reading("m", (), t, True, 0.01, "3em", samples)


def test_meter_energy_is_integrated_by_trapezoid_and_gaps_are_counted_not_integrated() -> None:
    ledger = Ledger(INTERVAL)
    for i in range(241):  # an hour at 1 kW import on L1, 500 W export on L2
        ledger.feed(meter_reading(EPOCH + i * INTERVAL, (1000.0, -500.0, 0.0)))
    ledger.feed(meter_reading(EPOCH + 3600 + 3600, (1000.0, -500.0, 0.0)))  # an hour unpolled
    samples = ledger.devices["m"].samples()

    joules = "lektrico_meter_energy_joules_total"
    assert value(samples, joules, phase="L1", direction="import") == pytest.approx(3.6e6)
    assert value(samples, joules, phase="L2", direction="export") == pytest.approx(1.8e6)
    assert value(samples, joules, phase="L2", direction="import") == 0.0
    assert value(samples, "lektrico_meter_energy_gap_seconds_total") == 3600.0


def test_trapezoid_splits_a_sign_change_into_import_and_export() -> None:
    imp, exp = trapezoid(1000.0, -1000.0, 10.0)

    assert imp == pytest.approx(2500.0)
    assert exp == pytest.approx(2500.0)


# ---- the contract --------------------------------------------------------------------------

PLANNED = Path(__file__).resolve().parents[2] / "shared" / "METRICS-planned.md"


def derived_contract() -> list[tuple[str, str, tuple[str, ...]]]:
    if not PLANNED.exists():
        unavailable(f"{PLANNED} is not beside this checkout")
    text = PLANNED.read_text().split("## Derived by the exporter", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in text.splitlines():
        if line.startswith("| lektrico_"):
            name, typ, labels = (c.strip() for c in line.strip().strip("|").split("|")[:3])
            rows.append((name, typ, tuple(label.strip() for label in labels.split(","))))
    return rows


def test_derived_rows_are_the_planned_contracts_names_types_and_labels() -> None:
    contract = derived_contract()
    derived = [m for m in cat.CATALOGUE if isinstance(m.extract, cat.Derived)]

    assert len(contract) == 8
    assert {(m.name, m.prom_type, ("device", *m.labels)) for m in derived} == set(contract)
    assert all(m.group is cat.Group.EXPORTER for m in derived)


def test_derived_samples_of_two_devices_share_their_label_tuples() -> None:
    # Each device's derived samples stay alive with its last reading: shared labels keep
    # their memory to one set for the fleet.
    ledger = Ledger(INTERVAL)
    first, second = (
        ledger.feed(Reading(name, (), EPOCH, True, 0.01, "1p7k", ())).samples
        for name in ("one", "two")
    )
    assert [s.labels for s in first] == [s.labels for s in second]
    assert all(a.labels is b.labels for a, b in zip(first, second, strict=True))


def test_derived_samples_are_the_last_ones_again_while_their_values_stay() -> None:
    ledger = Ledger(INTERVAL)
    first = ledger.feed(meter_reading(EPOCH, (0.0, 0.0, 0.0))).samples
    again = ledger.feed(meter_reading(EPOCH + INTERVAL, (0.0, 0.0, 0.0))).samples
    moved = ledger.feed(meter_reading(EPOCH + 2 * INTERVAL, (1000.0, 0.0, 0.0))).samples

    assert again is first  # nothing moved: not one new object
    changed = [new for old, new in zip(first, moved, strict=True) if new is not old]
    [l1_import] = changed  # the one value that moved is the one new sample
    assert l1_import.labels == (("phase", "L1"), ("direction", "import"))
    assert l1_import.value == pytest.approx(1000.0 / 2 * INTERVAL)
