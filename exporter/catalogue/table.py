"""The metric catalogue: the one table every output reads.

Each row says which RPC method and key a metric comes from, how the value is converted to a base
unit, its Prometheus type, labels and help text, and how it is written to InfluxDB. The Prometheus
renderer, the InfluxDB serializer, the generated metrics reference (docs/metrics.md) and the
dashboard tests all read this table; adding a metric is one row plus a test.

The public contract for names, labels and units is shared/METRICS.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"
    STATESET = "stateset"  # exposed as gauge: one series per state, exactly one is 1
    INFO = "info"  # exposed as gauge: one series, value 1, metadata in labels


class Group(StrEnum):
    HEALTH = "health"  # every device, also while down
    LIVE = "live"  # dropped while the device is down
    EXPORTER = "exporter"  # only on /metrics


class Cadence(StrEnum):
    EVERY = "every"  # each poll: the device's main method
    ON_ERRORS = "on_errors"  # only when Charger_info says has_active_errors (or omits it)
    SLOW = "slow"  # poll.slow_interval, and on a device's first poll (see poller)
    IDENTITY = "identity"  # poll.identity_interval, and on a device's first poll


CHARGER = "charger"
METER = "meter"


@dataclass(frozen=True)
class Src:
    """A key in one method's (normalised) reply."""

    method: str
    key: str


@dataclass(frozen=True)
class Method:
    """One read method of the device API and how often it is asked.

    A SLOW method with `slow_if` or `slow_unless` is asked at the slow cadence only while it
    matters, and otherwise once per identity interval: `slow_if` names a switch that must be on
    (the schedule, energy management), `slow_unless` values the main reply already carries."""

    name: str  # canonical spelling, e.g. "Charger_info.Get"
    cadence: Cadence
    kinds: frozenset[str]
    slow_if: Src | None = None
    slow_unless: tuple[Src, ...] = ()


CHARGER_AND_METER = frozenset({CHARGER, METER})
# Identification, as the vendor's client does it: Device_id.Get, then Charger_config.Get or
# M2w_config.Get (serial and board revision), then Sw_version.Get. Device_info.Get is an extra:
# the fallback for firmware without Device_id.Get, and the meters' alias and phases.
DEVICE_ID_METHOD = "Device_id.Get"
DEVICE_INFO_METHOD = "Device_info.Get"
METHODS: tuple[Method, ...] = (
    Method(DEVICE_ID_METHOD, Cadence.IDENTITY, CHARGER_AND_METER),
    Method("Charger_config.Get", Cadence.IDENTITY, frozenset({CHARGER})),
    Method("M2w_config.Get", Cadence.IDENTITY, frozenset({METER})),
    Method("Sw_version.Get", Cadence.IDENTITY, CHARGER_AND_METER),
    Method("Charger_info.Get", Cadence.EVERY, frozenset({CHARGER})),
    Method("Meter_info.Get", Cadence.EVERY, frozenset({METER})),
    Method("Active_errors.Get", Cadence.ON_ERRORS, frozenset({CHARGER})),
    Method("App_config.Get", Cadence.SLOW, CHARGER_AND_METER),
    Method("System_currents.Get", Cadence.SLOW, frozenset({CHARGER})),
    Method("Counters_config.Get", Cadence.SLOW, frozenset({CHARGER})),
    Method("Logged_errors.Get", Cadence.SLOW, frozenset({CHARGER})),
    Method("Wifi_status.Get", Cadence.SLOW, CHARGER_AND_METER),
    Method(
        "EM_status.Get",
        Cadence.SLOW,
        frozenset({CHARGER}),
        slow_if=Src("App_config.Get", "energy_management_enabled"),
    ),
    Method(
        "Dynamic_current.Get",
        Cadence.SLOW,
        frozenset({CHARGER}),
        slow_unless=(
            Src("Charger_info.Get", "dynamic_current"),
            Src("Charger_info.Get", "relay_mode"),
        ),
    ),
    Method(
        "Charging_schedule.Get",
        Cadence.SLOW,
        frozenset({CHARGER}),
        slow_if=Src("App_config.Get", "charging_schedule_enabled"),
    ),
    Method(DEVICE_INFO_METHOD, Cadence.SLOW, frozenset({METER})),
)
METHOD_NAMES: frozenset[str] = frozenset(m.name for m in METHODS)
MAIN_METHOD = {CHARGER: "Charger_info.Get", METER: "Meter_info.Get"}
# Identity methods by kind, in the order they are asked (after Device_id.Get).
IDENTITY_METHODS = {
    kind: tuple(
        m.name
        for m in METHODS
        if m.cadence is Cadence.IDENTITY and kind in m.kinds and m.name != DEVICE_ID_METHOD
    )
    for kind in (CHARGER, METER)
}


@dataclass(frozen=True)
class Model:
    name: str
    kind: str
    phases: int  # how many phases the hardware has; single-phase models export L1 only


MODELS: Mapping[str, Model] = {
    "1p7k": Model("1p7k", CHARGER, 1),
    "3p22k": Model("3p22k", CHARGER, 3),
    "em": Model("em", METER, 1),
    "3em": Model("3em", METER, 3),
    "unknown": Model("unknown", CHARGER, 3),
}
# device_id prefix → model (METRICS.md, "lektrico_device_info")
DEVICE_ID_PREFIXES: tuple[tuple[str, str], ...] = (
    ("1p7k_", "1p7k"),
    ("3p22k_", "3p22k"),
    ("m2w_81", "em"),
    ("m2w_83", "3em"),
)
PHASES = ("L1", "L2", "L3")


def model_from_device_id(device_id: str | None) -> str:
    if device_id:
        lowered = device_id.strip().lower()
        for prefix, model in DEVICE_ID_PREFIXES:
            if lowered.startswith(prefix):
                return model
    return "unknown"


# ---- how a value is taken from the device's replies -------------------------------------------


@dataclass(frozen=True)
class Number:
    """A number: the first source present wins; bools count as 0/1 where `boolean`."""

    sources: tuple[Src, ...]
    scale: float = 1.0
    boolean: bool = False
    invert: bool = False  # for booleans that mean the opposite of the metric (em_offline)


@dataclass(frozen=True)
class PerPhase:
    """An array ordered L1, L2, L3; single-phase models export L1 only."""

    source: Src
    scalar_fallback: str | None = None  # single-phase old firmware: "current"/"voltage" scalar
    scale: float = 1.0


@dataclass(frozen=True)
class Labelled:
    """Several keys, one series each, told apart by the metric's label."""

    entries: tuple[tuple[str, tuple[Src, ...]], ...]
    scale: float = 1.0
    boolean: bool = False


@dataclass(frozen=True)
class StateSet:
    """A state reported as a string: one series per known state, the current one is 1."""

    sources: tuple[Src, ...]
    states: tuple[str, ...]


@dataclass(frozen=True)
class EnumSet:
    """A state reported as an integer code; codes outside the map become "unknown"."""

    source: Src
    codes: Mapping[int, str]
    fallbacks: tuple[Src, ...] = ()  # asked in order when `source` is absent


@dataclass(frozen=True)
class Flags:
    """Every boolean key a method reports, one series each (error flags)."""

    method: str


@dataclass(frozen=True)
class Info:
    """Metadata as labels of a series whose value is 1."""

    fields: tuple[tuple[str, tuple[Src, ...]], ...]


@dataclass(frozen=True)
class Length:
    """How many items an array holds (the intervals of a schedule)."""

    source: Src


@dataclass(frozen=True)
class Schedule:
    """The charging schedule at the poll's time, in the charger's own time zone (App_config
    `timezone`, else `gmt_offset` hours, else UTC): `part` "active" is 1 while the schedule is
    enabled and one of its intervals covers that time; "current" is that interval's current."""

    part: str  # "active" | "current"


@dataclass(frozen=True)
class Computed:
    """Filled in by the poller, not read from a reply (health, exporter's own)."""


@dataclass(frozen=True)
class Derived(Computed):
    """Worked out by the session ledger from successive polls and kept in the state store
    (exporter/sessions): not read from the device."""


Extract = (
    Number
    | PerPhase
    | Labelled
    | StateSet
    | EnumSet
    | Flags
    | Info
    | Length
    | Schedule
    | Computed
    | Derived
)
WHOLE_REPLY = "*"  # the key of a Src that stands for every key of the method (Flags)
CS = "Charging_schedule.Get"
SCHEDULE_INPUTS = (
    Src(CS, "charging_schedule"),
    Src("App_config.Get", "charging_schedule_enabled"),
    Src("App_config.Get", "timezone"),
    Src("App_config.Get", "gmt_offset"),
)


def inputs_of(extract: Extract) -> tuple[Src, ...]:
    """Every reply value a row reads, in a fixed order; its samples depend on nothing else
    (but the device's model)."""
    if isinstance(extract, Number | StateSet):
        return extract.sources
    if isinstance(extract, PerPhase):
        if extract.scalar_fallback is None:
            return (extract.source,)
        return (extract.source, Src(extract.source.method, extract.scalar_fallback))
    if isinstance(extract, EnumSet):
        return (extract.source, *extract.fallbacks)
    if isinstance(extract, Labelled):
        return tuple(s for _, sources in extract.entries for s in sources)
    if isinstance(extract, Info):
        return tuple(s for _, sources in extract.fields for s in sources)
    if isinstance(extract, Flags):
        return (Src(extract.method, WHOLE_REPLY),)
    if isinstance(extract, Length):
        return (extract.source,)
    if isinstance(extract, Schedule):
        return SCHEDULE_INPUTS
    return ()


def time_dependent(extract: Extract) -> bool:
    """Whether a row's samples depend on the time of the poll, not only on the replies."""
    return isinstance(extract, Schedule)


@dataclass(frozen=True)
class Influx:
    """Where a metric goes in InfluxDB: measurement suffix, field name and field type.

    Labels other than device/user labels become tags, except where `label_as_field` asks for
    one field per label value, named `field` + value (error flags, config flags, limits): that
    keeps one point per poll. Info metrics with `label_as_field` write each label as a string
    field named `field` + label name. Statesets are written as one string field holding the
    current state. Counters are "int". The serializer is exporter/outputs/influx/lines.py.
    """

    measurement: str
    field: str
    type: str  # "float" | "int" | "bool" | "string"
    label_as_field: bool = False


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    help: str
    unit: str
    group: Group
    kinds: frozenset[str]
    extract: Extract
    labels: tuple[str, ...] = ()  # beyond `device` and the user's labels
    influx: Influx | None = None
    valid: tuple[float, float] | None = None  # plausible range; values outside are dropped
    notes: str = ""

    @property
    def prom_type(self) -> str:
        return "counter" if self.kind is Kind.COUNTER else "gauge"


BOTH = frozenset({CHARGER, METER})
CHG = frozenset({CHARGER})
MTR = frozenset({METER})

CI = "Charger_info.Get"
MI = "Meter_info.Get"
SC = "System_currents.Get"
CC = "Counters_config.Get"
AC = "App_config.Get"
CF = "Charger_config.Get"
WS = "Wifi_status.Get"
DI = "Device_info.Get"
DID = "Device_id.Get"
SV = "Sw_version.Get"
M2W = "M2w_config.Get"
DC = "Dynamic_current.Get"

CHARGER_STATES = ("A", "B", "B_AUTH", "B_PAUSE", "B_SCHEDULER", "C", "D", "E", "F", "OTA", "LOCKED")
LIMIT_REASONS: Mapping[int, str] = {
    0: "hardware",
    1: "install",
    2: "user",
    3: "dynamic",
    4: "schedule",
    5: "em_offline",
    6: "em",
    7: "ocpp",
    8: "temperature",
    9: "phase_switching",
    10: "user",
    11: "single_phase_disabled",
}
LOAD_BALANCING_MODES: Mapping[int, str] = {
    0: "off",
    1: "power",
    2: "hybrid",
    3: "green",
    4: "power_share",
}
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
CONFIG_FLAGS: tuple[tuple[str, tuple[Src, ...]], ...] = (
    ("headless", (Src(AC, "headless"), Src(CI, "headless"))),
    ("charger_locked", (Src(AC, "charger_locked"),)),
    ("energy_management_enabled", (Src(AC, "energy_management_enabled"),)),
    ("charging_schedule_enabled", (Src(AC, "charging_schedule_enabled"),)),
    ("auto_update", (Src(AC, "auto_update"),)),
    ("precise_pwm_mode", (Src(AC, "precise_pwm_mode"),)),
    ("led_template_enabled", (Src(AC, "led_template_enabled"),)),
    ("rcd_enabled", (Src(CF, "rcd_enabled"),)),
)
CURRENT_LIMITS: tuple[tuple[str, tuple[Src, ...]], ...] = (
    ("cable", (Src(SC, "cable_current"),)),
    ("install", (Src(CI, "install_current"), Src(SC, "install_current"))),
    (
        "dynamic",
        (Src(CI, "dynamic_current"), Src(DC, "dynamic_current"), Src(SC, "dynamic_current")),
    ),
    ("user", (Src(SC, "user_current"), Src(AC, "user_current"))),
    ("charging", (Src(SC, "charging_current"),)),
    ("system_max", (Src(SC, "system_max_current"),)),
    ("schedule", (Src(SC, "schedule_current"),)),
    ("ocpp", (Src(SC, "ocpp_current"),)),
    ("em", (Src(CI, "em_current"), Src(SC, "em_current"))),
    ("temperature", (Src(SC, "temperature_current"),)),
    ("user_power", (Src(SC, "user_power_current"),)),
)

KWH = 3.6e6
WH = 3600.0
AMPS = (-1000.0, 1000.0)
VOLTS = (0.0, 1000.0)
CELSIUS = (-60.0, 200.0)
NONNEG = (0.0, 1e15)


CATALOGUE: tuple[Metric, ...] = (
    # ---- device health ----
    Metric(
        "lektrico_up",
        Kind.GAUGE,
        "1 when the last poll of the device's main method succeeded.",
        "",
        Group.HEALTH,
        BOTH,
        Computed(),
        influx=Influx("device", "up", "bool"),
    ),
    Metric(
        "lektrico_poll_duration_seconds",
        Kind.GAUGE,
        "Wall time of the last poll of the device.",
        "seconds",
        Group.HEALTH,
        BOTH,
        Computed(),
        influx=Influx("device", "poll_duration_seconds", "float"),
    ),
    Metric(
        "lektrico_last_poll_success_timestamp_seconds",
        Kind.GAUGE,
        "Unix time of the last good poll of the device.",
        "seconds",
        Group.HEALTH,
        BOTH,
        Computed(),
    ),
    Metric(
        "lektrico_device_info",
        Kind.INFO,
        "Identity and firmware of the device.",
        "",
        Group.HEALTH,
        BOTH,
        Info(
            (
                ("device_id", (Src(DID, "device_id"), Src(DI, "device_id"))),
                ("model", ()),
                ("serial", (Src(CF, "serial_number"), Src(M2W, "serial_number"))),
                (
                    "fw_version",
                    (
                        Src(SV, "fw_version"),
                        Src(CI, "fw_version"),
                        Src(MI, "fw_version"),
                        Src(DI, "fw_version"),
                    ),
                ),
                ("fw_id", (Src(SV, "fw_id"),)),
                ("board_revision", (Src(CF, "board_revision"), Src(M2W, "board_revision"))),
                ("alias", (Src(DI, "charger_alias"), Src(AC, "charger_alias"))),
            )
        ),
        labels=("device_id", "model", "serial", "fw_version", "fw_id", "board_revision", "alias"),
        influx=Influx("device", "", "string", label_as_field=True),
    ),
    Metric(
        "lektrico_method_supported",
        Kind.GAUGE,
        "1 for each read method the device answered, 0 for one it does not support.",
        "",
        Group.HEALTH,
        BOTH,
        Computed(),
        labels=("method",),
        influx=Influx("device", "method_supported_", "bool", label_as_field=True),
        notes="Learned once per identity refresh: a method the device does not support is not"
        " asked again until the next identity refresh or a firmware change.",
    ),
    # ---- charger live values ----
    Metric(
        "lektrico_charger_state",
        Kind.STATESET,
        "Charger state (IEC 61851 letter or extended state); exactly one series is 1.",
        "",
        Group.LIVE,
        CHG,
        StateSet((Src(CI, "extended_charger_state"), Src(CI, "charger_state")), CHARGER_STATES),
        labels=("state",),
        influx=Influx("charger", "state", "string"),
    ),
    Metric(
        "lektrico_power_watts",
        Kind.GAUGE,
        "Instant charging power.",
        "watts",
        Group.LIVE,
        CHG,
        Number((Src(CI, "instant_power"),)),
        influx=Influx("charger", "power_watts", "float"),
        valid=(-1e6, 1e6),
    ),
    Metric(
        "lektrico_session_energy_joules",
        Kind.GAUGE,
        "Energy charged in the current session.",
        "joules",
        Group.LIVE,
        CHG,
        Number((Src(CI, "session_energy"),), scale=WH),
        influx=Influx("charger", "session_energy_joules", "float"),
        valid=NONNEG,
    ),
    Metric(
        "lektrico_session_duration_seconds",
        Kind.GAUGE,
        "Charging time of the current session.",
        "seconds",
        Group.LIVE,
        CHG,
        Number((Src(CI, "charging_time"),)),
        influx=Influx("charger", "session_duration_seconds", "float"),
        valid=NONNEG,
    ),
    Metric(
        "lektrico_session_id",
        Kind.GAUGE,
        "Identifier of the current charging session.",
        "",
        Group.LIVE,
        CHG,
        Number((Src(CI, "session_id"),)),
        influx=Influx("charger", "session_id", "int"),
        valid=NONNEG,
    ),
    Metric(
        "lektrico_current_amperes",
        Kind.GAUGE,
        "Charging current per phase.",
        "amperes",
        Group.LIVE,
        CHG,
        PerPhase(Src(CI, "currents"), scalar_fallback="current"),
        labels=("phase",),
        influx=Influx("charger_phase", "current_amperes", "float"),
        valid=AMPS,
    ),
    Metric(
        "lektrico_voltage_volts",
        Kind.GAUGE,
        "Voltage per phase.",
        "volts",
        Group.LIVE,
        CHG,
        PerPhase(Src(CI, "voltages"), scalar_fallback="voltage"),
        labels=("phase",),
        influx=Influx("charger_phase", "voltage_volts", "float"),
        valid=VOLTS,
    ),
    Metric(
        "lektrico_temperature_celsius",
        Kind.GAUGE,
        "Board temperature.",
        "celsius",
        Group.LIVE,
        CHG,
        Number((Src(CI, "temperature"),)),
        influx=Influx("charger", "temperature_celsius", "float"),
        valid=CELSIUS,
    ),
    Metric(
        "lektrico_energy_joules_total",
        Kind.COUNTER,
        "Energy charged over the charger's life.",
        "joules",
        Group.LIVE,
        CHG,
        Number((Src(CI, "total_charged_energy"), Src(CC, "total_charged_energy")), scale=KWH),
        influx=Influx("charger", "energy_joules_total", "int"),
        valid=NONNEG,
    ),
    Metric(
        "lektrico_offered_current_amperes",
        Kind.GAUGE,
        "Current offered to the car (the PWM current).",
        "amperes",
        Group.LIVE,
        CHG,
        Number((Src(CI, "pwm_current"),)),
        influx=Influx("charger", "offered_current_amperes", "float"),
        valid=AMPS,
    ),
    Metric(
        "lektrico_paused",
        Kind.GAUGE,
        "1 when charging is paused.",
        "",
        Group.LIVE,
        CHG,
        Number((Src(CI, "charger_is_paused"),), boolean=True),
        influx=Influx("charger", "paused", "bool"),
    ),
    Metric(
        "lektrico_heap_free_bytes",
        Kind.GAUGE,
        "Free heap of the charger's controller.",
        "bytes",
        Group.LIVE,
        CHG,
        Number((Src(CI, "heap_free"),)),
        influx=Influx("charger", "heap_free_bytes", "int"),
        valid=NONNEG,
    ),
    Metric(
        "lektrico_current_limit_reason",
        Kind.STATESET,
        "Why the charging current is limited; exactly one series is 1.",
        "",
        Group.LIVE,
        CHG,
        EnumSet(Src(CI, "current_limit_reason"), LIMIT_REASONS),
        labels=("reason",),
        influx=Influx("charger", "current_limit_reason", "string"),
    ),
    # ---- current limits ----
    Metric(
        "lektrico_current_limit_amperes",
        Kind.GAUGE,
        "Configured and dynamic current limits.",
        "amperes",
        Group.LIVE,
        CHG,
        Labelled(CURRENT_LIMITS),
        labels=("limit",),
        influx=Influx("charger", "current_limit_amperes_", "float", label_as_field=True),
        valid=AMPS,
    ),
    Metric(
        "lektrico_relay_mode",
        Kind.GAUGE,
        "Relay (phase switching) mode as the charger reports it.",
        "",
        Group.LIVE,
        CHG,
        Number((Src(CI, "relay_mode"), Src(DC, "relay_mode"))),
        influx=Influx("charger", "relay_mode", "int"),
        valid=(-1000.0, 1000.0),
    ),
    # ---- charging schedule ----
    Metric(
        "lektrico_schedule_enabled",
        Kind.GAUGE,
        "1 when the charging schedule is enabled.",
        "",
        Group.LIVE,
        CHG,
        Number((Src(AC, "charging_schedule_enabled"),), boolean=True),
        influx=Influx("charger", "schedule_enabled", "bool"),
    ),
    Metric(
        "lektrico_schedule_intervals",
        Kind.GAUGE,
        "Intervals in the charging schedule.",
        "",
        Group.LIVE,
        CHG,
        Length(Src(CS, "charging_schedule")),
        influx=Influx("charger", "schedule_intervals", "int"),
    ),
    Metric(
        "lektrico_schedule_active",
        Kind.GAUGE,
        "1 while an interval of the enabled schedule covers the charger's local time.",
        "",
        Group.LIVE,
        CHG,
        Schedule("active"),
        influx=Influx("charger", "schedule_active", "bool"),
        notes="Evaluated at each poll in the charger's time zone: App_config timezone, else"
        " gmt_offset hours, else UTC. Intervals run from start (day 1-7, Monday first, hour,"
        " minute) to end, wrapping over the week's end.",
    ),
    Metric(
        "lektrico_schedule_current_amperes",
        Kind.GAUGE,
        "Current of the active schedule interval (0: paused by the schedule).",
        "amperes",
        Group.LIVE,
        CHG,
        Schedule("current"),
        influx=Influx("charger", "schedule_current_amperes", "float"),
        valid=AMPS,
        notes="Absent when no interval is active.",
    ),
    # ---- errors ----
    Metric(
        "lektrico_error_active",
        Kind.GAUGE,
        "1 while the error flag is active.",
        "",
        Group.LIVE,
        CHG,
        Flags("Active_errors.Get"),
        labels=("error",),
        influx=Influx("charger_errors", "active_", "bool", label_as_field=True),
    ),
    Metric(
        "lektrico_error_logged",
        Kind.GAUGE,
        "1 when the error flag is in the device's log.",
        "",
        Group.LIVE,
        CHG,
        Flags("Logged_errors.Get"),
        labels=("error",),
        influx=Influx("charger_errors", "logged_", "bool", label_as_field=True),
    ),
    # ---- counters ----
    Metric(
        "lektrico_charging_duration_seconds_total",
        Kind.COUNTER,
        "Time spent charging over the charger's life.",
        "seconds",
        Group.LIVE,
        CHG,
        Number((Src(CC, "total_charged_time"),), scale=60.0),
        influx=Influx("charger", "charging_duration_seconds_total", "int"),
        valid=NONNEG,
    ),
    Metric(
        "lektrico_sessions_total",
        Kind.COUNTER,
        "Charging sessions over the charger's life.",
        "",
        Group.LIVE,
        CHG,
        Number((Src(CC, "total_charged_sessions"),)),
        influx=Influx("charger", "sessions_total", "int"),
        valid=NONNEG,
    ),
    Metric(
        "lektrico_resets_total",
        Kind.COUNTER,
        "Controller resets (only where reported).",
        "",
        Group.LIVE,
        CHG,
        Number((Src(CC, "reset_counter"),)),
        influx=Influx("charger", "resets_total", "int"),
        valid=NONNEG,
    ),
    Metric(
        "lektrico_last_session_energy_joules",
        Kind.GAUGE,
        "Energy of the last finished session.",
        "joules",
        Group.LIVE,
        CHG,
        Number((Src(CC, "last_session_energy"),), scale=WH),
        influx=Influx("charger", "last_session_energy_joules", "float"),
        valid=NONNEG,
    ),
    # ---- configuration and connectivity ----
    Metric(
        "lektrico_config_flag",
        Kind.GAUGE,
        "Configuration switches, 1 when on.",
        "",
        Group.LIVE,
        BOTH,
        Labelled(CONFIG_FLAGS, boolean=True),
        labels=("flag",),
        influx=Influx("device", "", "bool", label_as_field=True),
    ),
    Metric(
        "lektrico_led_brightness_ratio",
        Kind.GAUGE,
        "Maximum LED brightness (0-1).",
        "ratio",
        Group.LIVE,
        CHG,
        Number((Src(AC, "led_max_brightness"), Src(CI, "led_max_brightness")), scale=0.01),
        influx=Influx("charger", "led_brightness_ratio", "float"),
        valid=(0.0, 1.0),
    ),
    Metric(
        "lektrico_user_power_limit_watts",
        Kind.GAUGE,
        "Power limit set by the user.",
        "watts",
        Group.LIVE,
        CHG,
        Number((Src(AC, "user_power"),)),
        influx=Influx("charger", "user_power_limit_watts", "float"),
        valid=NONNEG,
    ),
    Metric(
        "lektrico_connected_phases",
        Kind.GAUGE,
        "Phases the device is wired to.",
        "",
        Group.LIVE,
        BOTH,
        Number((Src(DI, "connected_phase"), Src(AC, "connected_phase"))),
        influx=Influx("device", "connected_phases", "int"),
        valid=(0.0, 3.0),
    ),
    Metric(
        "lektrico_temperature_threshold_celsius",
        Kind.GAUGE,
        "Temperatures at which the charger derates (overtemp) and stops (critical).",
        "celsius",
        Group.LIVE,
        CHG,
        Labelled(
            (
                ("overtemp", (Src(CF, "overtemp_threshold"),)),
                ("critical", (Src(CF, "critical_temp_threshold"),)),
            )
        ),
        labels=("threshold",),
        influx=Influx("charger", "temperature_threshold_celsius_", "float", label_as_field=True),
        valid=CELSIUS,
    ),
    Metric(
        "lektrico_wifi_connected",
        Kind.GAUGE,
        "1 when the device's Wi-Fi is connected.",
        "",
        Group.LIVE,
        BOTH,
        Number((Src(WS, "connected"),), boolean=True),
        influx=Influx("device", "wifi_connected", "bool"),
    ),
    Metric(
        "lektrico_wifi_signal_dbm",
        Kind.GAUGE,
        "Wi-Fi signal strength (RSSI).",
        "dBm",
        Group.LIVE,
        BOTH,
        Number((Src(WS, "rssi"),)),
        influx=Influx("device", "wifi_signal_dbm", "float"),
        valid=(-150.0, 20.0),
    ),
    Metric(
        "lektrico_wifi_info",
        Kind.INFO,
        "Wi-Fi network the device is on.",
        "",
        Group.LIVE,
        BOTH,
        Info(
            (
                ("ssid", (Src(WS, "sta_name"),)),
                ("bssid", (Src(WS, "bssid"),)),
                ("ip", (Src(WS, "sta_ip"),)),
            )
        ),
        labels=("ssid", "bssid", "ip"),
        influx=Influx("device", "wifi_", "string", label_as_field=True),
    ),
    Metric(
        "lektrico_em_connected",
        Kind.GAUGE,
        "1 when the charger reaches its energy-management meter.",
        "",
        Group.LIVE,
        CHG,
        Number((Src("EM_status.Get", "em_offline"),), boolean=True, invert=True),
        influx=Influx("charger", "em_connected", "bool"),
    ),
    # ---- energy meters ----
    Metric(
        "lektrico_meter_current_amperes",
        Kind.GAUGE,
        "Meter current per phase.",
        "amperes",
        Group.LIVE,
        MTR,
        PerPhase(Src(MI, "current")),
        labels=("phase",),
        influx=Influx("meter_phase", "current_amperes", "float"),
        valid=AMPS,
    ),
    Metric(
        "lektrico_meter_voltage_volts",
        Kind.GAUGE,
        "Meter voltage per phase.",
        "volts",
        Group.LIVE,
        MTR,
        PerPhase(Src(MI, "voltage")),
        labels=("phase",),
        influx=Influx("meter_phase", "voltage_volts", "float"),
        valid=VOLTS,
    ),
    Metric(
        "lektrico_meter_power_watts",
        Kind.GAUGE,
        "Meter active power per phase (negative when exporting).",
        "watts",
        Group.LIVE,
        MTR,
        PerPhase(Src(MI, "active_p")),
        labels=("phase",),
        influx=Influx("meter_phase", "power_watts", "float"),
        valid=(-1e6, 1e6),
    ),
    Metric(
        "lektrico_meter_power_factor",
        Kind.GAUGE,
        "Meter power factor per phase.",
        "ratio",
        Group.LIVE,
        MTR,
        PerPhase(Src(MI, "power_factor")),
        labels=("phase",),
        influx=Influx("meter_phase", "power_factor", "float"),
        valid=(-1.0, 1.0),
    ),
    Metric(
        "lektrico_meter_breaker_rating_amperes",
        Kind.GAUGE,
        "Main breaker rating.",
        "amperes",
        Group.LIVE,
        MTR,
        Number((Src(MI, "breaker_rating"), Src(AC, "breaker_rating"))),
        influx=Influx("meter", "breaker_rating_amperes", "float"),
        valid=(0.0, 10000.0),
    ),
    Metric(
        "lektrico_meter_load_balancing_mode",
        Kind.STATESET,
        "Load-balancing mode of the meter; exactly one series is 1.",
        "",
        Group.LIVE,
        MTR,
        # Meter_info of real meters may lack it (the library merges App_config into it).
        EnumSet(
            Src(MI, "load_balancing_mode"),
            LOAD_BALANCING_MODES,
            fallbacks=(Src(AC, "load_balancing_mode"),),
        ),
        labels=("mode",),
        influx=Influx("meter", "load_balancing_mode", "string"),
    ),
    # ---- exporter's own ----
    Metric(
        "lektrico_poll_errors_total",
        Kind.COUNTER,
        "Failed polls by reason.",
        "",
        Group.EXPORTER,
        BOTH,
        Computed(),
        labels=("reason",),
        influx=Influx("device", "poll_errors_total_", "int", label_as_field=True),
    ),
    Metric(
        "lektrico_method_errors_total",
        Kind.COUNTER,
        "Failures of read methods other than the main one; these never mark a device down.",
        "",
        Group.EXPORTER,
        BOTH,
        Computed(),
        labels=("method", "reason"),
        notes="reason unsupported when the failure (an error frame, an HTTP error status, a"
        " body that is not JSON) marked the method unsupported; else the failure's reason.",
    ),
    Metric(
        "lektrico_values_dropped_total",
        Kind.COUNTER,
        "Device values dropped: implausible (non-finite, out of range, wrong type) or duplicate.",
        "",
        Group.EXPORTER,
        BOTH,
        Computed(),
        labels=("reason",),
        influx=Influx("device", "values_dropped_total_", "int", label_as_field=True),
    ),
    # ---- derived by the exporter (exporter/sessions), kept in its state store ----
    Metric(
        "lektrico_sessions_recorded_total",
        Kind.COUNTER,
        "Charging sessions the exporter recorded as finished (derived).",
        "",
        Group.EXPORTER,
        CHG,
        Derived(),
    ),
    Metric(
        "lektrico_session_anomalies_total",
        Kind.COUNTER,
        "Anomalies seen in charging sessions, by kind (derived).",
        "",
        Group.EXPORTER,
        CHG,
        Derived(),
        labels=("kind",),
    ),
    Metric(
        "lektrico_charging_limited_seconds_total",
        Kind.COUNTER,
        "Time charging (state C) while the current was limited by the reason (derived).",
        "seconds",
        Group.EXPORTER,
        CHG,
        Derived(),
        labels=("reason",),
    ),
    Metric(
        "lektrico_charging_limited_energy_joules_total",
        Kind.COUNTER,
        "Energy charged while the current was limited by the reason (derived).",
        "joules",
        Group.EXPORTER,
        CHG,
        Derived(),
        labels=("reason",),
    ),
    Metric(
        "lektrico_tariff_energy_joules_total",
        Kind.COUNTER,
        "Energy charged in each configured tariff period, as tariff/period (derived).",
        "joules",
        Group.EXPORTER,
        CHG,
        Derived(),
        labels=("tariff",),
    ),
    Metric(
        "lektrico_energy_cost_total",
        Kind.COUNTER,
        "Cost of the energy charged in each tariff period, at the price in force (derived).",
        "",
        Group.EXPORTER,
        CHG,
        Derived(),
        labels=("tariff", "currency"),
    ),
    Metric(
        "lektrico_meter_energy_joules_total",
        Kind.COUNTER,
        "Meter energy per phase and direction, integrated from active power (derived).",
        "joules",
        Group.EXPORTER,
        MTR,
        Derived(),
        labels=("phase", "direction"),
    ),
    Metric(
        "lektrico_meter_energy_gap_seconds_total",
        Kind.COUNTER,
        "Time not integrated into meter energy: polls more than 3 intervals apart (derived).",
        "seconds",
        Group.EXPORTER,
        MTR,
        Derived(),
    ),
)

# Metrics without a device label, owned by the exporter process (prometheus-client registry).
EXPORTER_METRICS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    (
        "lektrico_exporter_build_info",
        "gauge",
        "Version of the exporter, value 1.",
        ("version", "python_version"),
    ),
    ("lektrico_devices_configured", "gauge", "Devices in the configuration.", ()),
    ("lektrico_devices_up", "gauge", "Devices whose last poll succeeded.", ()),
    ("lektrico_polls_total", "counter", "Device polls started.", ()),
    (
        "lektrico_polls_late_total",
        "counter",
        "Polls that started after their interval had passed (poller overloaded).",
        (),
    ),
    ("lektrico_device_requests_total", "counter", "HTTP requests sent to devices.", ()),
    ("lektrico_influxdb_points_written_total", "counter", "Points accepted by InfluxDB.", ()),
    ("lektrico_influxdb_points_buffered", "gauge", "Points waiting to be written.", ()),
    (
        "lektrico_influxdb_points_dropped_total",
        "counter",
        "Points dropped (buffer full, or rejected by InfluxDB).",
        ("reason",),
    ),
    ("lektrico_influxdb_write_errors_total", "counter", "Failed write requests.", ("reason",)),
    (
        "lektrico_influxdb_last_write_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful write.",
        (),
    ),
    (
        "lektrico_config_last_reload_successful",
        "gauge",
        "1 when the last configuration reload succeeded (or none was tried), else 0.",
        (),
    ),
    (
        "lektrico_config_last_reload_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful configuration load (start or reload).",
        (),
    ),
    (
        "lektrico_influxdb_spool_damaged_total",
        "counter",
        "Damaged InfluxDB spool files found at start and repaired without losing points.",
        ("reason",),
    ),
)

BY_NAME: Mapping[str, Metric] = {m.name: m for m in CATALOGUE}
POLL_ERROR_REASONS = ("timeout", "connect", "http", "json", "rpc", "schema")
METHOD_ERROR_REASONS = (*POLL_ERROR_REASONS, "unsupported")
ALL_METRIC_NAMES: frozenset[str] = frozenset(
    [m.name for m in CATALOGUE] + [name for name, *_ in EXPORTER_METRICS]
)
RESERVED_LABELS: frozenset[str] = frozenset(
    {"device", "instance", "job", "time", "_field", "_measurement"}
    | {label for m in CATALOGUE for label in m.labels}
    | {label for *_, labels in EXPORTER_METRICS for label in labels}
)


def methods_for(kind: str) -> tuple[Method, ...]:
    return tuple(m for m in METHODS if kind in m.kinds)
