"""The InfluxDB dashboards (InfluxQL): fleet overview, device detail and charging sessions.

Measurement and field names come from the exporter's own serializer plans
(exporter/outputs/influx/lines.py, derived from the catalogue), with the default measurement prefix
`lektrico`. InfluxQL keeps these dashboards working on InfluxDB 1.x, on 2.x through a DBRP mapping
and on 3.x. Booleans (up, error and config flags) cannot be averaged in InfluxQL, so they are shown
with last().
"""

from __future__ import annotations

from dashboards.builder import (
    JSON,
    KWH,
    STATE_TEXT,
    Layout,
    Row,
    bargauge,
    dashboard,
    datasource_variable,
    influxql,
    organize,
    override,
    query_variable,
    stat,
    state_timeline,
    table,
    timeseries,
    value_mapping,
)
from exporter.catalogue import table as cat
from exporter.outputs.influx.lines import plans
from exporter.sessions.stage import SESSION_MEASUREMENT

# The serializer decides the measurement (prefix + the catalogue's suffix); the catalogue's
# `influx=` row names the field.
MEASUREMENTS = {name: plan.measurement for name, plan in plans("lektrico").items()}
WHERE = '"device" =~ /^$device$/ AND $timeFilter'
BOOL_UP = {
    "type": "special",
    "options": {"match": "true", "result": {"text": "Up", "color": "green", "index": 0}},
}
BOOL_DOWN = {
    "type": "special",
    "options": {"match": "false", "result": {"text": "Down", "color": "red", "index": 1}},
}
FLAG_ACTIVE = [
    {
        "type": "special",
        "options": {"match": "true", "result": {"text": "ACTIVE", "color": "red", "index": 0}},
    },
    {
        "type": "special",
        "options": {"match": "false", "result": {"text": "ok", "color": "green", "index": 1}},
    },
]
ON_OFF = [
    {
        "type": "special",
        "options": {"match": "true", "result": {"text": "on", "color": "blue", "index": 0}},
    },
    {
        "type": "special",
        "options": {"match": "false", "result": {"text": "off", "color": "text", "index": 1}},
    },
]
NOT_A_CHARGER = "not reported (meter or older firmware)"
NOT_A_METER = "not reported (not an energy meter)"


def influx_row(metric: str) -> cat.Influx:
    row = cat.BY_NAME[metric].influx
    assert row is not None, f"{metric} is not written to InfluxDB"
    return row


def meas(metric: str) -> str:
    """The quoted measurement a metric is written to."""
    return f'"{MEASUREMENTS[metric]}"'


def fld(metric: str, label: str = "") -> str:
    """The quoted field of a metric; `label` picks one field of a label-as-field metric."""
    row = influx_row(metric)
    assert row.label_as_field == bool(label), f"{metric}: label {label!r}"
    return f'"{row.field}{label}"'


def fields_matching(metric: str) -> str:
    """A regex over all fields of a label-as-field metric, e.g. /^active_/."""
    return f"/^{influx_row(metric).field}/"


def per_device_mean(metric: str, alias: str = "$tag_device") -> JSON:
    return influxql(
        f"""
        SELECT mean({fld(metric)}) FROM {meas(metric)}
        WHERE {WHERE}
        GROUP BY time($__interval), "device" fill(null)
        """,
        alias,
    )


def state_text(values: dict[str, tuple[str, str]]) -> JSON:
    return value_mapping(values)


STATE_MAPPING = state_text(STATE_TEXT)

REASON_MAPPING = state_text(
    {
        reason: (f"limited by {reason}", "blue")
        for reason in (*dict.fromkeys(cat.LIMIT_REASONS.values()), "unknown")
    }
)


def variables(multi: bool) -> list[JSON]:
    device = query_variable(
        "device",
        "Device",
        "influxdb",
        f'SHOW TAG VALUES FROM {meas("lektrico_up")} WITH KEY = "device"',
        multi=multi,
        include_all=multi,
        all_value=".*" if multi else None,
        description="Charger or meter, by its configured name.",
    )
    return [datasource_variable("influxdb", "InfluxDB"), device]


# ---- fleet overview --------------------------------------------------------------------------


def fleet_overview() -> JSON:
    power, energy = "lektrico_power_watts", "lektrico_energy_joules_total"
    lay = Layout()
    lay.add(
        Row("Fleet now"),
        stat(
            "Devices up",
            "Devices whose last poll in the selected range succeeded.",
            [
                influxql(
                    f"""
                    SELECT count("up") FROM (
                      SELECT last({fld("lektrico_up")}) AS "up" FROM {meas("lektrico_up")}
                      WHERE {WHERE} GROUP BY "device"
                    ) WHERE "up" = true AND $timeFilter
                    """
                )
            ],
            "none",
            width=6,
        ),
        stat(
            "Charging power now",
            "Sum of the chargers' last reported power.",
            [
                influxql(
                    f"""
                    SELECT sum("power") FROM (
                      SELECT last({fld(power)}) AS "power" FROM {meas(power)}
                      WHERE {WHERE} GROUP BY "device"
                    ) WHERE $timeFilter
                    """
                )
            ],
            "watt",
            width=6,
        ),
        stat(
            "Energy charged in range",
            "Energy the chargers delivered in the selected range, from their lifetime energy "
            "counters.",
            [
                influxql(
                    f"""
                    SELECT sum("energy") FROM (
                      SELECT spread({fld(energy)}) / {KWH} AS "energy" FROM {meas(energy)}
                      WHERE {WHERE} GROUP BY "device"
                    ) WHERE $timeFilter
                    """
                )
            ],
            "kwatth",
            width=6,
        ),
        stat(
            "Sessions in range",
            "Charging sessions started in the selected range.",
            [
                influxql(
                    f"""
                    SELECT sum("sessions") FROM (
                      SELECT spread({fld("lektrico_sessions_total")}) AS "sessions"
                      FROM {meas("lektrico_sessions_total")}
                      WHERE {WHERE} GROUP BY "device"
                    ) WHERE $timeFilter
                    """
                )
            ],
            "none",
            width=6,
        ),
        table(
            "Devices",
            "Every device with its model, firmware and the result of its last poll.",
            [
                influxql(
                    f"""
                    SELECT last({fld("lektrico_up")}) AS "up",
                      last({fld("lektrico_device_info", "fw_version")}) AS "firmware",
                      last({fld("lektrico_poll_duration_seconds")}) AS "poll duration"
                    FROM {meas("lektrico_up")}
                    WHERE {WHERE} GROUP BY "device", "model"
                    """,
                    table=True,
                )
            ],
            width=24,
            transformations=[organize(hide=["Time"])],
            overrides=[
                override("up", {"mappings": [BOOL_UP, BOOL_DOWN]}),
                override("poll duration", {"unit": "s"}),
            ],
        ),
    )
    lay.add(
        Row("Power"),
        timeseries(
            "Total power",
            "Charging power of the selected chargers, and the load the energy meters measure.",
            [
                influxql(
                    f"""
                    SELECT sum("power") FROM (
                      SELECT mean({fld(power)}) AS "power" FROM {meas(power)}
                      WHERE {WHERE} GROUP BY time($__interval), "device" fill(previous)
                    ) WHERE $timeFilter GROUP BY time($__interval)
                    """,
                    "chargers",
                ),
                influxql(
                    f"""
                    SELECT sum("power") FROM (
                      SELECT mean({fld("lektrico_meter_power_watts")}) AS "power"
                      FROM {meas("lektrico_meter_power_watts")}
                      WHERE {WHERE} GROUP BY time($__interval), "device", "phase" fill(previous)
                    ) WHERE $timeFilter GROUP BY time($__interval)
                    """,
                    "energy meters",
                ),
            ],
            "watt",
        ),
        timeseries(
            "Charging power by $group",
            "Charging power summed by the tag chosen in 'Group by': one of your device labels "
            "(site...) or the model.",
            [
                influxql(
                    f"""
                    SELECT sum("power") FROM (
                      SELECT mean({fld(power)}) AS "power" FROM {meas(power)}
                      WHERE {WHERE} GROUP BY time($__interval), "device", "$group" fill(previous)
                    ) WHERE $timeFilter GROUP BY time($__interval), "$group"
                    """,
                    "$tag_$group",
                )
            ],
            "watt",
            stack=True,
        ),
        timeseries(
            "Power per charger",
            "Power of each selected charger.",
            [per_device_mean(power)],
            "watt",
            width=24,
            legend_calcs=("mean", "max", "lastNotNull"),
            legend_table=True,
        ),
    )
    lay.add(
        Row("Energy and sessions"),
        timeseries(
            "Energy per day",
            "Energy charged per day (last 30 days), from the lifetime energy counters.",
            [
                influxql(
                    f"""
                    SELECT sum("energy") FROM (
                      SELECT spread({fld(energy)}) / {KWH} AS "energy" FROM {meas(energy)}
                      WHERE {WHERE} GROUP BY time(1d), "device"
                    ) WHERE $timeFilter GROUP BY time(1d)
                    """,
                    "energy",
                )
            ],
            "kwatth",
            bars=True,
            time_from="30d",
        ),
        table(
            "Energy and sessions per charger",
            "In the selected range: energy charged and sessions started; and the session in "
            "progress now.",
            [
                influxql(
                    f"""
                    SELECT spread({fld(energy)}) / {KWH} AS "energy in range",
                      spread({fld("lektrico_sessions_total")}) AS "sessions in range",
                      last({fld("lektrico_session_energy_joules")}) / {KWH} AS "session energy",
                      last({fld("lektrico_session_duration_seconds")}) AS "session duration"
                    FROM {meas(energy)}
                    WHERE {WHERE} GROUP BY "device"
                    """,
                    table=True,
                )
            ],
            transformations=[organize(hide=["Time"])],
            overrides=[
                override("energy in range", {"unit": "kwatth"}),
                override("sessions in range", {"unit": "none"}),
                override("session energy", {"unit": "kwatth"}),
                override("session duration", {"unit": "s"}),
            ],
        ),
    )
    lay.add(
        Row("Charger states and errors"),
        state_timeline(
            "Charger state",
            "State of each charger over time.",
            [
                influxql(
                    f"""
                    SELECT last({fld("lektrico_charger_state")})
                    FROM {meas("lektrico_charger_state")}
                    WHERE {WHERE} GROUP BY time($__interval), "device" fill(null)
                    """,
                    "$tag_device",
                )
            ],
            [STATE_MAPPING],
            height=10,
            per_page=20,
        ),
        state_timeline(
            "Current-limit reason",
            "Why each charger's current is limited, over time.",
            [
                influxql(
                    f"""
                    SELECT last({fld("lektrico_current_limit_reason")})
                    FROM {meas("lektrico_current_limit_reason")}
                    WHERE {WHERE} GROUP BY time($__interval), "device" fill(null)
                    """,
                    "$tag_device",
                )
            ],
            [REASON_MAPPING],
            width=12,
            height=10,
            per_page=20,
        ),
        table(
            "Active error flags",
            "Each charger's error flags as last reported; the Device detail dashboard shows "
            "their history.",
            [
                influxql(
                    f"""
                    SELECT last({fields_matching("lektrico_error_active")})
                    FROM {meas("lektrico_error_active")}
                    WHERE {WHERE} GROUP BY "device"
                    """,
                    table=True,
                )
            ],
            width=12,
            height=10,
            mappings=FLAG_ACTIVE,
            transformations=[organize(hide=["Time"])],
        ),
    )
    lay.add(
        Row("Temperature and Wi-Fi"),
        timeseries(
            "Charger temperature",
            "Board temperature. Chargers derate at their overtemp threshold (70 °C on most).",
            [per_device_mean("lektrico_temperature_celsius")],
            "celsius",
        ),
        timeseries(
            "Wi-Fi signal",
            "Wi-Fi signal strength (RSSI). Below -80 dBm polls start to time out.",
            [per_device_mean("lektrico_wifi_signal_dbm")],
            "dBm",
        ),
    )
    group = query_variable(
        "group",
        "Group by",
        "influxdb",
        f"SHOW TAG KEYS FROM {meas('lektrico_power_watts')}",
        regex="/^(?!device$).+$/",
        description="A tag to sum power by: one of your device labels (site...) or model.",
    )
    group["sort"] = 1
    group["current"] = {"text": "site", "value": "site"}
    return dashboard(
        "lektrico-influxdb-fleet-overview",
        "Lektrico fleet overview (InfluxDB)",
        "All Lektri.co chargers and energy meters from InfluxDB: devices, power, energy, "
        "sessions, states, current-limit reasons, errors, temperatures and Wi-Fi.",
        [*variables(multi=True), group],
        lay,
    )


# ---- device detail ---------------------------------------------------------------------------


def last_of(metric: str, label: str = "", scale: str = "") -> JSON:
    field = fld(metric, label)
    value = f"last({field}) / {scale}" if scale else f"last({field})"
    return influxql(f"SELECT {value} FROM {meas(metric)} WHERE {WHERE}")


def device_detail() -> JSON:
    lay = Layout()
    lay.add(
        Row("Status"),
        stat(
            "Up",
            "Result of the exporter's last poll of this device.",
            [last_of("lektrico_up")],
            "none",
            mappings=[BOOL_UP, BOOL_DOWN],
            color_mode="background",
        ),
        stat(
            "Charger state",
            "IEC 61851 state letter or the charger's extended state.",
            [last_of("lektrico_charger_state")],
            "none",
            mappings=[STATE_MAPPING],
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Power",
            "Instant charging power.",
            [last_of("lektrico_power_watts")],
            "watt",
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Session energy",
            "Energy charged in the current session.",
            [last_of("lektrico_session_energy_joules", scale=KWH)],
            "kwatth",
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Lifetime energy",
            "Energy charged over the charger's life.",
            [last_of("lektrico_energy_joules_total", scale=KWH)],
            "kwatth",
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Wi-Fi signal",
            "Signal strength (RSSI) of the device's Wi-Fi.",
            [last_of("lektrico_wifi_signal_dbm")],
            "dBm",
        ),
    )
    phase = "lektrico_current_amperes"
    lay.add(
        Row("Phases and power"),
        timeseries(
            "Current per phase",
            "Charging current on each phase, and the current offered to the car (PWM).",
            [
                influxql(
                    f"""
                    SELECT mean({fld(phase)}) FROM {meas(phase)}
                    WHERE {WHERE} GROUP BY time($__interval), "phase" fill(null)
                    """,
                    "$tag_phase",
                ),
                influxql(
                    f"""
                    SELECT mean({fld("lektrico_offered_current_amperes")})
                    FROM {meas("lektrico_offered_current_amperes")}
                    WHERE {WHERE} GROUP BY time($__interval) fill(null)
                    """,
                    "offered",
                ),
            ],
            "amp",
            no_value=NOT_A_CHARGER,
        ),
        timeseries(
            "Voltage per phase",
            "Supply voltage on each phase (single-phase chargers report L1 only).",
            [
                influxql(
                    f"""
                    SELECT mean({fld("lektrico_voltage_volts")})
                    FROM {meas("lektrico_voltage_volts")}
                    WHERE {WHERE} GROUP BY time($__interval), "phase" fill(null)
                    """,
                    "$tag_phase",
                )
            ],
            "volt",
            no_value=NOT_A_CHARGER,
        ),
        timeseries(
            "Power",
            "Instant charging power.",
            [
                influxql(
                    f"""
                    SELECT mean({fld("lektrico_power_watts")}) FROM {meas("lektrico_power_watts")}
                    WHERE {WHERE} GROUP BY time($__interval) fill(null)
                    """,
                    "power",
                )
            ],
            "watt",
            no_value=NOT_A_CHARGER,
        ),
        timeseries(
            "Session energy",
            "Energy of the session in progress.",
            [
                influxql(
                    f"""
                    SELECT mean({fld("lektrico_session_energy_joules")}) / {KWH}
                    FROM {meas("lektrico_session_energy_joules")}
                    WHERE {WHERE} GROUP BY time($__interval) fill(null)
                    """,
                    "session energy",
                )
            ],
            "kwatth",
            no_value=NOT_A_CHARGER,
        ),
    )
    limits = "lektrico_current_limit_amperes"
    lay.add(
        Row("Limits, state and errors"),
        timeseries(
            "Current limits and offered current",
            "Configured and dynamic current limits against the current offered to the car.",
            [
                influxql(
                    f"""
                    SELECT mean({fields_matching(limits)}) FROM {meas(limits)}
                    WHERE {WHERE} GROUP BY time($__interval) fill(null)
                    """,
                    "$col",
                ),
                influxql(
                    f"""
                    SELECT mean({fld("lektrico_offered_current_amperes")}) AS "offered"
                    FROM {meas("lektrico_offered_current_amperes")}
                    WHERE {WHERE} GROUP BY time($__interval) fill(null)
                    """,
                    "offered",
                ),
            ],
            "amp",
            legend_table=True,
            legend_calcs=("lastNotNull",),
            no_value=NOT_A_CHARGER,
        ),
        state_timeline(
            "State and current-limit reason",
            "The charger's state, and why its current is limited, over time.",
            [
                influxql(
                    f"""
                    SELECT last({fld("lektrico_charger_state")}) AS "state"
                    FROM {meas("lektrico_charger_state")}
                    WHERE {WHERE} GROUP BY time($__interval) fill(null)
                    """,
                    "state",
                ),
                influxql(
                    f"""
                    SELECT last({fld("lektrico_current_limit_reason")}) AS "limit reason"
                    FROM {meas("lektrico_current_limit_reason")}
                    WHERE {WHERE} GROUP BY time($__interval) fill(null)
                    """,
                    "limit reason",
                ),
            ],
            [STATE_MAPPING, REASON_MAPPING],
            width=12,
        ),
        state_timeline(
            "Active error flags",
            "Each error flag the charger reports, red while active.",
            [
                influxql(
                    f"""
                    SELECT last({fields_matching("lektrico_error_active")})
                    FROM {meas("lektrico_error_active")}
                    WHERE {WHERE} GROUP BY time($__interval) fill(null)
                    """,
                    "$col",
                )
            ],
            FLAG_ACTIVE,
            width=12,
            height=12,
        ),
        table(
            "Configuration flags",
            "Configuration switches read from the device.",
            [
                influxql(
                    "SELECT "
                    + ", ".join(
                        f'last({fld("lektrico_config_flag", name)}) AS "{name}"'
                        for name, _ in cat.CONFIG_FLAGS
                    )
                    + f" FROM {meas('lektrico_config_flag')} WHERE {WHERE}",
                    table=True,
                )
            ],
            width=12,
            height=12,
            mappings=ON_OFF,
            transformations=[organize(hide=["Time"])],
        ),
        timeseries(
            "Temperature and thresholds",
            "Board temperature against the thresholds where the charger derates (overtemp) "
            "and stops (critical).",
            [
                influxql(
                    f"""
                    SELECT mean({fld("lektrico_temperature_celsius")}) AS "temperature",
                      mean({fields_matching("lektrico_temperature_threshold_celsius")})
                    FROM {meas("lektrico_temperature_celsius")}
                    WHERE {WHERE} GROUP BY time($__interval) fill(null)
                    """,
                    "$col",
                )
            ],
            "celsius",
            no_value=NOT_A_CHARGER,
        ),
        table(
            "Identity and firmware",
            "Device id, serial number, firmware and Wi-Fi network.",
            [
                influxql(
                    "SELECT "
                    + ", ".join(
                        f'last({fld(metric, label)}) AS "{label}"'
                        for metric, label in (
                            ("lektrico_device_info", "device_id"),
                            ("lektrico_device_info", "serial"),
                            ("lektrico_device_info", "fw_version"),
                            ("lektrico_device_info", "fw_id"),
                            ("lektrico_wifi_info", "ssid"),
                            ("lektrico_wifi_info", "ip"),
                        )
                    )
                    + f' FROM {meas("lektrico_device_info")} WHERE {WHERE} GROUP BY "model"',
                    table=True,
                )
            ],
            width=12,
            transformations=[organize(hide=["Time"])],
        ),
    )
    lay.add(
        Row("Schedule, phase switching and read methods"),
        table(
            "Schedule and relay mode",
            "Whether the charging schedule is enabled, whether one of its intervals covers the "
            "charger's local time now, how many intervals it has, and the relay (phase "
            "switching) mode the charger reports.",
            [
                influxql(
                    "SELECT "
                    + ", ".join(
                        f'last({fld(metric)}) AS "{name}"'
                        for metric, name in (
                            ("lektrico_schedule_enabled", "schedule"),
                            ("lektrico_schedule_active", "interval now"),
                            ("lektrico_schedule_intervals", "intervals"),
                            ("lektrico_relay_mode", "relay mode"),
                        )
                    )
                    + f" FROM {meas('lektrico_schedule_enabled')} WHERE {WHERE}",
                    table=True,
                )
            ],
            width=12,
            height=6,
            mappings=ON_OFF,
            transformations=[organize(hide=["Time"])],
        ),
        table(
            "Read methods",
            "Each read method the exporter asked this device for: true when it answered, "
            "false when its firmware lacks it (asked again once an identity refresh).",
            [
                influxql(
                    f"SELECT last({fields_matching('lektrico_method_supported')}) "
                    f"FROM {meas('lektrico_method_supported')} WHERE {WHERE}",
                    table=True,
                )
            ],
            width=12,
            height=6,
            transformations=[organize(hide=["Time"])],
        ),
    )
    lay.add(
        Row("Energy meter"),
        timeseries(
            "Meter power per phase",
            "Active power per phase; negative when exporting to the grid.",
            [
                influxql(
                    f"""
                    SELECT mean({fld("lektrico_meter_power_watts")})
                    FROM {meas("lektrico_meter_power_watts")}
                    WHERE {WHERE} GROUP BY time($__interval), "phase" fill(null)
                    """,
                    "$tag_phase",
                )
            ],
            "watt",
            no_value=NOT_A_METER,
        ),
        timeseries(
            "Meter current per phase",
            "Current per phase.",
            [
                influxql(
                    f"""
                    SELECT mean({fld("lektrico_meter_current_amperes")})
                    FROM {meas("lektrico_meter_current_amperes")}
                    WHERE {WHERE} GROUP BY time($__interval), "phase" fill(null)
                    """,
                    "$tag_phase",
                )
            ],
            "amp",
            no_value=NOT_A_METER,
        ),
        timeseries(
            "Meter voltage per phase",
            "Voltage per phase.",
            [
                influxql(
                    f"""
                    SELECT mean({fld("lektrico_meter_voltage_volts")})
                    FROM {meas("lektrico_meter_voltage_volts")}
                    WHERE {WHERE} GROUP BY time($__interval), "phase" fill(null)
                    """,
                    "$tag_phase",
                )
            ],
            "volt",
            width=8,
            no_value=NOT_A_METER,
        ),
        timeseries(
            "Power factor per phase",
            "Power factor per phase (1 is a purely resistive load).",
            [
                influxql(
                    f"""
                    SELECT mean({fld("lektrico_meter_power_factor")})
                    FROM {meas("lektrico_meter_power_factor")}
                    WHERE {WHERE} GROUP BY time($__interval), "phase" fill(null)
                    """,
                    "$tag_phase",
                )
            ],
            "none",
            width=8,
            minimum=-1,
            maximum=1,
            no_value=NOT_A_METER,
        ),
        bargauge(
            "Breaker rating",
            "Main breaker rating configured on the meter.",
            [last_of("lektrico_meter_breaker_rating_amperes")],
            "amp",
            width=4,
            minimum=0,
        ),
        stat(
            "Load-balancing mode",
            "How the meter balances the chargers' load: off, power, hybrid, green or power_share.",
            [last_of("lektrico_meter_load_balancing_mode")],
            "none",
            width=4,
            no_value=NOT_A_METER,
        ),
    )
    return dashboard(
        "lektrico-influxdb-device-detail",
        "Lektrico device detail (InfluxDB)",
        "One charger or energy meter from InfluxDB: phases, power, session, limits against the "
        "offered current, state, error and configuration flags, identity; meters' per-phase "
        "power, current, voltage and power factor.",
        variables(multi=False),
        lay,
        time_from="now-3h",
    )


# ---- charging sessions -----------------------------------------------------------------------

# One point per finished session (exporter/sessions/stage.py), at the session's start.
SESSION = f'"lektrico_{SESSION_MEASUREMENT}"'


def sessions() -> JSON:
    lay = Layout()
    lay.add(
        Row("Sessions"),
        table(
            "Charging sessions",
            "Every charging session that finished, from its start: energy, cost at the "
            "configured tariff, charging and connected time, peak power and anomalies "
            "(docs/sessions.md).",
            [
                influxql(
                    f"""
                    SELECT "energy_joules" / {KWH} AS "kWh", "cost", "currency", "tariff",
                      "charging_seconds", "connected_seconds", "peak_power_watts", "anomalies"
                    FROM {SESSION} WHERE {WHERE} GROUP BY "device"
                    """,
                    table=True,
                )
            ],
            "kwatth",
            width=24,
            height=10,
            overrides=[
                override("cost", {"unit": "none", "decimals": 2}),
                override("charging_seconds", {"unit": "s", "displayName": "charging"}),
                override("connected_seconds", {"unit": "s", "displayName": "connected"}),
                override("peak_power_watts", {"unit": "watt", "displayName": "peak power"}),
            ],
            sort_by="Time",
        ),
    )
    lay.add(
        Row("Energy and cost (choose the month in the time picker)"),
        table(
            "Energy and cost by device",
            "In the selected range (by default this month): sessions, energy and cost per "
            "device, each session counted in the range it started in.",
            [
                influxql(
                    f"""
                    SELECT count("energy_joules") AS "sessions",
                      sum("energy_joules") / {KWH} AS "kWh", sum("cost") AS "cost",
                      last("currency") AS "currency"
                    FROM {SESSION} WHERE {WHERE} GROUP BY "device"
                    """,
                    table=True,
                )
            ],
            "kwatth",
            width=12,
            overrides=[
                override("sessions", {"unit": "none"}),
                override("cost", {"unit": "none", "decimals": 2}),
            ],
            sort_by="kWh",
        ),
        table(
            "Energy and cost by label",
            "The same, summed by the label chosen in Group by (site, owner...).",
            [
                influxql(
                    f"""
                    SELECT count("energy_joules") AS "sessions",
                      sum("energy_joules") / {KWH} AS "kWh", sum("cost") AS "cost",
                      last("currency") AS "currency"
                    FROM {SESSION} WHERE {WHERE} GROUP BY "$group"
                    """,
                    table=True,
                )
            ],
            "kwatth",
            width=12,
            overrides=[
                override("sessions", {"unit": "none"}),
                override("cost", {"unit": "none", "decimals": 2}),
            ],
            sort_by="kWh",
        ),
        timeseries(
            "Energy per day by device",
            "Energy of the sessions that started each day.",
            [
                influxql(
                    f"""
                    SELECT sum("energy_joules") / {KWH} FROM {SESSION}
                    WHERE {WHERE} GROUP BY time(1d), "device" fill(none)
                    """,
                    "$tag_device",
                )
            ],
            "kwatth",
            width=24,
            bars=True,
            stack=True,
            interval="1d",
        ),
    )
    group = query_variable(
        "group",
        "Group by",
        "influxdb",
        f"SHOW TAG KEYS FROM {SESSION}",
        regex="/^(?!device$).+$/",
        description="A tag to sum sessions by: one of your device labels (site, owner...).",
    )
    group["sort"] = 1
    group["current"] = {"text": "site", "value": "site"}
    return dashboard(
        "lektrico-influxdb-sessions",
        "Lektrico charging sessions (InfluxDB)",
        "Every charging session the exporter recorded, and energy and cost per device and "
        "per label for a month (the time picker's range).",
        [*variables(multi=True), group],
        lay,
        time_from="now/M",
    )
