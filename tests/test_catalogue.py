"""The metric catalogue against the public contract (shared/METRICS.md) and Prometheus naming."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.catalogue import table as cat
from harness.servers import unavailable

# CI checks the repo out with shared/ beside it; the inline table below works without it.
METRICS_MD = Path(__file__).resolve().parents[2] / "shared" / "METRICS.md"
# Rows planned for work under way: a device metric listed there may be in the catalogue before
# it moves into METRICS.md, with the type and labels written there.
PLANNED_MD = METRICS_MD.with_name("METRICS-planned.md")

# The contract's tables (name, type as written there, labels), kept here so this test runs
# without shared/; test_inline_contract_is_the_metrics_md_contract keeps the copy honest.
CONTRACT: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("lektrico_up", "gauge", ("device",)),
    ("lektrico_poll_duration_seconds", "gauge", ("device",)),
    ("lektrico_last_poll_success_timestamp_seconds", "gauge", ("device",)),
    (
        "lektrico_device_info",
        "gauge (=1)",
        (
            "device",
            "device_id",
            "model",
            "serial",
            "fw_version",
            "fw_id",
            "board_revision",
            "alias",
        ),
    ),
    ("lektrico_charger_state", "stateset gauge", ("device", "state")),
    ("lektrico_power_watts", "gauge", ("device",)),
    ("lektrico_session_energy_joules", "gauge", ("device",)),
    ("lektrico_session_duration_seconds", "gauge", ("device",)),
    ("lektrico_session_id", "gauge", ("device",)),
    ("lektrico_current_amperes", "gauge", ("device", "phase")),
    ("lektrico_voltage_volts", "gauge", ("device", "phase")),
    ("lektrico_temperature_celsius", "gauge", ("device",)),
    ("lektrico_energy_joules_total", "counter", ("device",)),
    ("lektrico_offered_current_amperes", "gauge", ("device",)),
    ("lektrico_paused", "gauge", ("device",)),
    ("lektrico_heap_free_bytes", "gauge", ("device",)),
    ("lektrico_current_limit_reason", "stateset gauge", ("device", "reason")),
    ("lektrico_current_limit_amperes", "gauge", ("device", "limit")),
    ("lektrico_error_active", "gauge 0/1", ("device", "error")),
    ("lektrico_error_logged", "gauge 0/1", ("device", "error")),
    ("lektrico_charging_duration_seconds_total", "counter", ("device",)),
    ("lektrico_sessions_total", "counter", ("device",)),
    ("lektrico_resets_total", "counter", ("device",)),
    ("lektrico_last_session_energy_joules", "gauge", ("device",)),
    ("lektrico_config_flag", "gauge 0/1", ("device", "flag")),
    ("lektrico_led_brightness_ratio", "gauge", ("device",)),
    ("lektrico_user_power_limit_watts", "gauge", ("device",)),
    ("lektrico_connected_phases", "gauge", ("device",)),
    ("lektrico_temperature_threshold_celsius", "gauge", ("device", "threshold")),
    ("lektrico_wifi_connected", "gauge 0/1", ("device",)),
    ("lektrico_wifi_signal_dbm", "gauge", ("device",)),
    ("lektrico_wifi_info", "gauge (=1)", ("device", "ssid", "bssid", "ip")),
    ("lektrico_em_connected", "gauge 0/1", ("device",)),
    ("lektrico_meter_current_amperes", "gauge", ("device", "phase")),
    ("lektrico_meter_voltage_volts", "gauge", ("device", "phase")),
    ("lektrico_meter_power_watts", "gauge", ("device", "phase")),
    ("lektrico_meter_power_factor", "gauge", ("device", "phase")),
    ("lektrico_meter_breaker_rating_amperes", "gauge", ("device",)),
    ("lektrico_meter_load_balancing_mode", "stateset gauge", ("device", "mode")),
    ("lektrico_poll_errors_total", "counter", ("device", "reason")),
    ("lektrico_exporter_build_info", "gauge (=1)", ("version", "python_version")),
)
CONTRACT_NAMES = [name for name, _, _ in CONTRACT]
# shared/METRICS-planned.md's tables, kept here for the same reason as CONTRACT.
PLANNED: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("lektrico_method_supported", "gauge 0/1", ("device", "method")),
    ("lektrico_method_errors_total", "counter", ("device", "method", "reason")),
    ("lektrico_relay_mode", "gauge", ("device",)),
    ("lektrico_schedule_enabled", "gauge 0/1", ("device",)),
    ("lektrico_schedule_intervals", "gauge", ("device",)),
    ("lektrico_schedule_active", "gauge 0/1", ("device",)),
    ("lektrico_schedule_current_amperes", "gauge", ("device",)),
    ("lektrico_sessions_recorded_total", "counter", ("device",)),
    ("lektrico_session_anomalies_total", "counter", ("device", "kind")),
    ("lektrico_charging_limited_seconds_total", "counter", ("device", "reason")),
    ("lektrico_charging_limited_energy_joules_total", "counter", ("device", "reason")),
    ("lektrico_tariff_energy_joules_total", "counter", ("device", "tariff")),
    ("lektrico_energy_cost_total", "counter", ("device", "tariff", "currency")),
    ("lektrico_meter_energy_joules_total", "counter", ("device", "phase", "direction")),
    ("lektrico_meter_energy_gap_seconds_total", "counter", ("device",)),
)
PLANNED_BY_NAME = {name: (typ, labels) for name, typ, labels in PLANNED}
BASE_UNITS = ("watts", "joules", "amperes", "volts", "celsius", "seconds", "bytes", "ratio", "dbm")
# Name parts that mean a unit other than the base one (kWh, Wh, minutes, percent ...).
NON_BASE_UNITS = frozenset(
    {"kwh", "wh", "kw", "kilowatts", "milliseconds", "ms", "minutes", "hours", "percent"}
    | {"pct", "fahrenheit", "kelvin", "amps", "amp", "milliamperes", "volt", "watt"}
    | {"kilobytes", "kb", "mb", "celcius", "db", "degrees"}
)
# Contract names that carry no unit suffix although dimensionless: a power factor is a ratio.
UNIT_IMPLIED_BY_NAME = frozenset({"lektrico_meter_power_factor"})
EXPORTER = {m.name: (m.kind.value, m.labels) for m in cat.EXPORTER_METRICS}


def parse_metrics_md(text: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    rows = []
    for line in text.splitlines():
        if not line.startswith("| lektrico_"):
            continue
        name, typ, labels = (cell.strip() for cell in line.strip().strip("|").split("|")[:3])
        rows.append((name, typ, tuple(label.strip() for label in labels.split(",") if label)))
    return tuple(rows)


def expected_kind(contract_type: str) -> cat.Kind:
    if contract_type == "counter":
        return cat.Kind.COUNTER
    if contract_type.startswith("stateset"):
        return cat.Kind.STATESET
    if "(=1)" in contract_type:
        return cat.Kind.INFO
    return cat.Kind.GAUGE


def all_metrics() -> list[tuple[str, str]]:
    """(name, Prometheus type) of everything the exporter can expose."""
    return [(m.name, m.prom_type) for m in cat.CATALOGUE] + [
        (name, typ) for name, (typ, _) in EXPORTER.items()
    ]


def sources(extract: cat.Extract) -> list[cat.Src]:
    if isinstance(extract, cat.Number | cat.StateSet):
        return list(extract.sources)
    if isinstance(extract, cat.PerPhase):
        return [extract.source]
    if isinstance(extract, cat.EnumSet):
        return [extract.source, *extract.fallbacks]
    if isinstance(extract, cat.Labelled):
        return [s for _, srcs in extract.entries for s in srcs]
    if isinstance(extract, cat.Info):
        return [s for _, srcs in extract.fields for s in srcs]
    if isinstance(extract, cat.Flags):
        return [cat.Src(extract.method, "*")]
    return []


ALL_SOURCES = [(m.name, s) for m in cat.CATALOGUE for s in sources(m.extract)]


# ---- the public contract -------------------------------------------------------------------


def test_inline_contract_is_the_metrics_md_contract() -> None:
    if not METRICS_MD.exists():
        # CI lays shared/ beside the checkout, so there its absence is a failure.
        unavailable(f"{METRICS_MD} is not beside this checkout")
    assert parse_metrics_md(METRICS_MD.read_text()) == CONTRACT


@pytest.mark.parametrize(("name", "contract_type", "labels"), CONTRACT)
def test_contract_metric_is_in_the_catalogue_with_its_type(
    name: str, contract_type: str, labels: tuple[str, ...]
) -> None:
    if name in EXPORTER:
        assert EXPORTER[name][0] == ("counter" if contract_type == "counter" else "gauge")
        return
    assert name in cat.BY_NAME, f"{name} is in METRICS.md but not in the catalogue"
    assert cat.BY_NAME[name].kind is expected_kind(contract_type)


@pytest.mark.parametrize(("name", "contract_type", "labels"), CONTRACT)
def test_contract_metric_has_its_labels(
    name: str, contract_type: str, labels: tuple[str, ...]
) -> None:
    if name in EXPORTER:
        assert EXPORTER[name][1] == labels
        return
    assert labels[0] == "device"
    assert cat.BY_NAME[name].labels == labels[1:]


def test_inline_planned_rows_are_the_metrics_planned_md_rows() -> None:
    if not PLANNED_MD.exists():
        unavailable(f"{PLANNED_MD} is not beside this checkout")
    assert parse_metrics_md(PLANNED_MD.read_text()) == PLANNED


def test_every_device_metric_beyond_the_contract_is_planned_or_an_exporter_metric() -> None:
    extra = [m for m in cat.CATALOGUE if m.name not in CONTRACT_NAMES]
    unplanned = [m for m in extra if m.name not in PLANNED_BY_NAME]

    assert [m.group for m in unplanned] == [cat.Group.EXPORTER] * len(unplanned)


@pytest.mark.parametrize(
    "metric", [m for m in cat.CATALOGUE if m.name in PLANNED_BY_NAME], ids=lambda m: m.name
)
def test_planned_metric_has_the_type_and_labels_of_the_plan(metric: cat.Metric) -> None:
    planned_type, labels = PLANNED_BY_NAME[metric.name]

    assert metric.kind is expected_kind(planned_type)
    assert labels[0] == "device" and metric.labels == labels[1:]


def test_metric_names_are_unique() -> None:
    names = [name for name, _ in all_metrics()]

    assert len(names) == len(set(names))


@pytest.mark.parametrize(("name", "prom_type"), all_metrics())
def test_metric_name_is_a_valid_lektrico_prometheus_name(name: str, prom_type: str) -> None:
    assert re.fullmatch(r"lektrico_[a-z][a-z0-9_]*[a-z0-9]", name)
    assert "__" not in name


# ---- naming rules --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "prom_type"), all_metrics())
def test_counters_and_only_counters_end_in_total(name: str, prom_type: str) -> None:
    assert name.endswith("_total") == (prom_type == "counter")


@pytest.mark.parametrize("metric", cat.CATALOGUE, ids=lambda m: m.name)
def test_unit_is_a_base_unit(metric: cat.Metric) -> None:
    assert metric.unit.lower() in ("", *BASE_UNITS)


@pytest.mark.parametrize(
    "metric",
    [m for m in cat.CATALOGUE if m.unit and m.name not in UNIT_IMPLIED_BY_NAME],
    ids=lambda m: m.name,
)
def test_metric_with_a_unit_carries_it_in_its_name(metric: cat.Metric) -> None:
    parts = metric.name.removesuffix("_total").split("_")

    assert parts[-1] == metric.unit.lower()


@pytest.mark.parametrize(("name", "prom_type"), all_metrics())
def test_name_has_no_non_base_unit(name: str, prom_type: str) -> None:
    assert not NON_BASE_UNITS & set(name.split("_"))


@pytest.mark.parametrize(("name", "prom_type"), all_metrics())
def test_base_unit_in_a_name_is_the_metrics_declared_unit(name: str, prom_type: str) -> None:
    named_units = [unit for unit in BASE_UNITS if f"_{unit}" in name]
    if name in cat.BY_NAME:
        declared = cat.BY_NAME[name].unit.lower()
        assert named_units in ([], [declared])
    else:
        assert len(named_units) <= 1


@pytest.mark.parametrize("metric", cat.CATALOGUE, ids=lambda m: m.name)
def test_help_is_one_line_that_needs_no_escaping(metric: cat.Metric) -> None:
    assert metric.help.strip()
    assert "\n" not in metric.help
    assert "\\" not in metric.help


# ---- sources -------------------------------------------------------------------------------


def test_all_methods_are_read_methods() -> None:
    methods = {*cat.METHOD_NAMES, cat.DEVICE_ID_METHOD, *cat.MAIN_METHOD.values()}

    assert [m for m in methods if not m.endswith(".Get")] == []


@pytest.mark.parametrize(("metric", "src"), ALL_SOURCES, ids=lambda v: str(v))
def test_every_source_method_is_a_polled_method(metric: str, src: cat.Src) -> None:
    assert src.method in cat.METHOD_NAMES | {cat.DEVICE_ID_METHOD}


@pytest.mark.parametrize(("metric", "src"), ALL_SOURCES, ids=lambda v: str(v))
def test_every_source_key_has_no_surrounding_space(metric: str, src: cat.Src) -> None:
    # Replies are normalised (keys stripped) before lookup, so a padded key would never match.
    assert src.key == src.key.strip()


@pytest.mark.parametrize(
    "metric", [m for m in cat.CATALOGUE if sources(m.extract)], ids=lambda m: m.name
)
def test_metric_has_a_source_that_each_of_its_device_kinds_is_asked(metric: cat.Metric) -> None:
    kinds_of = {m.name: m.devices for m in cat.METHODS}
    asked = {kind for s in sources(metric.extract) for kind in kinds_of.get(s.method, ())}

    assert metric.devices <= asked


def test_main_methods_are_polled_every_time() -> None:
    cadence = {m.name: m.cadence for m in cat.METHODS}

    assert {cadence[m] for m in cat.MAIN_METHOD.values()} == {cat.Cadence.EVERY}


# ---- labels and models ---------------------------------------------------------------------


def test_reserved_labels_include_every_metric_label_and_device() -> None:
    labels = {label for m in cat.CATALOGUE for label in m.labels}
    labels |= {label for m in cat.EXPORTER_METRICS for label in m.labels}

    assert labels | {"device"} <= cat.RESERVED_LABELS


@pytest.mark.parametrize(
    "metric",
    [m for m in cat.CATALOGUE if m.kind in (cat.Kind.STATESET, cat.Kind.INFO)],
    ids=lambda m: m.name,
)
def test_statesets_and_infos_have_their_own_labels(metric: cat.Metric) -> None:
    assert metric.labels


def test_every_device_id_prefix_maps_to_a_known_model() -> None:
    assert {model for _, model in cat.DEVICE_ID_PREFIXES} <= set(cat.MODELS)


def test_charger_states_are_the_contracts() -> None:
    assert set(cat.CHARGER_STATES) == {
        "A",
        "B",
        "B_AUTH",
        "B_PAUSE",
        "B_SCHEDULER",
        "C",
        "D",
        "E",
        "F",
        "OTA",
        "LOCKED",
    }


def test_load_balancing_modes_are_the_contracts() -> None:
    assert dict(cat.LOAD_BALANCING_MODES) == {
        0: "off",
        1: "power",
        2: "hybrid",
        3: "green",
        4: "power_share",
    }


def test_current_limit_reasons_are_the_contracts() -> None:
    assert dict(cat.LIMIT_REASONS) == {
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


def test_every_reply_key_the_poller_reads_is_kept_when_replies_are_trimmed() -> None:
    """The catalogue is the one list of reply keys: replies are trimmed to its rows' inputs and
    POLLER_INPUTS, so a key the poller starts reading without listing it would read nothing."""
    import ast

    from exporter.device import normalise, poller

    tree = ast.parse(Path(poller.__file__).read_text())
    read: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "get":
                read.add(str(node.args[0].value))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "_changed"
            and isinstance(node.args[-1], ast.Constant)
        ):
            read.add(str(node.args[-1].value))
    not_reply_keys = {"identity"}  # st.fetched's own bookkeeping
    main = normalise.kept_keys(cat.MAIN_METHOD[cat.CHARGER]) or {}
    identity = normalise.kept_keys(cat.DEVICE_ID_METHOD) or {}
    kept = set(main) | set(identity)
    assert read - not_reply_keys, "found no reply reads in the poller: the test is broken"
    assert read - not_reply_keys <= kept
