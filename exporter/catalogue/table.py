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
    devices: frozenset[str]  # the kinds of device it applies to: charger, meter
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
# A main reply carrying none of these is malformed (the device is down, `schema`), not empty.
MAIN_REPLY_VALUES: Mapping[str, tuple[str, ...]] = {
    "Charger_info.Get": ("charger_state", "extended_charger_state", "instant_power"),
    "Meter_info.Get": ("current", "voltage", "active_p"),
}
# Reply values the poller reads itself, beyond the rows below: a firmware or unit change in the
# main reply (identify again), the identity methods, a new session (counters are due), and the
# active-errors shortcut. With the rows' inputs, the only keys a reply is trimmed to.
POLLER_INPUTS: tuple[Src, ...] = (
    *(Src(m, key) for m in MAIN_METHOD.values() for key in ("fw_version", "device_id")),
    *(Src(m, key) for m, keys in MAIN_REPLY_VALUES.items() for key in keys),
    Src(DEVICE_ID_METHOD, "device_id"),
    Src(DEVICE_INFO_METHOD, "device_id"),
    Src("Charger_info.Get", "session_id"),
    Src("Charger_info.Get", "has_active_errors"),
)
# Identity methods by kind, in the order they are asked (after Device_id.Get).
IDENTITY_METHODS = {
    kind: tuple(
        m.name
        for m in METHODS
        if m.cadence is Cadence.IDENTITY and kind in m.devices and m.name != DEVICE_ID_METHOD
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
    """Metadata as labels of a series whose value is 1.

    `identity` marks the device's identity: always exported (empty labels included), its
    `model` label the model the poller identified, and a charger's empty serial taken from its
    device_id (1p7k_500006)."""

    fields: tuple[tuple[str, tuple[Src, ...]], ...]
    identity: bool = False


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
CHARGING_SCHEDULE = "Charging_schedule.Get"
SCHEDULE_INPUTS = (
    Src(CHARGING_SCHEDULE, "charging_schedule"),
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
class OwnMetric:
    """One of the exporter's own process-wide metrics: no `device` label, on /metrics only,
    kept by prometheus-client (exporter.catalogue.selfmetrics)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    help: str
    unit: str
    group: Group
    devices: frozenset[str]  # the kinds of device it applies to: charger, meter
    extract: Extract
    labels: tuple[str, ...] = ()  # beyond `device` and the user's labels
    influx: Influx | None = None
    valid: tuple[float, float] | None = None  # plausible range; values outside are dropped
    notes: str = ""

    @property
    def prom_type(self) -> str:
        return "counter" if self.kind is Kind.COUNTER else "gauge"


CHARGERS_AND_METERS = frozenset({CHARGER, METER})
CHARGERS = frozenset({CHARGER})
METERS = frozenset({METER})

CHARGER_INFO = "Charger_info.Get"
METER_INFO = "Meter_info.Get"
SYSTEM_CURRENTS = "System_currents.Get"
COUNTERS_CONFIG = "Counters_config.Get"
APP_CONFIG = "App_config.Get"
CHARGER_CONFIG = "Charger_config.Get"
WIFI_STATUS = "Wifi_status.Get"
DEVICE_INFO = "Device_info.Get"
DEVICE_ID = "Device_id.Get"
SW_VERSION = "Sw_version.Get"
M2W_CONFIG = "M2w_config.Get"
DYNAMIC_CURRENT = "Dynamic_current.Get"
ACTIVE_ERRORS = "Active_errors.Get"
LOGGED_ERRORS = "Logged_errors.Get"

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
    ("headless", (Src(APP_CONFIG, "headless"), Src(CHARGER_INFO, "headless"))),
    ("charger_locked", (Src(APP_CONFIG, "charger_locked"),)),
    ("energy_management_enabled", (Src(APP_CONFIG, "energy_management_enabled"),)),
    ("charging_schedule_enabled", (Src(APP_CONFIG, "charging_schedule_enabled"),)),
    ("auto_update", (Src(APP_CONFIG, "auto_update"),)),
    ("precise_pwm_mode", (Src(APP_CONFIG, "precise_pwm_mode"),)),
    ("led_template_enabled", (Src(APP_CONFIG, "led_template_enabled"),)),
    ("rcd_enabled", (Src(CHARGER_CONFIG, "rcd_enabled"),)),
)
CURRENT_LIMITS: tuple[tuple[str, tuple[Src, ...]], ...] = (
    ("cable", (Src(SYSTEM_CURRENTS, "cable_current"),)),
    ("install", (Src(CHARGER_INFO, "install_current"), Src(SYSTEM_CURRENTS, "install_current"))),
    (
        "dynamic",
        (
            Src(CHARGER_INFO, "dynamic_current"),
            Src(DYNAMIC_CURRENT, "dynamic_current"),
            Src(SYSTEM_CURRENTS, "dynamic_current"),
        ),
    ),
    ("user", (Src(SYSTEM_CURRENTS, "user_current"), Src(APP_CONFIG, "user_current"))),
    ("charging", (Src(SYSTEM_CURRENTS, "charging_current"),)),
    ("system_max", (Src(SYSTEM_CURRENTS, "system_max_current"),)),
    ("schedule", (Src(SYSTEM_CURRENTS, "schedule_current"),)),
    ("ocpp", (Src(SYSTEM_CURRENTS, "ocpp_current"),)),
    ("em", (Src(CHARGER_INFO, "em_current"), Src(SYSTEM_CURRENTS, "em_current"))),
    ("temperature", (Src(SYSTEM_CURRENTS, "temperature_current"),)),
    ("user_power", (Src(SYSTEM_CURRENTS, "user_power_current"),)),
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
        name="lektrico_up",
        kind=Kind.GAUGE,
        help="1 when the last poll of the device's main method succeeded.",
        unit="",
        group=Group.HEALTH,
        devices=CHARGERS_AND_METERS,
        extract=Computed(),
        influx=Influx(measurement="device", field="up", type="bool"),
    ),
    Metric(
        name="lektrico_poll_duration_seconds",
        kind=Kind.GAUGE,
        help="Wall time of the last poll of the device.",
        unit="seconds",
        group=Group.HEALTH,
        devices=CHARGERS_AND_METERS,
        extract=Computed(),
        influx=Influx(measurement="device", field="poll_duration_seconds", type="float"),
    ),
    Metric(
        name="lektrico_last_poll_success_timestamp_seconds",
        kind=Kind.GAUGE,
        help="Unix time of the last good poll of the device.",
        unit="seconds",
        group=Group.HEALTH,
        devices=CHARGERS_AND_METERS,
        extract=Computed(),
    ),
    Metric(
        name="lektrico_device_info",
        kind=Kind.INFO,
        help="Identity and firmware of the device.",
        unit="",
        group=Group.HEALTH,
        devices=CHARGERS_AND_METERS,
        extract=Info(
            (
                ("device_id", (Src(DEVICE_ID, "device_id"), Src(DEVICE_INFO, "device_id"))),
                ("model", ()),
                (
                    "serial",
                    (Src(CHARGER_CONFIG, "serial_number"), Src(M2W_CONFIG, "serial_number")),
                ),
                (
                    "fw_version",
                    (
                        Src(SW_VERSION, "fw_version"),
                        Src(CHARGER_INFO, "fw_version"),
                        Src(METER_INFO, "fw_version"),
                        Src(DEVICE_INFO, "fw_version"),
                    ),
                ),
                ("fw_id", (Src(SW_VERSION, "fw_id"),)),
                (
                    "board_revision",
                    (Src(CHARGER_CONFIG, "board_revision"), Src(M2W_CONFIG, "board_revision")),
                ),
                ("alias", (Src(DEVICE_INFO, "charger_alias"), Src(APP_CONFIG, "charger_alias"))),
            ),
            identity=True,
        ),
        labels=("device_id", "model", "serial", "fw_version", "fw_id", "board_revision", "alias"),
        influx=Influx(measurement="device", field="", type="string", label_as_field=True),
    ),
    Metric(
        name="lektrico_method_supported",
        kind=Kind.GAUGE,
        help="1 for each read method the device answered, 0 for one it does not support.",
        unit="",
        group=Group.HEALTH,
        devices=CHARGERS_AND_METERS,
        extract=Computed(),
        labels=("method",),
        influx=Influx(
            measurement="device", field="method_supported_", type="bool", label_as_field=True
        ),
        notes="Learned once per identity refresh: a method the device does not support is not"
        " asked again until the next identity refresh or a firmware change.",
    ),
    # ---- charger live values ----
    Metric(
        name="lektrico_charger_state",
        kind=Kind.STATESET,
        help="Charger state (IEC 61851 letter or extended state); exactly one series is 1.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=StateSet(
            (Src(CHARGER_INFO, "extended_charger_state"), Src(CHARGER_INFO, "charger_state")),
            CHARGER_STATES,
        ),
        labels=("state",),
        influx=Influx(measurement="charger", field="state", type="string"),
    ),
    Metric(
        name="lektrico_power_watts",
        kind=Kind.GAUGE,
        help="Instant charging power.",
        unit="watts",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src(CHARGER_INFO, "instant_power"),)),
        influx=Influx(measurement="charger", field="power_watts", type="float"),
        valid=(-1e6, 1e6),
    ),
    Metric(
        name="lektrico_session_energy_joules",
        kind=Kind.GAUGE,
        help="Energy charged in the current session.",
        unit="joules",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src(CHARGER_INFO, "session_energy"),), scale=WH),
        influx=Influx(measurement="charger", field="session_energy_joules", type="float"),
        valid=NONNEG,
    ),
    Metric(
        name="lektrico_session_duration_seconds",
        kind=Kind.GAUGE,
        help="Charging time of the current session.",
        unit="seconds",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src(CHARGER_INFO, "charging_time"),)),
        influx=Influx(measurement="charger", field="session_duration_seconds", type="float"),
        valid=NONNEG,
    ),
    Metric(
        name="lektrico_session_id",
        kind=Kind.GAUGE,
        help="Identifier of the current charging session.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src(CHARGER_INFO, "session_id"),)),
        influx=Influx(measurement="charger", field="session_id", type="int"),
        valid=NONNEG,
    ),
    Metric(
        name="lektrico_current_amperes",
        kind=Kind.GAUGE,
        help="Charging current per phase.",
        unit="amperes",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=PerPhase(Src(CHARGER_INFO, "currents"), scalar_fallback="current"),
        labels=("phase",),
        influx=Influx(measurement="charger_phase", field="current_amperes", type="float"),
        valid=AMPS,
    ),
    Metric(
        name="lektrico_voltage_volts",
        kind=Kind.GAUGE,
        help="Voltage per phase.",
        unit="volts",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=PerPhase(Src(CHARGER_INFO, "voltages"), scalar_fallback="voltage"),
        labels=("phase",),
        influx=Influx(measurement="charger_phase", field="voltage_volts", type="float"),
        valid=VOLTS,
    ),
    Metric(
        name="lektrico_temperature_celsius",
        kind=Kind.GAUGE,
        help="Board temperature.",
        unit="celsius",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src(CHARGER_INFO, "temperature"),)),
        influx=Influx(measurement="charger", field="temperature_celsius", type="float"),
        valid=CELSIUS,
    ),
    Metric(
        name="lektrico_energy_joules_total",
        kind=Kind.COUNTER,
        help="Energy charged over the charger's life.",
        unit="joules",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number(
            (
                Src(CHARGER_INFO, "total_charged_energy"),
                Src(COUNTERS_CONFIG, "total_charged_energy"),
            ),
            scale=KWH,
        ),
        influx=Influx(measurement="charger", field="energy_joules_total", type="int"),
        valid=NONNEG,
    ),
    Metric(
        name="lektrico_offered_current_amperes",
        kind=Kind.GAUGE,
        help="Current offered to the car (the PWM current).",
        unit="amperes",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src(CHARGER_INFO, "pwm_current"),)),
        influx=Influx(measurement="charger", field="offered_current_amperes", type="float"),
        valid=AMPS,
    ),
    Metric(
        name="lektrico_paused",
        kind=Kind.GAUGE,
        help="1 when charging is paused.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src(CHARGER_INFO, "charger_is_paused"),), boolean=True),
        influx=Influx(measurement="charger", field="paused", type="bool"),
    ),
    Metric(
        name="lektrico_heap_free_bytes",
        kind=Kind.GAUGE,
        help="Free heap of the charger's controller.",
        unit="bytes",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src(CHARGER_INFO, "heap_free"),)),
        influx=Influx(measurement="charger", field="heap_free_bytes", type="int"),
        valid=NONNEG,
    ),
    Metric(
        name="lektrico_current_limit_reason",
        kind=Kind.STATESET,
        help="Why the charging current is limited; exactly one series is 1.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=EnumSet(Src(CHARGER_INFO, "current_limit_reason"), LIMIT_REASONS),
        labels=("reason",),
        influx=Influx(measurement="charger", field="current_limit_reason", type="string"),
    ),
    # ---- current limits ----
    Metric(
        name="lektrico_current_limit_amperes",
        kind=Kind.GAUGE,
        help="Configured and dynamic current limits.",
        unit="amperes",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Labelled(CURRENT_LIMITS),
        labels=("limit",),
        influx=Influx(
            measurement="charger", field="current_limit_amperes_", type="float", label_as_field=True
        ),
        valid=AMPS,
    ),
    Metric(
        name="lektrico_relay_mode",
        kind=Kind.GAUGE,
        help="Relay (phase switching) mode as the charger reports it.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src(CHARGER_INFO, "relay_mode"), Src(DYNAMIC_CURRENT, "relay_mode"))),
        influx=Influx(measurement="charger", field="relay_mode", type="int"),
        valid=(-1000.0, 1000.0),
    ),
    # ---- charging schedule ----
    Metric(
        name="lektrico_schedule_enabled",
        kind=Kind.GAUGE,
        help="1 when the charging schedule is enabled.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src(APP_CONFIG, "charging_schedule_enabled"),), boolean=True),
        influx=Influx(measurement="charger", field="schedule_enabled", type="bool"),
    ),
    Metric(
        name="lektrico_schedule_intervals",
        kind=Kind.GAUGE,
        help="Intervals in the charging schedule.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Length(Src(CHARGING_SCHEDULE, "charging_schedule")),
        influx=Influx(measurement="charger", field="schedule_intervals", type="int"),
    ),
    Metric(
        name="lektrico_schedule_active",
        kind=Kind.GAUGE,
        help="1 while an interval of the enabled schedule covers the charger's local time.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Schedule("active"),
        influx=Influx(measurement="charger", field="schedule_active", type="bool"),
        notes="Evaluated at each poll in the charger's time zone: App_config timezone, else"
        " gmt_offset hours, else UTC. Intervals run from start (day 1-7, Monday first, hour,"
        " minute) to end, wrapping over the week's end.",
    ),
    Metric(
        name="lektrico_schedule_current_amperes",
        kind=Kind.GAUGE,
        help="Current of the active schedule interval (0: paused by the schedule).",
        unit="amperes",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Schedule("current"),
        influx=Influx(measurement="charger", field="schedule_current_amperes", type="float"),
        valid=AMPS,
        notes="Absent when no interval is active.",
    ),
    # ---- errors ----
    Metric(
        name="lektrico_error_active",
        kind=Kind.GAUGE,
        help="1 while the error flag is active.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Flags(ACTIVE_ERRORS),
        labels=("error",),
        influx=Influx(
            measurement="charger_errors", field="active_", type="bool", label_as_field=True
        ),
    ),
    Metric(
        name="lektrico_error_logged",
        kind=Kind.GAUGE,
        help="1 when the error flag is in the device's log.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Flags(LOGGED_ERRORS),
        labels=("error",),
        influx=Influx(
            measurement="charger_errors", field="logged_", type="bool", label_as_field=True
        ),
    ),
    # ---- counters ----
    Metric(
        name="lektrico_charging_duration_seconds_total",
        kind=Kind.COUNTER,
        help="Time spent charging over the charger's life.",
        unit="seconds",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src(COUNTERS_CONFIG, "total_charged_time"),), scale=60.0),
        influx=Influx(measurement="charger", field="charging_duration_seconds_total", type="int"),
        valid=NONNEG,
    ),
    Metric(
        name="lektrico_sessions_total",
        kind=Kind.COUNTER,
        help="Charging sessions over the charger's life.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src(COUNTERS_CONFIG, "total_charged_sessions"),)),
        influx=Influx(measurement="charger", field="sessions_total", type="int"),
        valid=NONNEG,
    ),
    Metric(
        name="lektrico_resets_total",
        kind=Kind.COUNTER,
        help="Controller resets (only where reported).",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src(COUNTERS_CONFIG, "reset_counter"),)),
        influx=Influx(measurement="charger", field="resets_total", type="int"),
        valid=NONNEG,
    ),
    Metric(
        name="lektrico_last_session_energy_joules",
        kind=Kind.GAUGE,
        help="Energy of the last finished session.",
        unit="joules",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src(COUNTERS_CONFIG, "last_session_energy"),), scale=WH),
        influx=Influx(measurement="charger", field="last_session_energy_joules", type="float"),
        valid=NONNEG,
    ),
    # ---- configuration and connectivity ----
    Metric(
        name="lektrico_config_flag",
        kind=Kind.GAUGE,
        help="Configuration switches, 1 when on.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS_AND_METERS,
        extract=Labelled(CONFIG_FLAGS, boolean=True),
        labels=("flag",),
        influx=Influx(measurement="device", field="", type="bool", label_as_field=True),
    ),
    Metric(
        name="lektrico_led_brightness_ratio",
        kind=Kind.GAUGE,
        help="Maximum LED brightness (0-1).",
        unit="ratio",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number(
            (Src(APP_CONFIG, "led_max_brightness"), Src(CHARGER_INFO, "led_max_brightness")),
            scale=0.01,
        ),
        influx=Influx(measurement="charger", field="led_brightness_ratio", type="float"),
        valid=(0.0, 1.0),
    ),
    Metric(
        name="lektrico_user_power_limit_watts",
        kind=Kind.GAUGE,
        help="Power limit set by the user.",
        unit="watts",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src(APP_CONFIG, "user_power"),)),
        influx=Influx(measurement="charger", field="user_power_limit_watts", type="float"),
        valid=NONNEG,
    ),
    Metric(
        name="lektrico_connected_phases",
        kind=Kind.GAUGE,
        help="Phases the device is wired to.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS_AND_METERS,
        extract=Number((Src(DEVICE_INFO, "connected_phase"), Src(APP_CONFIG, "connected_phase"))),
        influx=Influx(measurement="device", field="connected_phases", type="int"),
        valid=(0.0, 3.0),
    ),
    Metric(
        name="lektrico_temperature_threshold_celsius",
        kind=Kind.GAUGE,
        help="Temperatures at which the charger derates (overtemp) and stops (critical).",
        unit="celsius",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Labelled(
            (
                ("overtemp", (Src(CHARGER_CONFIG, "overtemp_threshold"),)),
                ("critical", (Src(CHARGER_CONFIG, "critical_temp_threshold"),)),
            )
        ),
        labels=("threshold",),
        influx=Influx(
            measurement="charger",
            field="temperature_threshold_celsius_",
            type="float",
            label_as_field=True,
        ),
        valid=CELSIUS,
    ),
    Metric(
        name="lektrico_wifi_connected",
        kind=Kind.GAUGE,
        help="1 when the device's Wi-Fi is connected.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS_AND_METERS,
        extract=Number((Src(WIFI_STATUS, "connected"),), boolean=True),
        influx=Influx(measurement="device", field="wifi_connected", type="bool"),
    ),
    Metric(
        name="lektrico_wifi_signal_dbm",
        kind=Kind.GAUGE,
        help="Wi-Fi signal strength (RSSI).",
        unit="dBm",
        group=Group.LIVE,
        devices=CHARGERS_AND_METERS,
        extract=Number((Src(WIFI_STATUS, "rssi"),)),
        influx=Influx(measurement="device", field="wifi_signal_dbm", type="float"),
        valid=(-150.0, 20.0),
    ),
    Metric(
        name="lektrico_wifi_info",
        kind=Kind.INFO,
        help="Wi-Fi network the device is on.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS_AND_METERS,
        extract=Info(
            (
                ("ssid", (Src(WIFI_STATUS, "sta_name"),)),
                ("bssid", (Src(WIFI_STATUS, "bssid"),)),
                ("ip", (Src(WIFI_STATUS, "sta_ip"),)),
            )
        ),
        labels=("ssid", "bssid", "ip"),
        influx=Influx(measurement="device", field="wifi_", type="string", label_as_field=True),
    ),
    Metric(
        name="lektrico_em_connected",
        kind=Kind.GAUGE,
        help="1 when the charger reaches its energy-management meter.",
        unit="",
        group=Group.LIVE,
        devices=CHARGERS,
        extract=Number((Src("EM_status.Get", "em_offline"),), boolean=True, invert=True),
        influx=Influx(measurement="charger", field="em_connected", type="bool"),
    ),
    # ---- energy meters ----
    Metric(
        name="lektrico_meter_current_amperes",
        kind=Kind.GAUGE,
        help="Meter current per phase.",
        unit="amperes",
        group=Group.LIVE,
        devices=METERS,
        extract=PerPhase(Src(METER_INFO, "current")),
        labels=("phase",),
        influx=Influx(measurement="meter_phase", field="current_amperes", type="float"),
        valid=AMPS,
    ),
    Metric(
        name="lektrico_meter_voltage_volts",
        kind=Kind.GAUGE,
        help="Meter voltage per phase.",
        unit="volts",
        group=Group.LIVE,
        devices=METERS,
        extract=PerPhase(Src(METER_INFO, "voltage")),
        labels=("phase",),
        influx=Influx(measurement="meter_phase", field="voltage_volts", type="float"),
        valid=VOLTS,
    ),
    Metric(
        name="lektrico_meter_power_watts",
        kind=Kind.GAUGE,
        help="Meter active power per phase (negative when exporting).",
        unit="watts",
        group=Group.LIVE,
        devices=METERS,
        extract=PerPhase(Src(METER_INFO, "active_p")),
        labels=("phase",),
        influx=Influx(measurement="meter_phase", field="power_watts", type="float"),
        valid=(-1e6, 1e6),
    ),
    Metric(
        name="lektrico_meter_power_factor",
        kind=Kind.GAUGE,
        help="Meter power factor per phase.",
        unit="ratio",
        group=Group.LIVE,
        devices=METERS,
        extract=PerPhase(Src(METER_INFO, "power_factor")),
        labels=("phase",),
        influx=Influx(measurement="meter_phase", field="power_factor", type="float"),
        valid=(-1.0, 1.0),
    ),
    Metric(
        name="lektrico_meter_breaker_rating_amperes",
        kind=Kind.GAUGE,
        help="Main breaker rating.",
        unit="amperes",
        group=Group.LIVE,
        devices=METERS,
        extract=Number((Src(METER_INFO, "breaker_rating"), Src(APP_CONFIG, "breaker_rating"))),
        influx=Influx(measurement="meter", field="breaker_rating_amperes", type="float"),
        valid=(0.0, 10000.0),
    ),
    Metric(
        name="lektrico_meter_load_balancing_mode",
        kind=Kind.STATESET,
        help="Load-balancing mode of the meter; exactly one series is 1.",
        unit="",
        group=Group.LIVE,
        devices=METERS,
        # Meter_info of real meters may lack it (the library merges App_config into it).
        extract=EnumSet(
            Src(METER_INFO, "load_balancing_mode"),
            LOAD_BALANCING_MODES,
            fallbacks=(Src(APP_CONFIG, "load_balancing_mode"),),
        ),
        labels=("mode",),
        influx=Influx(measurement="meter", field="load_balancing_mode", type="string"),
    ),
    # ---- exporter's own ----
    Metric(
        name="lektrico_poll_errors_total",
        kind=Kind.COUNTER,
        help="Failed polls by reason.",
        unit="",
        group=Group.EXPORTER,
        devices=CHARGERS_AND_METERS,
        extract=Computed(),
        labels=("reason",),
        influx=Influx(
            measurement="device", field="poll_errors_total_", type="int", label_as_field=True
        ),
    ),
    Metric(
        name="lektrico_method_errors_total",
        kind=Kind.COUNTER,
        help="Failures of read methods other than the main one; these never mark a device down.",
        unit="",
        group=Group.EXPORTER,
        devices=CHARGERS_AND_METERS,
        extract=Computed(),
        labels=("method", "reason"),
        notes="reason unsupported when the failure (an error frame, an HTTP error status, a"
        " body that is not JSON) marked the method unsupported; else the failure's reason.",
    ),
    Metric(
        name="lektrico_values_dropped_total",
        kind=Kind.COUNTER,
        help=(
            "Device values dropped: implausible (non-finite, out of range, wrong type) or"
            " duplicate."
        ),
        unit="",
        group=Group.EXPORTER,
        devices=CHARGERS_AND_METERS,
        extract=Computed(),
        labels=("reason",),
        influx=Influx(
            measurement="device", field="values_dropped_total_", type="int", label_as_field=True
        ),
    ),
    # ---- derived by the exporter (exporter/sessions), kept in its state store ----
    Metric(
        name="lektrico_sessions_recorded_total",
        kind=Kind.COUNTER,
        help="Charging sessions the exporter recorded as finished (derived).",
        unit="",
        group=Group.EXPORTER,
        devices=CHARGERS,
        extract=Derived(),
    ),
    Metric(
        name="lektrico_session_anomalies_total",
        kind=Kind.COUNTER,
        help="Anomalies seen in charging sessions, by kind (derived).",
        unit="",
        group=Group.EXPORTER,
        devices=CHARGERS,
        extract=Derived(),
        labels=("kind",),
    ),
    Metric(
        name="lektrico_charging_limited_seconds_total",
        kind=Kind.COUNTER,
        help="Time charging (state C) while the current was limited by the reason (derived).",
        unit="seconds",
        group=Group.EXPORTER,
        devices=CHARGERS,
        extract=Derived(),
        labels=("reason",),
    ),
    Metric(
        name="lektrico_charging_limited_energy_joules_total",
        kind=Kind.COUNTER,
        help="Energy charged while the current was limited by the reason (derived).",
        unit="joules",
        group=Group.EXPORTER,
        devices=CHARGERS,
        extract=Derived(),
        labels=("reason",),
    ),
    Metric(
        name="lektrico_tariff_energy_joules_total",
        kind=Kind.COUNTER,
        help="Energy charged in each configured tariff period, as tariff/period (derived).",
        unit="joules",
        group=Group.EXPORTER,
        devices=CHARGERS,
        extract=Derived(),
        labels=("tariff",),
    ),
    Metric(
        name="lektrico_energy_cost_total",
        kind=Kind.COUNTER,
        help="Cost of the energy charged in each tariff period, at the price in force (derived).",
        unit="",
        group=Group.EXPORTER,
        devices=CHARGERS,
        extract=Derived(),
        labels=("tariff", "currency"),
    ),
    Metric(
        name="lektrico_meter_energy_joules_total",
        kind=Kind.COUNTER,
        help="Meter energy per phase and direction, integrated from active power (derived).",
        unit="joules",
        group=Group.EXPORTER,
        devices=METERS,
        extract=Derived(),
        labels=("phase", "direction"),
    ),
    Metric(
        name="lektrico_meter_energy_gap_seconds_total",
        kind=Kind.COUNTER,
        help="Time not integrated into meter energy: polls more than 3 intervals apart (derived).",
        unit="seconds",
        group=Group.EXPORTER,
        devices=METERS,
        extract=Derived(),
    ),
)

# Metrics without a device label, owned by the exporter process (prometheus-client registry).
EXPORTER_METRICS: tuple[OwnMetric, ...] = (
    OwnMetric(
        name="lektrico_exporter_build_info",
        kind=Kind.GAUGE,
        help="Version of the exporter, value 1.",
        labels=("version", "python_version"),
    ),
    OwnMetric(
        name="lektrico_devices_configured",
        kind=Kind.GAUGE,
        help="Devices in the configuration.",
        labels=(),
    ),
    OwnMetric(
        name="lektrico_devices_up",
        kind=Kind.GAUGE,
        help="Devices whose last poll succeeded.",
        labels=(),
    ),
    OwnMetric(
        name="lektrico_polls_total",
        kind=Kind.COUNTER,
        help="Device polls started.",
        labels=(),
    ),
    OwnMetric(
        name="lektrico_polls_late_total",
        kind=Kind.COUNTER,
        help="Polls that started after their interval had passed (poller overloaded).",
        labels=(),
    ),
    OwnMetric(
        name="lektrico_device_requests_total",
        kind=Kind.COUNTER,
        help="HTTP requests sent to devices.",
        labels=(),
    ),
    OwnMetric(
        name="lektrico_influxdb_points_written_total",
        kind=Kind.COUNTER,
        help="Points accepted by InfluxDB.",
        labels=(),
    ),
    OwnMetric(
        name="lektrico_influxdb_points_buffered",
        kind=Kind.GAUGE,
        help="Points waiting to be written.",
        labels=(),
    ),
    OwnMetric(
        name="lektrico_influxdb_points_dropped_total",
        kind=Kind.COUNTER,
        help="Points dropped (buffer full, or rejected by InfluxDB).",
        labels=("reason",),
    ),
    OwnMetric(
        name="lektrico_influxdb_write_errors_total",
        kind=Kind.COUNTER,
        help="Failed write requests.",
        labels=("reason",),
    ),
    OwnMetric(
        name="lektrico_influxdb_last_write_success_timestamp_seconds",
        kind=Kind.GAUGE,
        help="Unix time of the last successful write.",
        labels=(),
    ),
    OwnMetric(
        name="lektrico_config_last_reload_successful",
        kind=Kind.GAUGE,
        help="1 when the last configuration reload succeeded (or none was tried), else 0.",
        labels=(),
    ),
    OwnMetric(
        name="lektrico_config_last_reload_success_timestamp_seconds",
        kind=Kind.GAUGE,
        help="Unix time of the last successful configuration load (start or reload).",
        labels=(),
    ),
    OwnMetric(
        name="lektrico_influxdb_spool_damaged_total",
        kind=Kind.COUNTER,
        help="Damaged InfluxDB spool files found at start and repaired without losing points.",
        labels=("reason",),
    ),
)

BY_NAME: Mapping[str, Metric] = {m.name: m for m in CATALOGUE}
# The series whose labels say which unit a device is (model, serial, firmware): pages read it.
IDENTITY_INFO = next(
    m.name for m in CATALOGUE if isinstance(m.extract, Info) and m.extract.identity
)
POLL_ERROR_REASONS = ("timeout", "connect", "http", "json", "rpc", "schema")
METHOD_ERROR_REASONS = (*POLL_ERROR_REASONS, "unsupported")
ALL_METRIC_NAMES: frozenset[str] = frozenset(
    [m.name for m in CATALOGUE] + [m.name for m in EXPORTER_METRICS]
)
RESERVED_LABELS: frozenset[str] = frozenset(
    {"device", "instance", "job", "time", "_field", "_measurement"}
    | {label for m in CATALOGUE for label in m.labels}
    | {label for m in EXPORTER_METRICS for label in m.labels}
)


def methods_for(kind: str) -> tuple[Method, ...]:
    return tuple(m for m in METHODS if kind in m.devices)
