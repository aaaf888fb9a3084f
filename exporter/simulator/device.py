"""Simulated Lektri.co devices: profiles, a deterministic state machine and RPC replies.

A device knows nothing about HTTP. ``device.read("Charger_info.Get")`` returns the reply as a
dict, ``device.reply(...)`` the JSON bytes a real unit would send; ``device.methods`` lists the
canonical names of the read methods the profile answers.

Default profiles (``DEFAULT_PROFILES``) reply as real firmware does, the way the vendor's own
client (``lektricowifi``, which Home Assistant uses) expects: keys without the spec's typos,
``Dynamic_current.Get`` with ``relay_mode``, meter values split over Meter_info.Get,
App_config.Get and Sw_version.Get, serial and board revision in Charger_config.Get or
M2w_config.Get:

- ``1p7k``: 1P7K on the public v2.0 API; ``3p22k``: three-phase charger, scalar ``voltage`` 0
  like on real units.
- ``em`` / ``3em``: single- and three-phase energy meters; the 3EM may export to the grid on
  one phase (negative power).

Quirk profiles keep what the spec and old firmware do wrong, for the exporter to cope with:

- ``1p7k-old``: firmware 1.47, prerelease-2023 API (trailing-space keys in System_currents and
  EM_status, ``state_machine_e_activated``, integer counters energy, ``reset_counter``; no
  Device_id/Charger_config/Board_revision/Dynamic_current, no ``user_power``).
- ``1p7k-partial``: v2.0 with the keys firmware 1.51 leaves out of Charger_info.Get.
- ``1p7k-spec``: v2.0 replying as the spec's text, ``"dynamic_current "`` with a trailing space.
- ``1p7k-short``: phase arrays of one item instead of three.
- ``em-merged``: a meter whose Meter_info.Get carries App_config and Sw_version keys too (the
  vendor library's test mock), without M2w_config.Get.

How a device answers a method it does not have (``UNKNOWN_METHOD_ANSWERS``) is chosen per
profile (``Profile.unknown_method``) or per device: ``http404`` (404 with an error frame -6),
``http500``, ``html`` (200 with a web page), ``rpc-1``, ``rpc-6``, ``rpc-32601`` (error frames).

Time: a device reads a ``Clock`` (simulated seconds). Chargers walk a scripted, seeded sequence
of segments (A, B, B_AUTH, C, B_PAUSE, ...) and integrate energy and time in closed form, so
the same seed, name and profile always give the same history, whatever the polling pattern.

Session anomalies (``Anomalies``, each a seeded chance per session, rare by default): the
end-of-charge flap (state A for between one and two of the consumer's poll intervals, same
``session_id``), a session-energy reset (``Session_energy.Reset`` while paused) and a reboot
mid-session (the device does not answer for a while, then the session goes on). They are drawn
from a random stream of their own, so a history with them differs from one without only by the
inserted episodes. Each generated session records the anomalies the exporter's ledger should
flag for a consumer polling every ``Anomalies.poll_interval`` device seconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

JSONDict = dict[str, Any]


class Clock(Protocol):
    def now(self) -> float:
        """Simulated seconds since the clock started."""
        ...


class SimClock:
    """Real monotonic time scaled by ``speed``; stands still when ``frozen``."""

    def __init__(self, speed: float = 1.0, frozen: bool = False) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self.frozen = frozen
        self._start = time.monotonic()

    def now(self) -> float:
        if self.frozen:
            return 0.0
        return (time.monotonic() - self._start) * self.speed

    def unix(self, t: float) -> float:
        """The wall-clock (unix) time at which this clock reads ``t``."""
        return time.time() - (time.monotonic() - self._start) + t / self.speed


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


UNKNOWN_METHOD_ANSWERS = ("http404", "http500", "html", "rpc-1", "rpc-6", "rpc-32601")
QUIRKS = frozenset({"spec_typos", "short_arrays", "merged_meter_info"})


@dataclass(frozen=True)
class Profile:
    name: str
    kind: str  # "charger" or "meter"
    legacy_api: bool  # prerelease-2023 firmware instead of the public v2.0 API
    phases: int
    fw_version: str
    fw_id: str
    id_prefix: str
    omitted_keys: frozenset[str] = frozenset()
    quirks: frozenset[str] = frozenset()
    unknown_method: str = "http404"  # one of UNKNOWN_METHOD_ANSWERS


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "1p7k-old", "charger", True, 1, "1.47", "20230109-124642/v1.22-36-g56a3edd", "1p7k_"
        ),
        Profile("1p7k", "charger", False, 1, "1.60", "20250225-101530/v1.60-4-g8c21f0b", "1p7k_"),
        Profile(
            "1p7k-partial",
            "charger",
            False,
            1,
            "1.51",
            "20240611-093012/v1.51-2-g3e9d7a1",
            "1p7k_",
            # Exactly the keys the fw 1.51 capture lacks.
            frozenset(
                {
                    "charging_time",
                    "session_id",
                    "heap_free",
                    "pwm_current",
                    "em_current",
                    "led_max_brightness",
                    "current",
                    "voltage",
                    "energy_index",
                }
            ),
        ),
        Profile(
            "3p22k",
            "charger",
            False,
            3,
            "1.60",
            "20250225-101530/v1.60-4-g8c21f0b",
            "3p22k_",
            unknown_method="rpc-6",
        ),
        Profile(
            "em",
            "meter",
            False,
            1,
            "1.15",
            "20240305-141210/v1.15-0-g7a0c2e4",
            "m2w_81",
            unknown_method="rpc-32601",
        ),
        Profile(
            "3em",
            "meter",
            False,
            3,
            "1.15",
            "20240305-141210/v1.15-0-g7a0c2e4",
            "m2w_83",
            unknown_method="rpc-1",
        ),
        Profile(
            "1p7k-spec",
            "charger",
            False,
            1,
            "1.60",
            "20250225-101530/v1.60-4-g8c21f0b",
            "1p7k_",
            quirks=frozenset({"spec_typos"}),
            unknown_method="http500",
        ),
        Profile(
            "1p7k-short",
            "charger",
            False,
            1,
            "1.58",
            "20241120-110204/v1.58-0-g1d4e2a9",
            "1p7k_",
            quirks=frozenset({"short_arrays"}),
            unknown_method="html",
        ),
        Profile(
            "em-merged",
            "meter",
            False,
            1,
            "1.15",
            "20240305-141210/v1.15-0-g7a0c2e4",
            "m2w_81",
            quirks=frozenset({"merged_meter_info"}),
        ),
    )
}
DEFAULT_PROFILES = ("1p7k", "3p22k", "em", "3em")

ERROR_FLAGS = (
    "state_e_activated",
    "overtemp",
    "critical_temp",
    "overcurrent",
    "meter_fault",
    "voltage_error",
    "rcd_error",
    "rcd_test_error",
    "rcd_err_pin_error",
    "rcd_err6_pin_error",
    "rcd_init_start_error",
    "rcd_init_end_error",
    "state_f_activated",
    "contactor_failure",
    "cp_diode_failure",
    "undervoltage_error",
    "overvoltage_error",
    "state_machine_na_error",
)
_ERROR_CAUSES = ("overtemp", "rcd_error", "overcurrent", "voltage_error", "cp_diode_failure")
_LEGACY_SYSTEM_CURRENT_KEYS = {
    # The prerelease firmware really sends these with a trailing space, except user_current.
    name: name if name == "user_current" else name + " "
    for name in (
        "cable_current",
        "install_current",
        "dynamic_current",
        "user_current",
        "charging_current",
        "system_max_current",
        "schedule_current",
        "ocpp_current",
        "em_current",
    )
}
_IDLE_ERRORS = ("rcd_test_error", "meter_fault", "rcd_init_end_error", "undervoltage_error")
_IEC_STATE = {"B_AUTH": "B", "B_PAUSE": "B", "B_SCHEDULER": "B", "OTA": "A", "LOCKED": "A"}
_ZERO3 = (0.0, 0.0, 0.0)
GENERATED_KEPT = 10_000  # generated sessions a charger remembers (ground truth for tests)


@dataclass(frozen=True)
class Anomalies:
    """Chances per session of the episodes that make a charger's session history irregular.

    Durations are tuned to a consumer polling every ``poll_interval`` device seconds (the
    exporter's default 15 s; at ``speed`` s a second, a real interval of ``i`` s is ``i *
    speed`` device seconds):

    - ``flap``: at the end of charging, state A for 1.25 to 1.75 intervals, so one or two
      polls see it (the ledger's rule for a flap) even when polls start up to a quarter
      interval late; same ``session_id``, then B until the car leaves;
    - ``energy_reset``: a pause of at least two intervals, with ``session_energy`` set to 0
      (``Session_energy.Reset``, allowed in state B) after the first, so a poll sees the pause
      before the reset; the session's energy is the sum of both parts;
    - ``reboot``: after a charging segment the device stops answering (a watchdog or brown-out
      reboot; ``reset_counter`` counts it), then boots in state B and charging resumes. The
      firmware keeps ``session_id``, ``session_energy`` and ``charging_time`` across it (they
      are saved with the lifetime counters, and ``Device.Reset`` itself waits for a session
      to end, so the session is meant to survive), and nothing is charged while it is down.
      Two in three outages last 3.5 to 8 intervals (a ``gap`` for the ledger), one in three
      0.3 to 0.6 intervals (at most one poll lost: nothing to flag).
    """

    flap: float = 0.02
    energy_reset: float = 0.005
    reboot: float = 0.003
    poll_interval: float = 15.0

    def __post_init__(self) -> None:
        for name in ("flap", "energy_reset", "reboot"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"anomaly chance {name} must be within 0..1")
        if not self.poll_interval > 0:
            raise ValueError("poll_interval must be positive")


NO_ANOMALIES = Anomalies(0.0, 0.0, 0.0)


def _schedule(rng: random.Random) -> tuple[JSONDict, ...]:
    """A weekly charging schedule: none, cheap nights on weekdays, or a paused weekday peak."""
    roll = rng.random()
    if roll < 0.5:
        return ()
    if roll < 0.8:
        return tuple(
            {
                "start_d": day,
                "start_h": 22,
                "start_m": 0,
                "end_d": day % 7 + 1,
                "end_h": 6,
                "end_m": 0,
                "current": 32,
                "lb_mode": 1,
            }
            for day in range(1, 6)
        )
    return tuple(
        {
            "start_d": day,
            "start_h": 17,
            "start_m": 30,
            "end_d": day,
            "end_h": 20,
            "end_m": 0,
            "current": 0,
            "lb_mode": 1,
        }
        for day in range(1, 6)
    )


def device_key(seed: int, name: str, profile: str) -> int:
    """Stable 64-bit key: identical in every process, unlike ``hash()``."""
    digest = hashlib.sha256(f"{seed}:{name}:{profile}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def default_serial(seed: int, name: str) -> int:
    return 100000 + device_key(seed, name, "serial") % 900000


def encode(obj: JSONDict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Device(ABC):
    """Common identity, network and caching; subclasses provide the live values."""

    def __init__(
        self,
        name: str,
        profile: Profile,
        *,
        seed: int,
        serial: int,
        alias: str,
        ssid: str,
        clock: Clock,
    ) -> None:
        self.name = name
        self.profile = profile
        self.serial = serial
        self.alias = alias
        self.ssid = ssid
        self._clock = clock
        self._key = device_key(seed, name, profile.name)
        self._rng = random.Random(self._key)
        self._cache: dict[str, bytes] = {}
        self.methods: dict[str, Callable[[], JSONDict]] = {
            "Device_info.Get": self._device_info,
            "Sw_version.Get": lambda: {"fw_version": profile.fw_version, "fw_id": profile.fw_id},
            "Wifi_status.Get": self._wifi_status,
            "App_config.Get": self._app_config,
        }
        if not profile.legacy_api:  # the prerelease API has no Device_id.Get
            self.methods["Device_id.Get"] = lambda: {"device_id": self.device_id}
        # Offsetting each device's clock spreads a fleet over all states from the start.
        self._offset = self._rng.uniform(0.0, 12 * 3600.0)
        self._rssi = self._rng.randint(-82, -45)

    @property
    def device_id(self) -> str:
        return f"{self.profile.id_prefix}{self.serial:06d}"

    def set_alias(self, alias: str) -> None:
        self.alias = alias
        self._cache.clear()

    def read(self, method: str) -> JSONDict:
        """The reply of a canonical read method as a dict; KeyError if not offered."""
        builder = self.methods[method]
        self._sync()
        return builder()

    def reply(self, method: str) -> bytes:
        self._sync()
        body = self._cache.get(method)
        if body is None:
            body = self._cache[method] = encode(self.methods[method]())
        return body

    def garbled(self, method: str) -> bytes:
        """The reply with wrong value types, chosen deterministically per device and method."""
        rng = random.Random(f"{self._key}:garbage:{method}")
        reply = self.read(method)
        garbled = {key: _garble(value, rng) for key, value in reply.items()}
        # Whatever the dice said, one number always arrives as a string.
        for key, value in reply.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                garbled[key] = str(value)
                break
        return json.dumps(garbled, separators=(",", ":")).encode()

    def _sync(self) -> None:
        # The nudge keeps float noise (a clock at 12345.9999999 device seconds) from showing a
        # poll meant for a whole second the second before.
        if self._advance(math.floor(self._clock.now() + self._offset + 1e-6)):
            self._cache.clear()

    @abstractmethod
    def _advance(self, t: float) -> bool:
        """Move the simulation to device time ``t``; True if any reply may have changed."""

    @abstractmethod
    def _app_config(self) -> JSONDict: ...

    def _device_info(self) -> JSONDict:
        return {
            "device_id": self.device_id,
            "connected_phase": self.profile.phases,
            "fw_version": self.profile.fw_version,
            "charger_alias": self.alias,
        }

    def _wifi_status(self) -> JSONDict:
        s = self.serial
        return {
            "connected": True,
            "sta_ip": f"192.168.{1 + s % 3}.{2 + s % 250}",
            "sta_name": self.ssid,
            "rssi": self._rssi,
            "bssid": f"a4:2b:b0:{s % 256:02x}:{s // 256 % 256:02x}:{s // 65536 % 256:02x}",
        }


def _garble(value: Any, rng: random.Random) -> Any:
    choice = rng.randrange(6)
    if choice == 0:
        return json.dumps(value) if isinstance(value, bool | list) else str(value)
    if choice == 1:
        return None
    if choice == 2:
        return math.nan
    if choice == 3:
        return {"value": value}
    if choice == 4:
        return value[:1] if isinstance(value, list) else [value]
    return value


@dataclass(frozen=True)
class _Limits:
    """Current limits in amperes; ``offered`` is the smallest, ``reason`` names it."""

    install: int
    user: int
    dynamic: int
    em: int
    temperature: int
    offered: int
    reason: int
    schedule: int = 32
    ocpp: int = 32
    user_power: int = 32
    em_offline: bool = False


@dataclass(frozen=True)
class _Segment:
    state: str  # extended charger state
    duration: float
    voltages: tuple[float, float, float]
    currents: tuple[float, float, float] = _ZERO3
    limits: _Limits | None = None  # None keeps the previous limits
    error: str | None = None
    starts_session: bool = False
    idle_error: bool = False  # the error is active without the state machine in E
    flap: bool = False  # an A that does not end the session (the end-of-charge flap)
    resets_energy: bool = False  # session_energy goes back to 0 as the segment begins
    offline: bool = False  # rebooting: the device answers nothing
    anomaly: str | None = None  # the ledger's kind for this episode, recorded in the truth


@dataclass
class _Counters:
    session_id: int
    sessions: int
    total_wh: float
    total_time_s: float
    reset_counter: int
    session_wh: float = 0.0
    session_time_s: float = 0.0
    last_session_wh: int = 0
    whole_session_wh: float = 0.0  # session_wh without its resets


@dataclass
class _ChargerConfig:
    install: int
    user: int
    headless: bool
    brightness: int
    user_power: int
    ambient: float
    overtemp: int
    critical: int
    board: str
    cars: tuple[int, ...] = (32, 32, 16, 13)  # per-phase current the plugged-in car accepts
    schedule_enabled: bool = False
    schedule: tuple[JSONDict, ...] = ()
    em_enabled: bool = False
    relay_mode: int = 0


class Charger(Device):
    """A charger walking a seeded script of plug-in sessions and rare episodes.

    ``charging_snapshot`` starts it halfway through its first charging segment; on a frozen
    clock it stays there, which is what golden tests need.
    """

    _TAU = 900.0  # thermal time constant of the enclosure, seconds

    def __init__(
        self,
        name: str,
        profile: Profile,
        *,
        seed: int,
        serial: int,
        alias: str,
        ssid: str,
        clock: Clock,
        charging_snapshot: bool = False,
        anomalies: Anomalies | None = None,
    ) -> None:
        super().__init__(
            name, profile, seed=seed, serial=serial, alias=alias, ssid=ssid, clock=clock
        )
        rng = self._rng
        if anomalies is None:
            # A snapshot is the golden files' fixed point: no episode may move it.
            anomalies = NO_ANOMALIES if charging_snapshot else Anomalies()
        self.anomalies = anomalies
        # A stream of its own: the anomaly chances change which episodes are inserted, never
        # the rest of the script.
        self._anomaly_rng = random.Random(f"{self._key}:anomalies")
        self._config = _ChargerConfig(
            install=rng.choice((16, 20, 25, 32, 32)),
            user=rng.choice((32, 32, 24, 16)),
            headless=rng.random() < 0.8,
            brightness=rng.choice((10, 30, 50, 100)),
            user_power=7360 * profile.phases,
            ambient=round(rng.uniform(12.0, 26.0), 1),
            overtemp=rng.choice((65, 70)),
            critical=rng.choice((75, 80)),
            board=rng.choice("BCE"),
        )
        cfg = self._config
        cfg.schedule = _schedule(rng)
        cfg.schedule_enabled = bool(cfg.schedule) and rng.random() < 0.7
        cfg.em_enabled = rng.random() < 0.3
        cfg.relay_mode = rng.choice((0, 0, 1)) if profile.phases == 3 else 0
        session_id = rng.randint(1, 900)
        self._counters = _Counters(
            session_id=session_id,
            sessions=session_id + rng.randint(0, 20),
            total_wh=session_id * rng.uniform(8000.0, 15000.0),
            total_time_s=session_id * rng.uniform(3000.0, 6000.0),
            reset_counter=rng.randint(0, 40),
        )
        self._temperature = self._config.ambient
        self._limits = self._draw_limits()
        self._active: set[str] = set()
        self._logged: set[str] = set()
        self._in_session = False
        # Ground truth for tests of the exporter's session ledger: each session generated,
        # {"session_id", "start", "end", "wh", "anomalies", "reboots"} in clock seconds (end
        # and wh None while open); "anomalies" counts by ledger kind what a consumer polling
        # every anomalies.poll_interval should flag, "reboots" every reboot, flagged or not.
        self.generated: deque[dict[str, Any]] = deque(maxlen=GENERATED_KEPT)
        self._script = self._sessions()
        self._t = 0.0
        self._enter(next(self._script))
        self._advance(self._offset)
        if charging_snapshot:
            self._skip_to_charging()
        self._add_methods()

    @property
    def extended_state(self) -> str:
        self._sync()
        return self._segment.state

    @property
    def offline(self) -> bool:
        """Rebooting: a real unit would answer nothing now."""
        self._sync()
        return self._segment.offline

    def hold_error(self, cause: str, seconds: float = 365 * 86400.0) -> None:
        """Go to state E now with `cause` among the active errors, for `seconds` of device
        time, then resume the usual script (the demo's charger with an active error)."""
        if cause not in ERROR_FLAGS:
            raise ValueError(f"unknown error {cause!r}; known: {', '.join(ERROR_FLAGS)}")
        self._sync()
        self._enter(_Segment("E", seconds, self._grid(), error=cause))
        self._cache.clear()

    # --- simulation -------------------------------------------------------------------

    def _advance(self, t: float) -> bool:
        if t <= self._t:
            return False
        while t > self._t:
            step_to = min(t, self._segment_end)
            self._integrate(step_to - self._t)
            self._t = step_to
            if self._t >= self._segment_end:
                self._enter(next(self._script))
        return True

    def _skip_to_charging(self) -> None:
        while self._segment.state != "C":
            self._advance(self._segment_end)
        self._advance(self._t + self._segment.duration / 2)
        self._offset = self._t - self._clock.now()

    def _integrate(self, dt: float) -> None:
        if self._segment.state == "C":
            wh = self._power * dt / 3600.0
            c = self._counters
            c.session_wh += wh
            c.whole_session_wh += wh
            c.total_wh += wh
            c.session_time_s += dt
            c.total_time_s += dt
        # Enclosure heats towards ambient plus a rise proportional to per-phase load.
        target = self._config.ambient + 2.5 * self._power / 1000.0 / self.profile.phases
        self._temperature = target + (self._temperature - target) * math.exp(-dt / self._TAU)

    def _enter(self, segment: _Segment) -> None:
        c = self._counters
        if segment.state == "A" and self._in_session and not segment.flap:
            self._in_session = False
            # The whole session's energy, resets or not: firmware keeps this figure apart from
            # the session_energy the app may reset (what the ledger cross-checks against).
            c.last_session_wh = round(c.whole_session_wh)
            if self.generated:
                self.generated[-1].update(end=self._t - self._offset, wh=c.whole_session_wh)
        if segment.starts_session:
            self._in_session = True
            c.session_id += 1
            c.sessions += 1
            c.session_wh = 0.0
            c.whole_session_wh = 0.0
            c.session_time_s = 0.0
            start = self._t - self._offset
            self.generated.append(
                {
                    "session_id": c.session_id,
                    "start": start,
                    "end": None,
                    "wh": None,
                    "anomalies": {},
                    "reboots": 0,
                }
            )
        if segment.resets_energy:
            c.session_wh = 0.0
        if segment.offline:
            c.reset_counter += 1
        if self._in_session and self.generated:
            truth = self.generated[-1]
            if segment.offline:
                truth["reboots"] += 1
            if segment.anomaly is not None:
                kinds = truth["anomalies"]
                kinds[segment.anomaly] = kinds.get(segment.anomaly, 0) + 1
        if segment.limits is not None:
            self._limits = segment.limits
        if segment.error and segment.idle_error:
            self._active = {segment.error}
        elif segment.error:
            self._active = {"state_e_activated", segment.error}
        else:
            self._active = set()
        self._logged |= self._active
        self._segment = segment
        self._segment_end = self._t + segment.duration
        self._power = round(
            sum(i * v for i, v in zip(segment.currents, segment.voltages, strict=True)), 2
        )

    def _sessions(self) -> Iterator[_Segment]:
        """The endless script: idle, then a session or a rare LOCKED/OTA/idle-error episode."""
        rng = self._rng
        while True:
            yield _Segment("A", rng.uniform(300, 3600), self._grid())
            if rng.random() < 0.04:
                # An error that is active while no car is plugged in (a failed RCD self-test).
                yield _Segment(
                    "A",
                    rng.uniform(60, 600),
                    self._grid(),
                    error=rng.choice(_IDLE_ERRORS),
                    idle_error=True,
                )
            roll = rng.random()
            if roll < 0.02:
                yield _Segment("OTA", rng.uniform(60, 240), self._grid())
                continue
            if roll < 0.07:
                yield _Segment("LOCKED", rng.uniform(300, 1800), self._grid())
                continue
            yield _Segment("B", rng.uniform(5, 30), self._grid(), starts_session=True)
            if rng.random() < 0.3:
                yield _Segment("B_AUTH", rng.uniform(10, 90), self._grid())
            if rng.random() < 0.1:
                yield _Segment("B_SCHEDULER", rng.uniform(300, 1800), self._grid())
            car = rng.choice(self._config.cars)
            odd = self._anomaly_rng
            chance = self.anomalies
            # At most one of each per session, each after some charging has been done; none in
            # the history before the clock starts (the offset that spreads a fleet), which so
            # stays what it is without anomalies.
            live = self._t >= self._offset
            reset = odd.random() < chance.energy_reset and live
            reboot = odd.random() < chance.reboot and live
            flap = odd.random() < chance.flap and live
            last = ""
            for _ in range(rng.randint(2, 6)):
                charging = self._charging(car)
                yield charging
                last = charging.state
                if last == "C" and reset:
                    reset = False
                    yield from self._energy_reset(charging.voltages)
                    last = "B_PAUSE"
                elif last == "C" and reboot:
                    reboot = False
                    yield from self._reboot(charging.voltages)
                    last = "B"
                roll = rng.random()
                if roll < 0.05:
                    yield _Segment(
                        "E", rng.uniform(30, 300), self._grid(), error=rng.choice(_ERROR_CAUSES)
                    )
                    last = "E"
                    break
                if roll < 0.2:
                    yield _Segment("B_PAUSE", rng.uniform(120, 900), self._grid())
                    last = "B_PAUSE"
            final = _Segment("B", rng.uniform(120, 1800), self._grid())
            if flap and last == "C":
                # Charging just stopped: the pilot reads A for a moment, then B until unplugged.
                interval = chance.poll_interval
                yield _Segment(
                    "A",
                    odd.uniform(1.25, 1.75) * interval,
                    final.voltages,
                    flap=True,
                    anomaly="state_flap",
                )
                # The ledger needs a poll in B after the flap, or the flap is the session's end.
                final = _Segment("B", max(final.duration, 2 * interval), final.voltages)
            yield final

    def _energy_reset(self, voltages: tuple[float, float, float]) -> Iterator[_Segment]:
        """A pause in which the app resets session_energy once a poll has seen the pause."""
        odd, interval = self._anomaly_rng, self.anomalies.poll_interval
        yield _Segment("B_PAUSE", odd.uniform(2.0, 4.0) * interval, voltages)
        yield _Segment(
            "B_PAUSE",
            odd.uniform(2.0, 6.0) * interval,
            voltages,
            resets_energy=True,
            anomaly="energy_reset",
        )

    def _reboot(self, voltages: tuple[float, float, float]) -> Iterator[_Segment]:
        """Down for a while, then booting in B (the car still plugged in) before charging on."""
        odd, interval = self._anomaly_rng, self.anomalies.poll_interval
        if odd.random() < 2 / 3:
            yield _Segment(
                "B", odd.uniform(3.5, 8.0) * interval, voltages, offline=True, anomaly="gap"
            )
        else:
            # Short enough that at most one poll fails, even when polls start a little late.
            yield _Segment("B", odd.uniform(0.3, 0.6) * interval, voltages, offline=True)
        yield _Segment("B", odd.uniform(1.5, 3.0) * interval, voltages)

    def _charging(self, car_max: int) -> _Segment:
        rng = self._rng
        limits = self._draw_limits()
        if limits.offered == 0:  # switching phases: the car waits, nothing flows
            return _Segment("B", rng.uniform(5, 60), self._grid(), limits=limits)
        draw = min(limits.offered, car_max) * rng.uniform(0.9, 1.0)
        voltages = self._grid()
        l1, l2, l3 = (round(draw * rng.uniform(0.98, 1.02), 3) if v else 0.0 for v in voltages)
        return _Segment("C", rng.uniform(120, 900), voltages, (l1, l2, l3), limits)

    def _draw_limits(self) -> _Limits:
        rng = self._rng
        cfg = self._config
        dynamic = 32 if rng.random() < 0.6 else rng.randint(6, 32)
        em = 32 if rng.random() < 0.5 else rng.randint(6, 32)
        temperature = 32 if self.profile.legacy_api or rng.random() < 0.9 else rng.randint(6, 20)
        # Rarer limits, each in a small share of charging segments.
        schedule = rng.randint(6, 16) if cfg.schedule_enabled and rng.random() < 0.2 else 32
        em_offline = cfg.em_enabled and rng.random() < 0.1
        ocpp = rng.randint(6, 16) if not cfg.headless and rng.random() < 0.3 else 32
        user_power = 32
        if not self.profile.legacy_api and rng.random() < 0.05:
            user_power = rng.randint(6, 16)
        # Reason codes of the spec: 0 hardware, 1 install, 2 user, 3 dynamic, 4 schedule,
        # 5 EM offline, 6 EM, 7 OCPP, 8 temperature, 9 phase switching, 10 user (power),
        # 11 single-phase charging disabled.
        candidates = [
            (32, 0),
            (cfg.install, 1),
            (cfg.user, 2),
            (dynamic, 3),
            (schedule, 4),
            (6 if em_offline else 32, 5),
            (em, 6),
            (ocpp, 7),
            (temperature, 8),
            (user_power, 10),
        ]
        offered, reason = min(candidates)
        if self.profile.phases == 3 and rng.random() < 0.05:
            # While switching phases, or with single-phase charging disabled, nothing is offered.
            offered, reason = 0, rng.choice((9, 11))
        return _Limits(
            cfg.install,
            cfg.user,
            dynamic,
            em,
            temperature,
            offered,
            reason,
            schedule=schedule,
            ocpp=ocpp,
            user_power=user_power,
            em_offline=em_offline,
        )

    def _grid(self) -> tuple[float, float, float]:
        rng = self._rng
        volts = [round(rng.uniform(224.0, 241.0), 2) for _ in range(3)]
        if self.profile.phases == 1:
            return (volts[0], 0.0, 0.0)
        return (volts[0], volts[1], volts[2])

    # --- replies --------------------------------------------------------------------

    def _add_methods(self) -> None:
        m = self.methods
        m["Charger_info.Get"] = self._charger_info
        m["System_currents.Get"] = self._system_currents
        m["Active_errors.Get"] = lambda: self._error_flags(self._active)
        m["Logged_errors.Get"] = lambda: self._error_flags(self._logged)
        m["Counters_config.Get"] = self._counters_config
        m["Charging_schedule.Get"] = lambda: {
            "charging_schedule": [dict(interval) for interval in self._config.schedule]
        }
        if self.profile.legacy_api:
            m["EM_status.Get"] = lambda: {"em_offline ": self._limits.em_offline}
            m["EM_current.Get"] = lambda: {"EM_current ": self._limits.em}
            return
        m["EM_status.Get"] = lambda: {"em_offline": self._limits.em_offline}
        m["Dynamic_current.Get"] = self._dynamic_current
        m["Charger_config.Get"] = self._charger_config
        m["Board_revision.Get"] = lambda: {"board_revision": self._config.board}
        m["Serial_number.Get"] = lambda: {"serial_number": f"{self.serial:06d}"}
        m["Pwm_value.Get"] = lambda: {"pwm_value": self._pwm_duty()}
        m["Adc_state.Get"] = lambda: {"adc_state": self._iec_state(), "adc_raw": self._adc_raw()}

    def _dynamic_current(self) -> JSONDict:
        if "spec_typos" in self.profile.quirks:
            return {"dynamic_current ": self._limits.dynamic}  # as the v2.0 spec's text
        return {"dynamic_current": self._limits.dynamic, "relay_mode": self._config.relay_mode}

    def _iec_state(self) -> str:
        state = self._segment.state
        return _IEC_STATE.get(state, state)

    def _offered(self) -> int:
        return self._limits.offered if self._segment.state.startswith(("B", "C")) else 0

    def _pwm_duty(self) -> float:
        offered = self._offered()
        # IEC 61851: duty cycle = amperes / 0.6 %; no PWM (100 %) when nothing is offered.
        return round(offered / 60.0, 3) if offered else 1.0

    def _adc_raw(self) -> int:
        return {"A": 3900, "B": 2950, "C": 2050, "E": 0}.get(self._iec_state(), 3900)

    def _charger_info(self) -> JSONDict:
        seg = self._segment
        c = self._counters
        currents = list(seg.currents)
        voltages = list(seg.voltages)
        reply: JSONDict = {
            "charger_state": self._iec_state(),
            "session_energy": round(c.session_wh, 2),
            "charging_time": int(c.session_time_s),
            "session_id": c.session_id,
            "instant_power": self._power,
            "current": currents[0],
            "currents": currents,
            "current_limit_reason": self._limits.reason,
            # Three-phase units really report 0 in the scalar voltage.
            "voltage": voltages[0] if self.profile.phases == 1 else 0,
            "voltages": voltages,
            "temperature": round(self._temperature, 1),
            "energy_index": round(c.session_wh, 2),
            "total_charged_energy": round(c.total_wh / 1000.0, 3),
            "headless": self._config.headless,
            "led_max_brightness": self._config.brightness,
            "install_current": self._limits.install,
            "dynamic_current": self._limits.dynamic,
            "em_current": self._limits.em,
            "fw_version": self.profile.fw_version,
            "extended_charger_state": seg.state,
            "has_active_errors": bool(self._active),
            "charger_is_paused": seg.state == "B_PAUSE",
            "heap_free": 26000 + int(self._t * 7919) % 6000,
            "pwm_current": self._offered(),
        }
        if not self.profile.legacy_api:
            reply["relay_mode"] = self._config.relay_mode
        if "short_arrays" in self.profile.quirks:
            reply["currents"], reply["voltages"] = currents[:1], voltages[:1]
        for key in self.profile.omitted_keys:
            reply.pop(key, None)
        return reply

    def _system_currents(self) -> JSONDict:
        lim = self._limits
        values = {
            "cable_current": 32,
            "install_current": lim.install,
            "dynamic_current": lim.dynamic,
            "user_current": lim.user,
            "charging_current": self._offered(),
            "system_max_current": 32,
            "schedule_current": lim.schedule,
            "ocpp_current": lim.ocpp,
            "em_current": 6 if lim.em_offline else lim.em,
        }
        if self.profile.legacy_api:
            return {_LEGACY_SYSTEM_CURRENT_KEYS[k]: v for k, v in values.items()}
        values["temperature_current"] = lim.temperature
        values["user_power_current"] = min(
            lim.user_power, self._config.user_power // 230 // self.profile.phases
        )
        return values

    def _error_flags(self, flags: set[str]) -> JSONDict:
        if not self.profile.legacy_api:
            return {name: name in flags for name in ERROR_FLAGS}
        reply = {name: name in flags for name in ERROR_FLAGS[:-1]}
        reply["state_machine_e_activated"] = reply.pop("state_e_activated")
        return reply

    def _counters_config(self) -> JSONDict:
        c = self._counters
        reply: JSONDict = {
            "total_charged_time": int(c.total_time_s // 60),
            "total_charged_sessions": c.sessions,
            "total_charged_energy": round(c.total_wh / 1000.0, 3),
            "last_session_energy": c.last_session_wh,
        }
        if self.profile.legacy_api:
            reply["total_charged_energy"] = int(c.total_wh // 1000)
            reply["reset_counter"] = c.reset_counter
        return reply

    def _app_config(self) -> JSONDict:
        cfg = self._config
        reply: JSONDict = {
            "headless": cfg.headless,
            "install_current": cfg.install,
            "led_max_brightness": cfg.brightness,
            "led_dimming_delay": 0,
            "charger_locked": self._segment.state == "LOCKED",
            "auto_update": True,
            "led_template_enabled": False,
            "led_template": "",
            "charger_alias": self.alias,
            "latitude": 0.0,
            "longitude": 0.0,
            "ocpp_server_link": "",
            "connected_phase": self.profile.phases,
            "owner_id": "",
            "user_current": cfg.user,
            "gmt_offset": 2,
            "precise_pwm_mode": False,
            "energy_management_enabled": cfg.em_enabled,
            "charging_schedule_enabled": cfg.schedule_enabled,
            "em_id": "",
            "timezone": "Europe/Bucharest",
        }
        if self.profile.legacy_api:
            del reply["auto_update"]
        else:
            reply["user_power"] = cfg.user_power
        return reply

    def _charger_config(self) -> JSONDict:
        cfg = self._config
        return {
            "overtemp_threshold": cfg.overtemp,
            "critical_temp_threshold": cfg.critical,
            "voltage_gain": 1.0,
            "current_gain": 1.0,
            "calibration_temperature": 25.0,
            "rcd_enabled": True,
            "serial_number": self.serial,
            "board_revision": cfg.board,
            "temp_offset": 0.0,
        }


class Meter(Device):
    """An energy meter whose per-phase load changes every ten simulated seconds."""

    _BUCKET = 10.0

    def __init__(
        self,
        name: str,
        profile: Profile,
        *,
        seed: int,
        serial: int,
        alias: str,
        ssid: str,
        clock: Clock,
    ) -> None:
        super().__init__(
            name, profile, seed=seed, serial=serial, alias=alias, ssid=ssid, clock=clock
        )
        rng = self._rng
        self._breaker = rng.choice((25, 32, 40, 63))
        self._mode = rng.randrange(5)
        self._base = [rng.uniform(0.5, 15.0) for _ in range(3)]
        self._pv_phase = rng.randrange(3) if profile.phases == 3 and rng.random() < 0.5 else None
        self._bucket = -1
        self._values: JSONDict = {}
        self._board = rng.choice("AB")
        self._advance(self._offset)
        self.methods["Meter_info.Get"] = self._meter_info
        if "merged_meter_info" not in profile.quirks:
            self.methods["M2w_config.Get"] = lambda: {
                "serial_number": self.serial,
                "board_revision": self._board,
            }

    def _advance(self, t: float) -> bool:
        bucket = int(t // self._BUCKET)
        if bucket == self._bucket:
            return False
        self._bucket = bucket
        rng = random.Random(self._key ^ bucket)
        current, voltage, power, factor = [], [], [], []
        for phase in range(3):
            if phase >= self.profile.phases:
                current.append(0.0)
                voltage.append(0.0)
                power.append(0.0)
                factor.append(0.0)
                continue
            amps = self._base[phase] * rng.uniform(0.6, 1.4)
            volts = rng.uniform(226.0, 242.0)
            pf = rng.uniform(0.85, 0.99)
            sign = -1.0 if phase == self._pv_phase and rng.random() < 0.4 else 1.0
            current.append(round(amps, 3))
            voltage.append(round(volts, 3))
            power.append(round(sign * amps * volts * pf, 2))
            factor.append(round(pf, 3))
        self._values = {
            "current": current,
            "voltage": voltage,
            "active_p": power,
            "power_factor": factor,
        }
        return True

    def _meter_info(self) -> JSONDict:
        v = self._values
        if "merged_meter_info" in self.profile.quirks:
            # The vendor library's mock: Meter_info, App_config and Sw_version keys in one.
            return {
                "current": v["current"],
                "voltage": v["voltage"],
                "active_p": v["active_p"],
                "fw_version": self.profile.fw_version,
                "breaker_rating": self._breaker,
                "power_factor": v["power_factor"],
                "load_balancing_mode": self._mode,
            }
        return {
            "current": v["current"],
            "voltage": v["voltage"],
            "active_p": v["active_p"],
            "power_factor": v["power_factor"],
        }

    def _app_config(self) -> JSONDict:
        return {
            "breaker_rating": self._breaker,
            "load_balancing_mode": self._mode,
            "lb_meter_type": "Onboard",
            "lb_pv_minimum_current": 6,
            "reverse_current": True,
            "energy_management_enabled": False,
            "lb_hybrid_current": 6,
            "lb_meter_offline_current": 6,
            "car_minimum_current": 6,
            "auto_update": True,
            "chargers_list": "",
            "owner_id": "",
        }


def make_device(
    name: str,
    profile: str,
    *,
    seed: int = 0,
    serial: int | None = None,
    alias: str | None = None,
    ssid: str = "HomeNet",
    clock: Clock | None = None,
    frozen: bool = False,
    anomalies: Anomalies | None = None,
) -> Device:
    """Build a device of a named profile; ValueError for an unknown profile.

    ``frozen`` pins the device at a deterministic snapshot (chargers mid-charge); without an
    explicit ``clock`` it also gets a frozen one. ``anomalies`` (chargers only): the chances
    of irregular sessions; when None, ``Anomalies()``, or none at all for a frozen snapshot.
    """
    try:
        prof = PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}") from None
    serial = default_serial(seed, name) if serial is None else serial
    alias = name if alias is None else alias
    clock = clock or SimClock(frozen=frozen)
    if prof.kind == "meter":
        return Meter(name, prof, seed=seed, serial=serial, alias=alias, ssid=ssid, clock=clock)
    return Charger(
        name,
        prof,
        seed=seed,
        serial=serial,
        alias=alias,
        ssid=ssid,
        clock=clock,
        charging_snapshot=frozen,
        anomalies=anomalies,
    )
