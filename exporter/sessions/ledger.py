"""The session ledger: charging sessions and derived counters from successive Readings.

Pure: no I/O and no clock of its own (a reading's time is the clock), so a test drives it with
readings it makes up. One `DeviceLedger` per device holds everything the exporter derives for it,
as plain data that `state()` / `restore()` turn into JSON and back for the store.

A charger's session starts when its state leaves A (A, OTA and LOCKED count as idle) or its
`session_id` changes, and ends when the state is back to idle or the `session_id` changes:

- idle for one or two polls with the same `session_id`, then not idle again, is the end-of-charge
  flap: the session goes on (`state_flap`); idle for a third poll ends it at the first idle poll;
- `session_energy` falling inside a session is a reset (`energy_reset`): the energy is the sum of
  the segments (each poll adds the increase, or after a drop the new value);
- polls missing for more than 3 intervals inside a session are a `gap`; a session the device
  ended meanwhile is closed then, from Counters_config's `last_session_energy` where it is known;
- on a restart the stored state is restored, and a session still open goes on (`restart`);
- at the end the energy is checked against the lifetime counter's delta, and later against
  `last_session_energy` once the device reports it (`counter_mismatch` beyond their resolution).

A meter's import and export energy per phase is integrated from its power by trapezoid between
polls; spans over 3 intervals are not integrated but counted in `gap_seconds`.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from exporter.catalogue import table as cat
from exporter.reading import (
    Labels,
    Reading,
    Sample,
    label_pair,
    layout_of,
    samples_of,
    shared_sample,
)

from .tariffs import NO_TARIFF, Tariff

IDLE = frozenset({"A", "OTA", "LOCKED"})
ANOMALIES = ("energy_reset", "state_flap", "gap", "counter_mismatch", "restart")
FLAP_POLLS = 2  # idle polls that may still be a flap; the next one ends the session
GAP_INTERVALS = 3.0
PHASE_AMPS = 1.0  # a phase carrying more than this while charging counts as used
WH = 3600.0  # joules


@dataclass
class Session:
    """One charging session, as stored and served (field names are the API's)."""

    device: str
    model: str
    labels: dict[str, str]
    start: float
    session_id: int | None = None
    end: float | None = None
    open: bool = True
    energy_wh: float = 0.0
    charging_seconds: float = 0.0
    connected_seconds: float = 0.0
    peak_power_watts: float = 0.0
    phases: int = 0
    total_start_wh: float | None = None
    total_end_wh: float | None = None
    tariff: str = ""
    currency: str = ""
    cost: float = 0.0
    anomalies: dict[str, int] = field(default_factory=dict)
    limits: dict[str, list[float]] = field(default_factory=dict)  # reason → [seconds, Wh]
    parts: list[list[Any]] = field(default_factory=list)  # [month, period, Wh, cost]
    last_seen: float = 0.0

    def note(self, kind: str) -> None:
        self.anomalies[kind] = self.anomalies.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict that shares this session's inner dicts and lists: serialise it
        at once (json.dumps), before the session changes."""
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Session:
        return cls(**data)


@dataclass(slots=True)
class Observed:
    """What a ledger reads from one up reading of a charger (each device keeps its last)."""

    t: float
    state: str | None = None
    session_id: int | None = None
    energy_wh: float | None = None
    total_wh: float | None = None
    last_session_wh: float | None = None
    power: float | None = None
    reason: str | None = None
    phases_used: int = 0


def observe(reading: Reading) -> Observed:
    obs = Observed(reading.time)
    samples = reading.samples
    layout = layout_of(samples)  # the few metrics observed, not a loop over every sample

    def of(metric: str) -> tuple[Sample, ...]:
        return samples_of(samples, layout, metric)

    for _, labels, value in of("lektrico_charger_state"):
        if value == 1.0 and labels:
            obs.state = labels[0][1]
    for _, labels, value in of("lektrico_current_limit_reason"):
        if value == 1.0 and labels:
            obs.reason = labels[0][1]
    for s in of("lektrico_session_id"):
        obs.session_id = int(s.value)
    for s in of("lektrico_session_energy_joules"):
        obs.energy_wh = s.value / WH
    for s in of("lektrico_energy_joules_total"):
        obs.total_wh = s.value / WH
    for s in of("lektrico_last_session_energy_joules"):
        obs.last_session_wh = s.value / WH
    for s in of("lektrico_power_watts"):
        obs.power = s.value
    amps = sum(1 for s in of("lektrico_current_amperes") if abs(s.value) > PHASE_AMPS)
    obs.phases_used = amps
    return obs


@dataclass
class Counters:
    """The derived counters of one device (METRICS-planned.md, "Derived by the exporter")."""

    sessions: int = 0
    anomalies: dict[str, int] = field(default_factory=dict)
    limited_seconds: dict[str, float] = field(default_factory=dict)
    limited_wh: dict[str, float] = field(default_factory=dict)
    tariff_wh: dict[str, float] = field(default_factory=dict)  # "tariff/period" → Wh
    cost: dict[str, list[Any]] = field(default_factory=dict)  # "tariff/period" → [currency, cost]
    meter_wh: dict[str, float] = field(default_factory=dict)  # "L1/import" → Wh
    meter_gap_seconds: float = 0.0


def _add(d: dict[str, float], key: str, value: float) -> None:
    d[key] = d.get(key, 0.0) + value


@dataclass(slots=True)
class Result:
    """What one reading changed: the samples to add, sessions finished and sessions updated."""

    samples: tuple[Sample, ...]
    finished: list[Session] = field(default_factory=list)
    changed: list[Session] = field(default_factory=list)


class DeviceLedger:
    __slots__ = (
        "_derived",
        "_zeroed",
        "check",
        "check_lse",
        "closed_energy",
        "closed_sid",
        "counters",
        "device",
        "idle_polls",
        "idle_since",
        "interval",
        "kind",
        "last",
        "meter_p",
        "meter_t",
        "restored",
        "session",
        "tariff",
    )

    def __init__(
        self, device: str, interval: float, tariff: Tariff = NO_TARIFF, kind: str = cat.CHARGER
    ) -> None:
        self.device = device
        self.interval = interval
        self.tariff = tariff
        self.kind = kind
        self.counters = Counters()
        self.session: Session | None = None
        self.last: Observed | None = None
        self.idle_polls = 0
        self.idle_since: float | None = None
        self.closed_sid: int | None = None
        self.closed_energy: float | None = None
        self.check: Session | None = None  # finished, waiting for last_session_energy
        self.check_lse: float | None = None  # the value last_session_energy had at its end
        self.meter_t: float | None = None
        self.meter_p: dict[str, float] = {}
        self.restored = False
        self._zeroed = ""  # the tariff whose period series exist
        self._derived: tuple[Sample, ...] = ()  # the last samples(), reused while unchanged

    # ---- persistence ------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything to restore this ledger, sharing its live objects: serialise it at once."""
        return {
            "kind": self.kind,
            "counters": vars(self.counters),
            "session": self.session.as_dict() if self.session else None,
            "last": {f.name: getattr(self.last, f.name) for f in fields(Observed)}
            if self.last
            else None,
            "idle_polls": self.idle_polls,
            "idle_since": self.idle_since,
            "closed_sid": self.closed_sid,
            "closed_energy": self.closed_energy,
            "check": self.check.as_dict() if self.check else None,
            "check_lse": self.check_lse,
            "meter_t": self.meter_t,
            "meter_p": self.meter_p,
        }

    def restore(self, data: dict[str, Any]) -> None:
        self.kind = data.get("kind", self.kind)
        self.counters = Counters(**data["counters"])
        self.session = Session.from_dict(data["session"]) if data.get("session") else None
        self.last = Observed(**data["last"]) if data.get("last") else None
        self.idle_polls = data["idle_polls"]
        self.idle_since = data["idle_since"]
        self.closed_sid = data["closed_sid"]
        self.closed_energy = data["closed_energy"]
        self.check = Session.from_dict(data["check"]) if data.get("check") else None
        self.check_lse = data.get("check_lse")
        self.meter_t = data.get("meter_t")
        self.meter_p = dict(data.get("meter_p") or {})
        self.restored = True

    # ---- feeding ----------------------------------------------------------------------------

    def feed(self, reading: Reading) -> Result:
        result = Result(())
        if reading.up:
            model = cat.MODELS.get(reading.model)
            if model is not None and model.kind == cat.METER:
                self.kind = cat.METER
                self._meter(reading)
            else:
                self.kind = cat.CHARGER
                self._charger(reading, observe(reading), result)
        result.samples = self.samples()
        return result

    def _gap(self, dt: float) -> bool:
        return dt > GAP_INTERVALS * self.interval

    def _charger(self, reading: Reading, obs: Observed, result: Result) -> None:
        last = self.last
        self._cross_check(obs, result)
        s = self.session
        state = obs.state
        if state is None:
            return  # a reply without a state tells nothing about sessions
        idle = state in IDLE
        dt = obs.t - last.t if last is not None else 0.0
        if dt < 0:
            return  # an older reading than the last one (a probe that raced a poll)
        restored, self.restored = self.restored, False
        self._zeroes(obs)
        gap = last is not None and self._gap(dt)
        new_sid = (
            s is not None
            and obs.session_id is not None
            and s.session_id is not None
            and obs.session_id != s.session_id
        )
        if s is not None and restored:
            s.note("restart")
            self._count("restart")
        if s is not None and gap:
            s.note("gap")
            self._count("gap")
        if s is not None and new_sid:
            # The session the device knows as s.session_id is over: closed while we were away
            # (gap), or a new one began without an idle poll between.
            following = obs.session_id == (s.session_id or 0) + 1
            lse = obs.last_session_wh
            # Only a last_session_energy read since then is this session's; the one seen while
            # it was open was the session's before.
            fresh = lse is not None and (last is None or lse != last.last_session_wh)
            if gap and following and fresh and lse is not None:
                self._top_up(s, lse, obs.t, last)
            self._close(s, self.idle_since or (last.t if gap and last else obs.t), obs, result)
            s = None
        elif s is not None:
            self._progress(s, obs, last, dt, gap)
            if idle:
                self.idle_polls += 1
                if self.idle_since is None:
                    self.idle_since = obs.t
                if gap or self.idle_polls > FLAP_POLLS:
                    end = self.idle_since if not gap else (last.t if last else obs.t)
                    self._close(s, end, obs, result)
                    s = None
            else:
                if self.idle_polls:
                    s.note("state_flap")
                    self._count("state_flap")
                self.idle_polls, self.idle_since = 0, None
        if s is None and not idle and self.session is None:
            s = self._open(obs, last, reading)
        if s is not None:
            s.last_seen = obs.t
            s.connected_seconds = max(s.connected_seconds, obs.t - s.start)
            result.changed.append(s)
        self.last = obs

    def _zeroes(self, obs: Observed) -> None:
        """Series from the first poll on, at 0 until they count: the tariff's periods and the
        limit reason the charger reports (so increase() and dashboards have data at once)."""
        c = self.counters
        if obs.reason is not None and obs.reason not in c.limited_seconds:
            c.limited_seconds[obs.reason] = 0.0
            c.limited_wh.setdefault(obs.reason, 0.0)
        if self.tariff.name and self._zeroed != self.tariff.name:
            self._zeroed = self.tariff.name
            for period in self.tariff.period_names:
                key = f"{self.tariff.name}/{period}"
                c.tariff_wh.setdefault(key, 0.0)
                c.cost.setdefault(key, [self.tariff.currency, 0.0])

    def _open(self, obs: Observed, last: Observed | None, reading: Reading) -> Session:
        s = Session(
            device=self.device,
            model=reading.model,
            labels=dict(reading.user_labels),
            start=obs.t,
            session_id=obs.session_id,
            tariff=self.tariff.name,
            currency=self.tariff.currency,
        )
        energy = obs.energy_wh or 0.0
        # The same session_id as the last finished session, and its energy not reset yet: that
        # energy was the last session's (firmware that keeps it until the car charges again).
        if (
            obs.session_id is not None
            and obs.session_id == self.closed_sid
            and self.closed_energy is not None
            and energy >= self.closed_energy
        ):
            energy -= self.closed_energy
        elif (
            obs.session_id is None
            and last is not None
            and last.energy_wh is not None
            and energy >= last.energy_wh
        ):
            energy -= last.energy_wh
        if obs.total_wh is not None:
            s.total_start_wh = obs.total_wh - energy
        self.session = s
        self.idle_polls, self.idle_since = 0, None
        if energy > 0:
            self._energy(s, energy, obs.t, obs.t, obs.reason)
        self._peaks(s, obs)
        return s

    def _progress(
        self, s: Session, obs: Observed, last: Observed | None, dt: float, gap: bool
    ) -> None:
        if last is not None and last.state == "C" and not gap and dt > 0:
            s.charging_seconds += dt
            if last.reason is not None:
                _add(self.counters.limited_seconds, last.reason, dt)
                entry = s.limits.setdefault(last.reason, [0.0, 0.0])
                entry[0] += dt
        if obs.energy_wh is not None:
            before = last.energy_wh if last is not None else None
            if before is None:
                delta = 0.0
            elif obs.energy_wh >= before:
                delta = obs.energy_wh - before
            else:
                # Charged since the last poll: the new figure, or where the lifetime counter
                # says more went in before the reset, that (its resolution is 1 Wh).
                delta = obs.energy_wh
                if last is not None and last.total_wh is not None and obs.total_wh is not None:
                    delta = max(delta, obs.total_wh - last.total_wh)
                if obs.state not in IDLE:
                    s.note("energy_reset")
                    self._count("energy_reset")
            if delta > 0:
                reason = last.reason if last is not None and last.state == "C" else obs.reason
                t0 = last.t if last is not None else obs.t
                self._energy(s, delta, t0, obs.t, reason)
        if obs.total_wh is not None:
            s.total_end_wh = obs.total_wh
            if s.total_start_wh is None:
                s.total_start_wh = obs.total_wh - s.energy_wh
        self._peaks(s, obs)

    def _peaks(self, s: Session, obs: Observed) -> None:
        if obs.power is not None:
            s.peak_power_watts = max(s.peak_power_watts, obs.power)
        if obs.state == "C":
            s.phases = max(s.phases, obs.phases_used)

    def _energy(self, s: Session, wh: float, t0: float, t1: float, reason: str | None) -> None:
        s.energy_wh += wh
        if reason is not None:
            _add(self.counters.limited_wh, reason, wh)
            s.limits.setdefault(reason, [0.0, 0.0])[1] += wh
        for piece in self.tariff.split(wh, t0, t1):
            s.cost += piece.cost
            for part in s.parts:
                if part[0] == piece.month and part[1] == piece.period:
                    part[2] += piece.wh
                    part[3] += piece.cost
                    break
            else:
                s.parts.append([piece.month, piece.period, piece.wh, piece.cost])
            if self.tariff.name:
                key = f"{self.tariff.name}/{piece.period}"
                _add(self.counters.tariff_wh, key, piece.wh)
                entry = self.counters.cost.setdefault(key, [self.tariff.currency, 0.0])
                entry[1] += piece.cost

    def _top_up(self, s: Session, device_wh: float, t: float, last: Observed | None) -> None:
        """The device's own figure for a session that ended while polls were missing."""
        missing = device_wh - s.energy_wh
        if missing > 0:
            self._energy(s, missing, last.t if last else t, t, None)
            s.total_end_wh = None  # the counter at its end was not seen

    def _close(self, s: Session, end: float, obs: Observed, result: Result) -> None:
        s.end = max(end, s.start)
        s.open = False
        s.connected_seconds = s.end - s.start
        if s.total_start_wh is not None and s.total_end_wh is not None:
            resolution = 1.0
            if all(abs(v - round(v / 1000.0) * 1000.0) < 1e-6 for v in (s.total_start_wh,)):
                resolution = 1000.0  # firmware that counts whole kWh
            if abs((s.total_end_wh - s.total_start_wh) - s.energy_wh) > resolution + 0.5:
                s.note("counter_mismatch")
                self._count("counter_mismatch")
        self.counters.sessions += 1
        self.closed_sid = s.session_id
        self.closed_energy = obs.energy_wh
        lse = obs.last_session_wh
        # A last_session_energy that already agrees is this session's; any other value is
        # taken for the previous session's, and the next new value is checked.
        done = lse is not None and abs(lse - s.energy_wh) <= 1.0
        self.check, self.check_lse = (None, None) if done else (s, lse)
        self.session = None
        self.idle_polls, self.idle_since = 0, None
        result.finished.append(s)
        result.changed.append(s)

    def _cross_check(self, obs: Observed, result: Result) -> None:
        """last_session_energy comes from a slow method: it catches up with a finished session
        some polls later; the first new value is that session's."""
        s = self.check
        if s is None or obs.last_session_wh is None:
            return
        if self.check_lse is None:
            self.check_lse = obs.last_session_wh
            return
        if obs.last_session_wh == self.check_lse:
            return
        self.check = None
        if abs(obs.last_session_wh - s.energy_wh) > 1.0 and "gap" not in s.anomalies:
            s.note("counter_mismatch")
            self._count("counter_mismatch")
            result.changed.append(s)
            result.finished.append(s)

    def _count(self, kind: str) -> None:
        _add_int(self.counters.anomalies, kind)

    # ---- meters -----------------------------------------------------------------------------

    def _meter(self, reading: Reading) -> None:
        samples = reading.samples
        powers = {
            labels[0][1]: value
            for _, labels, value in samples_of(
                samples, layout_of(samples), "lektrico_meter_power_watts"
            )
            if labels
        }
        t = reading.time
        for phase in powers:  # every series from the first poll on, at 0 until energy flows
            for direction in ("import", "export"):
                self.counters.meter_wh.setdefault(f"{phase}/{direction}", 0.0)
        if self.meter_t is not None:
            dt = t - self.meter_t
            if dt <= 0:
                return
            if self._gap(dt):
                self.counters.meter_gap_seconds += dt
            else:
                for phase, p1 in powers.items():
                    p0 = self.meter_p.get(phase)
                    if p0 is None:
                        continue
                    imp, exp = trapezoid(p0, p1, dt)
                    _add(self.counters.meter_wh, f"{phase}/import", imp / WH)
                    _add(self.counters.meter_wh, f"{phase}/export", exp / WH)
        self.meter_t = t
        self.meter_p = powers

    # ---- samples ----------------------------------------------------------------------------

    def samples(self) -> tuple[Sample, ...]:
        """The derived samples; the last ones again, object for object, where a value is the
        same. A fleet's derived samples live as long as its last readings, so each new one is
        a young object the garbage collector walks at its next collection: most counters do
        not move from one poll to the next, and reusing them keeps those walks short."""
        new = self._samples()
        last = self._derived
        if len(last) == len(new):
            same = True
            for i, (old, sample) in enumerate(zip(last, new, strict=True)):
                if old == sample:
                    new[i] = old
                else:
                    same = False
            if same:
                return last
        self._derived = out = tuple(new)
        return out

    def _samples(self) -> list[Sample]:
        # Label tuples from shared caches: every device's derived samples carry the same few
        # (kind, reason, tariff, phase); a count still at 0 is the fleet's one sample of it.
        c = self.counters
        out: list[Sample] = []
        if self.kind == cat.METER:
            for key in sorted(c.meter_wh):
                out.append(
                    shared_sample(
                        "lektrico_meter_energy_joules_total",
                        _meter_labels(key),
                        c.meter_wh[key] * WH,
                    )
                )
            out.append(
                shared_sample("lektrico_meter_energy_gap_seconds_total", (), c.meter_gap_seconds)
            )
            return out
        out.append(shared_sample("lektrico_sessions_recorded_total", (), float(c.sessions)))
        out.extend(
            shared_sample(
                "lektrico_session_anomalies_total",
                label_pair("kind", k),
                float(c.anomalies.get(k, 0)),
            )
            for k in ANOMALIES
        )
        out.extend(
            shared_sample("lektrico_charging_limited_seconds_total", label_pair("reason", r), v)
            for r, v in sorted(c.limited_seconds.items())
        )
        out.extend(
            shared_sample(
                "lektrico_charging_limited_energy_joules_total", label_pair("reason", r), v * WH
            )
            for r, v in sorted(c.limited_wh.items())
        )
        out.extend(
            shared_sample("lektrico_tariff_energy_joules_total", label_pair("tariff", k), v * WH)
            for k, v in sorted(c.tariff_wh.items())
        )
        out.extend(
            shared_sample("lektrico_energy_cost_total", _cost_labels(k, cur), v)
            for k, (cur, v) in sorted(c.cost.items())
        )
        return out


@functools.cache
def _meter_labels(key: str) -> Labels:
    """The labels of a meter_wh key ("L1/import"), one tuple for the fleet."""
    phase, direction = key.split("/")
    return (("phase", sys.intern(phase)), ("direction", sys.intern(direction)))


@functools.cache
def _cost_labels(key: str, currency: str) -> Labels:
    return (("tariff", key), ("currency", currency))


def _add_int(d: dict[str, int], key: str) -> None:
    d[key] = d.get(key, 0) + 1


def trapezoid(p0: float, p1: float, dt: float) -> tuple[float, float]:
    """(import, export) joules of power going linearly from p0 to p1 watts over dt seconds;
    the part below zero is export."""
    if p0 >= 0 and p1 >= 0:
        return (p0 + p1) / 2 * dt, 0.0
    if p0 <= 0 and p1 <= 0:
        return 0.0, -(p0 + p1) / 2 * dt
    cross = dt * abs(p0) / (abs(p0) + abs(p1))  # where the line crosses zero
    first, second = abs(p0) / 2 * cross, abs(p1) / 2 * (dt - cross)
    return (first, second) if p0 > 0 else (second, first)


class Ledger:
    """Every device's ledger; `feed` is the whole of the work a reading causes."""

    def __init__(self, interval: float, tariffs: dict[str, Tariff] | None = None) -> None:
        self.interval = interval
        self.devices: dict[str, DeviceLedger] = {}
        self.tariffs = tariffs or {}
        self.choice: dict[str, str | None] = {}  # device → tariff name
        # Devices removed from the config: their state, taken up again if they come back.
        self.parked: dict[str, dict[str, Any]] = {}

    def device(self, name: str) -> DeviceLedger:
        ledger = self.devices.get(name)
        if ledger is None:
            ledger = self.devices[name] = DeviceLedger(name, self.interval)
            parked = self.parked.pop(name, None)
            if parked is not None:
                ledger.restore(parked)
        tariff = self.tariffs.get(self.choice.get(name) or "", NO_TARIFF)
        ledger.tariff, ledger.interval = tariff, self.interval
        return ledger

    def feed(self, reading: Reading) -> Result:
        return self.device(reading.device).feed(reading)

    def restore(self, states: Iterable[tuple[str, dict[str, Any]]]) -> None:
        for name, data in states:
            self.device(name).restore(data)

    def remove(self, device: str) -> None:
        ledger = self.devices.pop(device, None)
        if ledger is not None:
            self.parked[device] = json.loads(json.dumps(ledger.state()))
        self.choice.pop(device, None)

    def open_sessions(self) -> list[Session]:
        return [d.session for d in self.devices.values() if d.session is not None]
