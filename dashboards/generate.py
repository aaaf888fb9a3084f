"""Generates the Grafana dashboards under dashboards/ from one source.

    python -m dashboards.generate          # rewrite the JSON files
    python -m dashboards.generate --check  # exit 1 when a file differs from what this generates

The state, reason and mode lists come from the metric catalogue (exporter/catalogue/table.py), and
tests/test_dashboards.py checks every metric name, InfluxDB field, unit and variable used here,
so a rename in the catalogue breaks a test, never a dashboard. Edit this file, not the JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dashboards import influx_dashboards
from dashboards.builder import (
    JSON,
    KWH,
    STATE_TEXT,
    Layout,
    Row,
    adhoc_variable,
    bargauge,
    dashboard,
    datasource_variable,
    drop_fields,
    join_by,
    organize,
    override,
    prom,
    query_variable,
    stat,
    state_timeline,
    table,
    thresholds,
    timeseries,
    value_mapping,
)
from exporter.catalogue import table as cat

HERE = Path(__file__).resolve().parent

# ---- shared pieces ---------------------------------------------------------------------------

UP_MAPPING = value_mapping({"1": ("Up", "green"), "0": ("Down", "red")})
ON_OFF = value_mapping({"1": ("on", "blue"), "0": ("off", "text")})
YES_NO = value_mapping({"1": ("yes", "green"), "0": ("no", "orange")})
ERROR_MAPPING = value_mapping({"0": ("ok", "green"), "1": ("ACTIVE", "red")})
LOGGED_MAPPING = value_mapping({"0": ("not logged", "text"), "1": ("logged", "orange")})
RED_FROM_1 = thresholds((None, "green"), (1, "red"))
TEMPERATURE_STEPS = thresholds((None, "green"), (60, "orange"), (70, "red"))
WIFI_STEPS = thresholds((None, "red"), (-80, "orange"), (-70, "green"))
NOT_A_CHARGER = "not reported (meter or older firmware)"
NOT_A_METER = "not reported (not an energy meter)"

assert set(STATE_TEXT) == set(cat.CHARGER_STATES), "describe every charger state"
LIMIT_REASONS = (*dict.fromkeys(cat.LIMIT_REASONS.values()), "unknown")
REASON_CODE_BASE = 100  # reasons are coded 101.. so they share one value mapping with states


def state_codes(values: Sequence[str], base: int = 0) -> str:
    """A vector holding one series per value, labelled with it, valued base+1, base+2, ..."""
    return "\n    or ".join(
        f'label_replace(vector({base + i}), "{{label}}", "{value}", "", "")'
        for i, value in enumerate(values, 1)
    )


def encoded(metric: str, selector: str, label: str, values: Sequence[str], base: int = 0) -> str:
    """A stateset as one number per device, for a state timeline with value mappings.

    `metric{...} == 1` keeps each device's current state; joining it on the state label with a
    constant vector of codes turns the state name into a number a value mapping shows by name.
    """
    codes = state_codes(values, base).replace("{label}", label)
    return (
        f"max by (device) (\n  ({metric}{{{selector}}} == 1)\n"
        f"  * on ({label}) group_left ()\n  (\n    {codes}\n  )\n)"
    )


def state_mapping(with_reasons: bool = False) -> JSON:
    texts = {str(i): STATE_TEXT[s] for i, s in enumerate(cat.CHARGER_STATES, 1)}
    if with_reasons:
        for i, reason in enumerate(LIMIT_REASONS, 1):
            texts[str(REASON_CODE_BASE + i)] = (f"limited by {reason}", "blue")
    return value_mapping(texts)


def prometheus_variables(device: str) -> list[JSON]:
    """datasource, job and device; `device` is "multi" (fleet) or "single" (device detail)."""
    multi = device == "multi"
    return [
        datasource_variable("prometheus", "Prometheus"),
        query_variable(
            "job",
            "Job",
            "prometheus",
            "label_values(lektrico_up, job)",
            multi=True,
            description=(
                "Scrape jobs with Lektrico devices. Pick one when the same devices are scraped "
                "by two jobs (e.g. /metrics and /probe), or their sums count twice."
            ),
        ),
        query_variable(
            "device",
            "Device",
            "prometheus",
            'label_values(lektrico_up{job=~"$job"}, device)',
            multi=multi,
            include_all=multi,
            all_value=".*" if multi else None,
            description="Charger or meter, by its configured name.",
        ),
    ]


# ---- Prometheus: fleet overview --------------------------------------------------------------

SEL = 'job=~"$job", device=~"$device"'


def fleet_overview() -> JSON:
    lay = Layout()
    lay.add(
        Row("Fleet now"),
        stat(
            "Devices up",
            "Devices whose last poll succeeded.",
            [prom(f"sum(lektrico_up{{{SEL}}})", instant=True)],
            "none",
        ),
        stat(
            "Devices down",
            "Devices whose last poll failed. The Devices table shows which.",
            [prom(f"count(lektrico_up{{{SEL}}} == 0) or vector(0)", instant=True)],
            "none",
            steps=RED_FROM_1,
        ),
        stat(
            "Charging now",
            "Chargers in state C or D (a car is drawing current).",
            [
                prom(
                    f'count(lektrico_charger_state{{{SEL}, state=~"C|D"}} == 1) or vector(0)',
                    instant=True,
                )
            ],
            "none",
        ),
        stat(
            "Charging power now",
            "Sum of the chargers' instant power.",
            [prom(f"sum(lektrico_power_watts{{{SEL}}})", instant=True)],
            "watt",
            graph=True,
        ),
        stat(
            "Energy charged in range",
            "Energy the chargers delivered in the selected time range, from their lifetime "
            "energy counters.",
            [
                prom(
                    f"sum(increase(lektrico_energy_joules_total{{{SEL}}}[$__range])) / {KWH}",
                    instant=True,
                )
            ],
            "kwatth",
        ),
        stat(
            "Active error flags",
            "Error flags active right now, over all chargers. See the Errors row.",
            [prom(f"sum(lektrico_error_active{{{SEL}}}) or vector(0)", instant=True)],
            "none",
            steps=RED_FROM_1,
        ),
        table(
            "Devices",
            "Every device with its model and firmware; Up is the result of the last poll. "
            "Your configured labels (site, location...) are columns too.",
            [
                prom(
                    f"""
                    lektrico_up{{{SEL}}}
                      * on (job, instance, device) group_left (model, fw_version, serial)
                        lektrico_device_info{{{SEL}}}
                    or on (job, instance, device)
                      lektrico_up{{{SEL}}}
                    """,
                    table=True,
                )
            ],
            width=14,
            height=9,
            transformations=[
                organize(
                    hide=["Time", "__name__", "job", "instance"],
                    rename={"Value": "Up", "fw_version": "firmware"},
                )
            ],
            overrides=[override("Up", {"mappings": [UP_MAPPING]})],
        ),
        timeseries(
            "Devices up over time",
            "Devices polled successfully, against all devices known to Prometheus.",
            [
                prom(f"sum(lektrico_up{{{SEL}}})", "up"),
                prom(f"count(lektrico_up{{{SEL}}})", "known"),
            ],
            "none",
            width=10,
            height=9,
        ),
    )
    lay.add(
        Row("Power"),
        timeseries(
            "Total power",
            "Charging power of the selected chargers, and the power the energy meters measure "
            "(the building's load; negative when exporting).",
            [
                prom(f"sum(lektrico_power_watts{{{SEL}}})", "chargers"),
                prom(f"sum(lektrico_meter_power_watts{{{SEL}}})", "energy meters"),
            ],
            "watt",
        ),
        timeseries(
            "Charging power by $group",
            "Charging power summed by the label chosen in 'Group by' (any label you configured "
            "on your devices, or job). Reads the recording rule fleet:lektrico_power_watts:sum "
            "from rules/lektrico.rules.yml, so it covers every device of the job and is "
            "cheap over long ranges.",
            [
                prom(
                    'sum by ($group) (fleet:lektrico_power_watts:sum{job=~"$job"})',
                    "{{$group}}",
                )
            ],
            "watt",
            stack=True,
        ),
        timeseries(
            "Power per charger",
            "Instant power of each selected charger.",
            [prom(f"lektrico_power_watts{{{SEL}}}", "{{device}}")],
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
                prom(
                    f"sum(increase(lektrico_energy_joules_total{{{SEL}}}[1d])) / {KWH}",
                    "energy",
                    interval="1d",
                )
            ],
            "kwatth",
            width=8,
            bars=True,
            interval="1d",
            time_from="30d",
        ),
        timeseries(
            "Energy per week",
            "Energy charged per week (last 12 weeks).",
            [
                prom(
                    f"sum(increase(lektrico_energy_joules_total{{{SEL}}}[1w])) / {KWH}",
                    "energy",
                    interval="1w",
                )
            ],
            "kwatth",
            width=8,
            bars=True,
            interval="1w",
            time_from="12w",
        ),
        timeseries(
            "Sessions per day",
            "Charging sessions started per day (last 30 days), from the session counters.",
            [
                prom(
                    f"sum(increase(lektrico_sessions_total{{{SEL}}}[1d]))",
                    "sessions",
                    interval="1d",
                )
            ],
            "none",
            width=8,
            bars=True,
            interval="1d",
            time_from="30d",
        ),
        table(
            "Energy and sessions per charger",
            "In the selected time range: energy charged and sessions started; and the session "
            "in progress now.",
            [
                prom(
                    f"sum by (device) (increase(lektrico_energy_joules_total{{{SEL}}}"
                    f"[$__range])) / {KWH}",
                    table=True,
                ),
                prom(
                    f"sum by (device) (increase(lektrico_sessions_total{{{SEL}}}[$__range]))",
                    table=True,
                ),
                prom(
                    f"max by (device) (lektrico_session_energy_joules{{{SEL}}}) / {KWH}", table=True
                ),
                prom(f"max by (device) (lektrico_session_duration_seconds{{{SEL}}})", table=True),
            ],
            width=24,
            transformations=[join_by("device"), drop_fields("^Time.*")],
            overrides=[
                override("Value #A", {"displayName": "Energy in range", "unit": "kwatth"}),
                override("Value #B", {"displayName": "Sessions in range", "unit": "none"}),
                override("Value #C", {"displayName": "Session energy now", "unit": "kwatth"}),
                override("Value #D", {"displayName": "Session duration now", "unit": "s"}),
            ],
            sort_by="Energy in range",
        ),
    )
    lay.add(
        Row("Tariffs, limits and meter energy (derived by the exporter)"),
        timeseries(
            "Energy per tariff period",
            "Energy charged per day in each configured tariff period (tariff/period), each "
            "poll's energy priced at the period in force (docs/sessions.md).",
            [
                prom(
                    f"sum by (tariff) (increase(lektrico_tariff_energy_joules_total{{{SEL}}}"
                    f"[1d])) / {KWH}",
                    "{{tariff}}",
                    interval="1d",
                )
            ],
            "kwatth",
            width=12,
            bars=True,
            stack=True,
            interval="1d",
            time_from="30d",
        ),
        timeseries(
            "Cost per tariff period",
            "Cost of the energy charged per day, per tariff period and currency.",
            [
                prom(
                    f"sum by (tariff, currency) (increase(lektrico_energy_cost_total{{{SEL}}}"
                    "[1d]))",
                    "{{tariff}} {{currency}}",
                    interval="1d",
                )
            ],
            "none",
            width=12,
            bars=True,
            stack=True,
            interval="1d",
            time_from="30d",
        ),
        bargauge(
            "Charging time by limit reason",
            "In the selected time range: time the chargers charged while their current was "
            "limited by each reason.",
            [
                prom(
                    f"sum by (reason) (increase(lektrico_charging_limited_seconds_total{{{SEL}}}"
                    "[$__range]))",
                    "{{reason}}",
                    instant=True,
                )
            ],
            "s",
            width=8,
        ),
        bargauge(
            "Energy by limit reason",
            "In the selected time range: energy charged while the current was limited by each "
            "reason.",
            [
                prom(
                    "sum by (reason) (increase("
                    f"lektrico_charging_limited_energy_joules_total{{{SEL}}}[$__range])) / {KWH}",
                    "{{reason}}",
                    instant=True,
                )
            ],
            "kwatth",
            width=8,
        ),
        timeseries(
            "Meter energy, import and export",
            "Energy through each energy meter per hour, integrated by the exporter from the "
            "meters' power (they have no energy counter); export is energy fed to the grid.",
            [
                prom(
                    f"sum by (device, direction) (increase(lektrico_meter_energy_joules_total"
                    f"{{{SEL}}}[1h])) / {KWH}",
                    "{{device}} {{direction}}",
                    interval="1h",
                )
            ],
            "kwatth",
            width=8,
            bars=True,
            interval="1h",
            time_from="2d",
        ),
    )
    lay.add(
        Row("Charger states"),
        state_timeline(
            "Charger state",
            "State of each charger over time (IEC 61851 letter or the charger's extended state).",
            [
                prom(
                    encoded("lektrico_charger_state", SEL, "state", cat.CHARGER_STATES),
                    "{{device}}",
                )
            ],
            [state_mapping()],
            height=10,
            per_page=20,
        ),
        timeseries(
            "Chargers by state",
            "How many chargers are in each state.",
            [prom(f"sum by (state) (lektrico_charger_state{{{SEL}}})", "{{state}}")],
            "none",
            stack=True,
        ),
        bargauge(
            "Chargers by current-limit reason",
            "Why the chargers' current is limited right now (install limit, dynamic load "
            "balancing, schedule, temperature...).",
            [
                prom(
                    f"sum by (reason) (lektrico_current_limit_reason{{{SEL}}})",
                    "{{reason}}",
                    instant=True,
                )
            ],
            "none",
            width=12,
        ),
    )
    lay.add(
        Row("Errors"),
        bargauge(
            "Active errors by flag",
            "Chargers with each error flag active right now.",
            [
                prom(
                    f"sum by (error) (lektrico_error_active{{{SEL}}})",
                    "{{error}}",
                    instant=True,
                )
            ],
            "none",
            steps=RED_FROM_1,
            height=10,
        ),
        table(
            "Errors per charger",
            "Active error flags now and flags in the device's error log, per charger; the "
            "Device detail dashboard shows which flags.",
            [
                prom(f"sum by (device) (lektrico_error_active{{{SEL}}})", table=True),
                prom(f"sum by (device) (lektrico_error_logged{{{SEL}}})", table=True),
            ],
            width=8,
            height=10,
            transformations=[join_by("device"), drop_fields("^Time.*")],
            overrides=[
                override("Value #A", {"displayName": "Active", "unit": "none"}),
                override("Value #B", {"displayName": "Logged", "unit": "none"}),
            ],
            sort_by="Active",
        ),
        timeseries(
            "Active error flags over time",
            "All active error flags of the job's chargers. Reads the recording rule "
            "fleet:lektrico_error_active:sum.",
            [prom('sum(fleet:lektrico_error_active:sum{job=~"$job"})', "active error flags")],
            "none",
            width=8,
            height=10,
        ),
    )
    lay.add(
        Row("Temperature and Wi-Fi"),
        timeseries(
            "Charger temperature",
            "Board temperature. Chargers derate at their overtemp threshold (70 °C on most).",
            [prom(f"lektrico_temperature_celsius{{{SEL}}}", "{{device}}")],
            "celsius",
            steps=TEMPERATURE_STEPS,
            threshold_style="dashed",
        ),
        bargauge(
            "Hottest chargers now",
            "The ten chargers with the highest board temperature.",
            [
                prom(
                    f"topk(10, lektrico_temperature_celsius{{{SEL}}})",
                    "{{device}}",
                    instant=True,
                )
            ],
            "celsius",
            width=12,
            steps=TEMPERATURE_STEPS,
            minimum=0,
            maximum=90,
        ),
        timeseries(
            "Wi-Fi signal",
            "Wi-Fi signal strength (RSSI). Below -80 dBm polls start to time out.",
            [prom(f"lektrico_wifi_signal_dbm{{{SEL}}}", "{{device}}")],
            "dBm",
            steps=WIFI_STEPS,
            threshold_style="dashed",
        ),
        bargauge(
            "Weakest Wi-Fi now",
            "The ten devices with the weakest Wi-Fi signal.",
            [
                prom(
                    f"bottomk(10, lektrico_wifi_signal_dbm{{{SEL}}})",
                    "{{device}}",
                    instant=True,
                )
            ],
            "dBm",
            width=12,
            steps=WIFI_STEPS,
            minimum=-100,
            maximum=-30,
        ),
    )
    lay.add(
        Row("Firmware and capabilities"),
        table(
            "Firmware inventory",
            "How many devices run each model and firmware version.",
            [
                prom(
                    f"count by (model, fw_version) (lektrico_device_info{{{SEL}}})",
                    table=True,
                )
            ],
            width=8,
            height=9,
            transformations=[organize(hide=["Time"], rename={"Value": "devices"})],
            sort_by="devices",
        ),
        bargauge(
            "Devices without a method",
            "Read methods the devices' firmware does not have, and how many devices lack each "
            "(lektrico_method_supported 0). They are asked once an identity refresh, and cost "
            "only their own values: such a device is still up.",
            [
                prom(
                    f"count by (method) (lektrico_method_supported{{{SEL}}} == 0)",
                    "{{method}}",
                    instant=True,
                )
            ],
            "none",
            width=8,
            height=9,
        ),
        table(
            "Method failures per device",
            "Failures of read methods other than the main one in the selected range, by "
            "method and reason (timeout, connect, http, json, rpc, schema, unsupported); "
            "these never mark a device down.",
            [
                prom(
                    "sum by (device, method, reason) "
                    f"(increase(lektrico_method_errors_total{{{SEL}}}[$__range])) > 0",
                    table=True,
                )
            ],
            width=8,
            height=9,
            transformations=[organize(hide=["Time"], rename={"Value": "failures"})],
            sort_by="failures",
        ),
    )
    group = query_variable(
        "group",
        "Group by",
        "prometheus",
        "label_names(lektrico_up)",
        regex="/^(?!(__name__|device|instance)$).+$/",
        description="A label to sum power by: one of your device labels (site...) or job.",
    )
    group["sort"] = 1
    group["current"] = {"text": "site", "value": "site"}
    return dashboard(
        "lektrico-fleet-overview",
        "Lektrico fleet overview",
        "All Lektri.co chargers and energy meters: up/down, power, energy, sessions, states, "
        "errors, current-limit reasons, temperatures, Wi-Fi, firmware and the read methods "
        "each firmware supports.",
        [*prometheus_variables("multi"), group, adhoc_variable("prometheus")],
        lay,
    )


# ---- Prometheus: device detail ---------------------------------------------------------------

DEV = 'job=~"$job", device="$device"'


def device_detail() -> JSON:
    lay = Layout()
    lay.add(
        Row("Status"),
        stat(
            "Up",
            "Result of the exporter's last poll of this device.",
            [prom(f"lektrico_up{{{DEV}}}", instant=True)],
            "none",
            mappings=[UP_MAPPING],
            color_mode="background",
        ),
        stat(
            "Charger state",
            "IEC 61851 state letter or the charger's extended state.",
            [prom(f"lektrico_charger_state{{{DEV}}} == 1", "{{state}}", instant=True)],
            "none",
            text_mode="name",
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Power",
            "Instant charging power.",
            [prom(f"lektrico_power_watts{{{DEV}}}", instant=True)],
            "watt",
            graph=True,
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Temperature",
            "Board temperature.",
            [prom(f"lektrico_temperature_celsius{{{DEV}}}", instant=True)],
            "celsius",
            steps=TEMPERATURE_STEPS,
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Wi-Fi signal",
            "Signal strength (RSSI) of the device's Wi-Fi.",
            [prom(f"lektrico_wifi_signal_dbm{{{DEV}}}", instant=True)],
            "dBm",
            steps=WIFI_STEPS,
        ),
        stat(
            "Model and firmware",
            "Model (from the device id) and firmware version.",
            [
                prom(
                    f"lektrico_device_info{{{DEV}}}",
                    "{{model}} · fw {{fw_version}}",
                    instant=True,
                )
            ],
            "none",
            text_mode="name",
        ),
    )
    lay.add(
        Row("Charging session"),
        stat(
            "Session energy",
            "Energy charged in the current session.",
            [prom(f"lektrico_session_energy_joules{{{DEV}}} / {KWH}", instant=True)],
            "kwatth",
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Session duration",
            "Charging time of the current session.",
            [prom(f"lektrico_session_duration_seconds{{{DEV}}}", instant=True)],
            "s",
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Last session energy",
            "Energy of the last finished session.",
            [prom(f"lektrico_last_session_energy_joules{{{DEV}}} / {KWH}", instant=True)],
            "kwatth",
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Lifetime energy",
            "Energy charged over the charger's life.",
            [prom(f"lektrico_energy_joules_total{{{DEV}}} / {KWH}", instant=True)],
            "kwatth",
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Lifetime sessions",
            "Charging sessions over the charger's life.",
            [prom(f"lektrico_sessions_total{{{DEV}}}", instant=True)],
            "none",
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Lifetime charging time",
            "Time spent charging over the charger's life.",
            [prom(f"lektrico_charging_duration_seconds_total{{{DEV}}}", instant=True)],
            "s",
            no_value=NOT_A_CHARGER,
        ),
        timeseries(
            "Power",
            "Instant charging power.",
            [prom(f"lektrico_power_watts{{{DEV}}}", "power")],
            "watt",
            no_value=NOT_A_CHARGER,
        ),
        timeseries(
            "Session energy and duration",
            "Energy and charging time of the session in progress.",
            [
                prom(f"lektrico_session_energy_joules{{{DEV}}} / {KWH}", "session energy"),
                prom(f"lektrico_session_duration_seconds{{{DEV}}}", "session duration"),
            ],
            "kwatth",
            overrides=[override("session duration", {"unit": "s"})],
            no_value=NOT_A_CHARGER,
        ),
    )
    lay.add(
        Row("Phases"),
        timeseries(
            "Current per phase",
            "Charging current on each phase, and the current offered to the car (PWM).",
            [
                prom(f"lektrico_current_amperes{{{DEV}}}", "{{phase}}"),
                prom(f"lektrico_offered_current_amperes{{{DEV}}}", "offered"),
            ],
            "amp",
            no_value=NOT_A_CHARGER,
        ),
        timeseries(
            "Voltage per phase",
            "Supply voltage on each phase (single-phase chargers report L1 only).",
            [prom(f"lektrico_voltage_volts{{{DEV}}}", "{{phase}}")],
            "volt",
            no_value=NOT_A_CHARGER,
        ),
    )
    lay.add(
        Row("Limits"),
        timeseries(
            "Current limits and offered current",
            "Configured and dynamic current limits (cable, install, user, load balancing, "
            "schedule, temperature...) against the current offered to the car.",
            [
                prom(f"lektrico_current_limit_amperes{{{DEV}}}", "{{limit}}"),
                prom(f"lektrico_offered_current_amperes{{{DEV}}}", "offered"),
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
                prom(encoded("lektrico_charger_state", DEV, "state", cat.CHARGER_STATES), "state"),
                prom(
                    encoded(
                        "lektrico_current_limit_reason",
                        DEV,
                        "reason",
                        LIMIT_REASONS,
                        REASON_CODE_BASE,
                    ),
                    "limit reason",
                ),
            ],
            [state_mapping(with_reasons=True)],
            width=12,
        ),
        stat(
            "Current-limit reason",
            "What limits the charging current now.",
            [prom(f"lektrico_current_limit_reason{{{DEV}}} == 1", "{{reason}}", instant=True)],
            "none",
            text_mode="name",
            width=8,
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "User power limit",
            "Power limit set by the user.",
            [prom(f"lektrico_user_power_limit_watts{{{DEV}}}", instant=True)],
            "watt",
            width=8,
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Connected phases",
            "Phases the device is wired to.",
            [prom(f"lektrico_connected_phases{{{DEV}}}", instant=True)],
            "none",
            width=8,
        ),
    )
    lay.add(
        Row("Errors and configuration"),
        state_timeline(
            "Active error flags",
            "Each error flag the charger reports, red while active.",
            [prom(f"lektrico_error_active{{{DEV}}}", "{{error}}")],
            [ERROR_MAPPING],
            width=12,
            height=12,
        ),
        table(
            "Logged error flags",
            "Flags in the charger's error log (past errors).",
            [prom(f"max by (error) (lektrico_error_logged{{{DEV}}})", table=True)],
            width=6,
            height=12,
            mappings=[LOGGED_MAPPING],
            transformations=[organize(hide=["Time"], rename={"Value": "logged"})],
            no_value=NOT_A_CHARGER,
        ),
        table(
            "Configuration flags",
            "Configuration switches read from the device.",
            [prom(f"max by (flag) (lektrico_config_flag{{{DEV}}})", table=True)],
            width=6,
            height=12,
            mappings=[ON_OFF],
            transformations=[organize(hide=["Time"], rename={"Value": "setting"})],
        ),
        timeseries(
            "Temperature and thresholds",
            "Board temperature against the thresholds where the charger derates (overtemp) "
            "and stops (critical).",
            [
                prom(f"lektrico_temperature_celsius{{{DEV}}}", "temperature"),
                prom(f"lektrico_temperature_threshold_celsius{{{DEV}}}", "{{threshold}}"),
            ],
            "celsius",
            width=8,
            no_value=NOT_A_CHARGER,
        ),
        timeseries(
            "Wi-Fi signal",
            "Signal strength (RSSI); below -80 dBm polls start to time out.",
            [prom(f"lektrico_wifi_signal_dbm{{{DEV}}}", "signal")],
            "dBm",
            width=8,
            steps=WIFI_STEPS,
            threshold_style="dashed",
        ),
        stat(
            "Paused",
            "1 when charging is paused.",
            [prom(f"lektrico_paused{{{DEV}}}", instant=True)],
            "none",
            mappings=[YES_NO],
            width=4,
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Meter link",
            "Whether the charger reaches its energy-management meter.",
            [prom(f"lektrico_em_connected{{{DEV}}}", instant=True)],
            "none",
            mappings=[YES_NO],
            width=4,
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "LED brightness",
            "Maximum LED brightness.",
            [prom(f"lektrico_led_brightness_ratio{{{DEV}}}", instant=True)],
            "percentunit",
            width=4,
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Free heap",
            "Free memory of the charger's controller; a steady fall hints at a firmware leak.",
            [prom(f"lektrico_heap_free_bytes{{{DEV}}}", instant=True)],
            "bytes",
            width=4,
            no_value=NOT_A_CHARGER,
        ),
    )
    lay.add(
        Row("Schedule and phase switching"),
        stat(
            "Schedule",
            "Whether the charging schedule is enabled (App_config).",
            [prom(f"lektrico_schedule_enabled{{{DEV}}}", instant=True)],
            "none",
            mappings=[ON_OFF],
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Schedule interval now",
            "Whether an interval of the enabled schedule covers the charger's local time now "
            "(its own time zone).",
            [prom(f"lektrico_schedule_active{{{DEV}}}", instant=True)],
            "none",
            mappings=[YES_NO],
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Schedule current",
            "Current the active schedule interval allows; 0 A: charging paused by the "
            "schedule. Empty when no interval is active.",
            [prom(f"lektrico_schedule_current_amperes{{{DEV}}}", instant=True)],
            "amp",
            no_value="no interval active",
        ),
        stat(
            "Schedule intervals",
            "Intervals in the charger's weekly schedule.",
            [prom(f"lektrico_schedule_intervals{{{DEV}}}", instant=True)],
            "none",
            no_value=NOT_A_CHARGER,
        ),
        stat(
            "Relay mode",
            "Relay (phase switching) mode the charger reports in Dynamic_current.Get or "
            "Charger_info.Get; empty on firmware that does not report it.",
            [prom(f"lektrico_relay_mode{{{DEV}}}", instant=True)],
            "none",
            no_value="not reported",
        ),
        timeseries(
            "Schedule current over time",
            "Current the active schedule interval allowed; gaps where none was active.",
            [prom(f"lektrico_schedule_current_amperes{{{DEV}}}", "schedule")],
            "amp",
            width=4,
        ),
    )
    lay.add(
        Row("Identity"),
        table(
            "Identity and firmware",
            "Device id, serial number, firmware and board revision.",
            [
                prom(
                    "max by (device_id, model, serial, fw_version, fw_id, board_revision, alias)"
                    f" (lektrico_device_info{{{DEV}}})",
                    table=True,
                )
            ],
            width=16,
            height=4,
            transformations=[organize(hide=["Time", "Value"])],
        ),
        table(
            "Wi-Fi network",
            "Network name, access point and address.",
            [prom(f"max by (ssid, bssid, ip) (lektrico_wifi_info{{{DEV}}})", table=True)],
            width=8,
            height=4,
            transformations=[organize(hide=["Time", "Value"])],
        ),
        table(
            "Read methods",
            "Each read method the exporter asked this device for: supported (it answered) or "
            "not (its firmware lacks it; asked again once an identity refresh).",
            [prom(f"max by (method) (lektrico_method_supported{{{DEV}}})", table=True)],
            width=12,
            height=8,
            transformations=[organize(hide=["Time"], rename={"Value": "supported"})],
            overrides=[override("supported", {"mappings": [YES_NO]})],
        ),
        table(
            "Method failures in range",
            "Failures of read methods other than the main one, by method and reason; they "
            "never mark the device down.",
            [
                prom(
                    "sum by (method, reason) "
                    f"(increase(lektrico_method_errors_total{{{DEV}}}[$__range]))",
                    table=True,
                )
            ],
            width=12,
            height=8,
            transformations=[organize(hide=["Time"], rename={"Value": "failures"})],
            sort_by="failures",
        ),
    )
    lay.add(
        Row("Energy meter"),
        timeseries(
            "Meter power per phase",
            "Active power per phase and in total; negative when exporting to the grid.",
            [
                prom(f"lektrico_meter_power_watts{{{DEV}}}", "{{phase}}"),
                prom(f"sum(lektrico_meter_power_watts{{{DEV}}})", "total"),
            ],
            "watt",
            no_value=NOT_A_METER,
        ),
        timeseries(
            "Meter current per phase",
            "Current per phase against the main breaker rating.",
            [
                prom(f"lektrico_meter_current_amperes{{{DEV}}}", "{{phase}}"),
                prom(f"lektrico_meter_breaker_rating_amperes{{{DEV}}}", "breaker rating"),
            ],
            "amp",
            no_value=NOT_A_METER,
        ),
        timeseries(
            "Meter voltage per phase",
            "Voltage per phase.",
            [prom(f"lektrico_meter_voltage_volts{{{DEV}}}", "{{phase}}")],
            "volt",
            width=8,
            no_value=NOT_A_METER,
        ),
        timeseries(
            "Power factor per phase",
            "Power factor per phase (1 is a purely resistive load).",
            [prom(f"lektrico_meter_power_factor{{{DEV}}}", "{{phase}}")],
            "none",
            width=8,
            minimum=-1,
            maximum=1,
            no_value=NOT_A_METER,
        ),
        stat(
            "Load-balancing mode",
            "How the meter balances the chargers' load: off, power, hybrid, green or power_share.",
            [
                prom(
                    f"lektrico_meter_load_balancing_mode{{{DEV}}} == 1",
                    "{{mode}}",
                    instant=True,
                )
            ],
            "none",
            text_mode="name",
            no_value=NOT_A_METER,
        ),
        stat(
            "Breaker rating",
            "Main breaker rating configured on the meter.",
            [prom(f"lektrico_meter_breaker_rating_amperes{{{DEV}}}", instant=True)],
            "amp",
            no_value=NOT_A_METER,
        ),
    )
    return dashboard(
        "lektrico-device-detail",
        "Lektrico device detail",
        "One charger or energy meter: phases, power, session, limits against the offered "
        "current, error and configuration flags, firmware and identity; meters' per-phase "
        "power, power factor and load-balancing mode.",
        prometheus_variables("single"),
        lay,
        time_from="now-3h",
    )


# ---- Prometheus: exporter health -------------------------------------------------------------

EXP = 'job=~"$job", instance=~"$instance"'


def by_reason_or_zero(expr: str) -> str:
    """`sum by (reason)` of a counter's rate, or one zero series when nothing was counted yet."""
    return (
        f"sum by (reason) (rate({expr}[$__rate_interval]))\n"
        'or on () label_replace(vector(0), "reason", "none", "", "")'
    )


def exporter_health() -> JSON:
    lay = Layout()
    lay.add(
        Row("Exporter"),
        stat(
            "Version",
            "Exporter version per instance.",
            [prom(f"lektrico_exporter_build_info{{{EXP}}}", "{{version}}", instant=True)],
            "none",
            text_mode="name",
        ),
        stat(
            "Devices configured",
            "Devices in the exporters' configuration.",
            [prom(f"sum(lektrico_devices_configured{{{EXP}}})", instant=True)],
            "none",
        ),
        stat(
            "Devices up",
            "Devices whose last poll succeeded.",
            [prom(f"sum(lektrico_devices_up{{{EXP}}})", instant=True)],
            "none",
        ),
        stat(
            "Polls per second",
            "Device polls started per second.",
            [prom(f"sum(rate(lektrico_polls_total{{{EXP}}}[$__rate_interval]))", instant=True)],
            "ops",
        ),
        stat(
            "Late polls in range",
            "Polls that started after their interval had passed: the exporter cannot keep up.",
            [prom(f"sum(increase(lektrico_polls_late_total{{{EXP}}}[$__range]))", instant=True)],
            "none",
            steps=RED_FROM_1,
        ),
        stat(
            "Poll errors in range",
            "Failed device polls in the selected range.",
            [
                prom(
                    f"sum(increase(lektrico_poll_errors_total{{{EXP}}}[$__range]))",
                    instant=True,
                )
            ],
            "none",
            steps=RED_FROM_1,
        ),
    )
    lay.add(
        Row("Polling"),
        timeseries(
            "Polls and device requests",
            "Polls started and HTTP requests sent to devices, per second and exporter.",
            [
                prom(
                    f"sum by (instance) (rate(lektrico_polls_total{{{EXP}}}[$__rate_interval]))",
                    "{{instance}} polls",
                ),
                prom(
                    "sum by (instance) "
                    f"(rate(lektrico_device_requests_total{{{EXP}}}[$__rate_interval]))",
                    "{{instance}} requests",
                ),
            ],
            "reqps",
        ),
        timeseries(
            "Late polls",
            "Polls per second that started after their interval had passed. Anything above "
            "zero: raise poll.concurrency, lower timeouts, lengthen the interval or shard.",
            [
                prom(
                    "sum by (instance) "
                    f"(rate(lektrico_polls_late_total{{{EXP}}}[$__rate_interval]))",
                    "{{instance}}",
                )
            ],
            "ops",
        ),
        timeseries(
            "Poll duration",
            "Wall time of each device's last poll: slowest, 90th percentile and average.",
            [
                prom(f"max(lektrico_poll_duration_seconds{{{EXP}}})", "slowest"),
                prom(f"quantile(0.9, lektrico_poll_duration_seconds{{{EXP}}})", "90th percentile"),
                prom(f"avg(lektrico_poll_duration_seconds{{{EXP}}})", "average"),
            ],
            "s",
        ),
        bargauge(
            "Slowest devices now",
            "The ten devices whose last poll took longest.",
            [
                prom(
                    f"topk(10, lektrico_poll_duration_seconds{{{EXP}}})",
                    "{{device}}",
                    instant=True,
                )
            ],
            "s",
            width=12,
        ),
        timeseries(
            "Poll errors by reason",
            "Failed polls per second: timeout and connect (device or network down), http, "
            "json and rpc (device answered badly), schema (unexpected reply).",
            [
                prom(
                    "sum by (reason) "
                    f"(rate(lektrico_poll_errors_total{{{EXP}}}[$__rate_interval]))",
                    "{{reason}}",
                )
            ],
            "ops",
            stack=True,
        ),
        timeseries(
            "Values dropped as implausible",
            "Device values dropped per second because they were not finite, out of range or "
            "of the wrong type.",
            [
                prom(
                    by_reason_or_zero(f"lektrico_values_dropped_total{{{EXP}}}"),
                    "{{reason}}",
                )
            ],
            "ops",
        ),
        table(
            "Device poll health",
            "Per device: up, failed polls in the selected range, and time since the last "
            "good poll.",
            [
                prom(f"max by (device) (lektrico_up{{{EXP}}})", table=True),
                prom(
                    f"sum by (device) (increase(lektrico_poll_errors_total{{{EXP}}}[$__range]))",
                    table=True,
                ),
                prom(
                    "time() - max by (device) "
                    f"(lektrico_last_poll_success_timestamp_seconds{{{EXP}}})",
                    table=True,
                ),
            ],
            width=24,
            transformations=[join_by("device"), drop_fields("^Time.*")],
            overrides=[
                override("Value #A", {"displayName": "Up", "mappings": [UP_MAPPING]}),
                override("Value #B", {"displayName": "Poll errors in range", "unit": "none"}),
                override("Value #C", {"displayName": "Since last good poll", "unit": "s"}),
            ],
            sort_by="Poll errors in range",
        ),
    )
    lay.add(
        Row("InfluxDB writer"),
        stat(
            "Points buffered",
            "Points waiting to be written to InfluxDB.",
            [prom(f"sum(lektrico_influxdb_points_buffered{{{EXP}}})", instant=True)],
            "none",
            width=6,
        ),
        stat(
            "Since last successful write",
            "Time since InfluxDB last accepted a batch. Empty when the InfluxDB output is "
            "not configured or never succeeded.",
            [
                prom(
                    "time() - max("
                    f"lektrico_influxdb_last_write_success_timestamp_seconds{{{EXP}}} > 0)",
                    instant=True,
                )
            ],
            "s",
            width=6,
            steps=thresholds((None, "green"), (300, "orange"), (900, "red")),
            no_value="never",
        ),
        stat(
            "Points dropped in range",
            "Points lost: the buffer was full while InfluxDB was away, or InfluxDB rejected them.",
            [
                prom(
                    "sum(increase("
                    f"lektrico_influxdb_points_dropped_total{{{EXP}}}[$__range])) or vector(0)",
                    instant=True,
                )
            ],
            "none",
            width=6,
            steps=RED_FROM_1,
        ),
        stat(
            "Write errors in range",
            "Failed write requests (the points are retried, not lost).",
            [
                prom(
                    "sum(increase("
                    f"lektrico_influxdb_write_errors_total{{{EXP}}}[$__range])) or vector(0)",
                    instant=True,
                )
            ],
            "none",
            width=6,
            steps=thresholds((None, "green"), (1, "orange")),
        ),
        timeseries(
            "Points written and buffered",
            "Points InfluxDB accepted per second, and points waiting in the buffer.",
            [
                prom(
                    "sum by (instance) (rate("
                    f"lektrico_influxdb_points_written_total{{{EXP}}}[$__rate_interval]))",
                    "{{instance}} written/s",
                ),
                prom(
                    f"sum by (instance) (lektrico_influxdb_points_buffered{{{EXP}}})",
                    "{{instance}} buffered",
                ),
            ],
            "none",
            width=8,
        ),
        timeseries(
            "Points dropped by reason",
            "Points lost per second, by reason.",
            [
                prom(
                    by_reason_or_zero(f"lektrico_influxdb_points_dropped_total{{{EXP}}}"),
                    "{{reason}}",
                )
            ],
            "ops",
            width=8,
        ),
        timeseries(
            "Write errors by reason",
            "Failed write requests per second, by reason.",
            [
                prom(
                    by_reason_or_zero(f"lektrico_influxdb_write_errors_total{{{EXP}}}"),
                    "{{reason}}",
                )
            ],
            "ops",
            width=8,
        ),
    )
    variables = [
        datasource_variable("prometheus", "Prometheus"),
        query_variable(
            "job",
            "Job",
            "prometheus",
            "label_values(lektrico_exporter_build_info, job)",
            multi=True,
            include_all=True,
            all_value=".*",
        ),
        query_variable(
            "instance",
            "Exporter",
            "prometheus",
            'label_values(lektrico_exporter_build_info{job=~"$job"}, instance)',
            multi=True,
            include_all=True,
            all_value=".*",
        ),
    ]
    return dashboard(
        "lektrico-exporter-health",
        "Lektrico exporter health",
        "The exporter itself: poll rate and duration, errors by reason, late polls, values "
        "dropped, and the InfluxDB writer.",
        variables,
        lay,
        time_from="now-3h",
    )


# ---- files -----------------------------------------------------------------------------------

DASHBOARDS: dict[str, Callable[[], JSON]] = {
    "prometheus/fleet-overview.json": fleet_overview,
    "prometheus/device-detail.json": device_detail,
    "prometheus/exporter-health.json": exporter_health,
    "influxdb/fleet-overview.json": influx_dashboards.fleet_overview,
    "influxdb/device-detail.json": influx_dashboards.device_detail,
    "influxdb/sessions.json": influx_dashboards.sessions,
}


def render(build: Callable[[], JSON]) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date, run python -m dashboards.generate:", *stale, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
