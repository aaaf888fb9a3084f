"""The dashboards promise: they match the metric catalogue, so a rename breaks a test, not a panel.

Every dashboard JSON type-checks against @grafana/schema; every metric a query, variable or rule
names exists in the catalogue (or is a recording rule we define); every InfluxQL measurement,
field and tag exists in the InfluxDB schema the serializer derives from the catalogue; data
sources are variables; panels carry units and energy is shown in kWh. tests/test_dashboard_data.py
then runs every query against real data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.catalogue import table as cat
from exporter.config.schema import load_config
from exporter.outputs.influx.lines import POINT_TAGS, plans
from exporter.sessions.stage import SESSION_FIELDS, SESSION_MEASUREMENT
from harness.servers import unavailable

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
TYPECHECK = DASHBOARDS / "typecheck"
RULES = ROOT / "rules" / "lektrico.rules.yml"
PROMETHEUS_FILES = sorted((DASHBOARDS / "prometheus").glob("*.json"))
INFLUX_FILES = sorted((DASHBOARDS / "influxdb").glob("*.json"))
ALL_FILES = PROMETHEUS_FILES + INFLUX_FILES
DATASOURCE_REF = "${datasource}"
KWH_DIVISORS = ("/ 3600000",)  # one spelling, which InfluxQL also parses

# Catalogue unit → the Grafana units a panel showing it may use.
GRAFANA_UNITS: dict[str, set[str]] = {
    "watts": {"watt"},
    "joules": {"kwatth"},  # always converted: energy is shown in kWh
    "amperes": {"amp"},
    "volts": {"volt"},
    "celsius": {"celsius"},
    "dBm": {"dBm"},
    "seconds": {"s", "dtdurations"},
    "bytes": {"bytes", "decbytes"},
    "ratio": {"percentunit", "none"},
}


# ---- reading dashboards ----------------------------------------------------------------------


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of every panel."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = dashboard.get("templating", {}).get("list", [])
    return found


def case_id(path: Path, panel: dict[str, Any], target: dict[str, Any]) -> str:
    return f"{path.parent.name}/{path.stem}:{panel['title']}:{target['refId']}"


# ---- metric names in PromQL ------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_BASE = re.compile(r"lektrico_[a-z_]+")


def promql_names(expr: str) -> set[str]:
    """Every identifier naming one of our series: metric names and recording-rule names.

    String literals (label values, label_replace arguments) are left out first, so only names
    in metric position remain. Histogram suffixes (_bucket, _sum, _count) are not stripped: the
    catalogue has no histograms, so such a name is an error like any unknown one.
    """
    code = _STRING.sub('""', expr)
    return {token for token in _IDENTIFIER.findall(code) if "lektrico_" in token}


@cache
def rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return data


def recording_rules() -> dict[str, str]:
    return {
        rule["record"]: rule["expr"]
        for group in rules()["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def base_metric(name: str) -> str:
    """The catalogue metric behind a name: itself, or the metric inside a recording rule name."""
    if name in recording_rules():
        match = _BASE.search(name.split(":")[1])
        assert match, f"recording rule {name} does not name a lektrico metric"
        return match.group(0)
    return name


def unknown_names(expr: str) -> set[str]:
    known = cat.ALL_METRIC_NAMES | recording_rules().keys()
    return {name for name in promql_names(expr) if name not in known}


def prometheus_expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel query and query variable of the Prometheus dashboards."""
    for path in PROMETHEUS_FILES:
        dashboard = load(path)
        for panel, target in targets(dashboard):
            yield case_id(path, panel, target), target["expr"]
        for var in variables(dashboard):
            if var["type"] == "query":
                yield f"{path.stem}:${var['name']}", str(var["query"])


# ---- InfluxDB schema -------------------------------------------------------------------------


def label_values(metric: cat.Metric) -> tuple[str, ...]:
    """The label values a label-as-field metric can take: they become its field names."""
    extract = metric.extract
    if isinstance(extract, cat.Labelled):
        return tuple(name for name, _ in extract.entries)
    if isinstance(extract, cat.Flags):
        return cat.ERROR_FLAGS
    if isinstance(extract, cat.Info):
        return tuple(name for name, _ in extract.fields if name not in POINT_TAGS)
    if metric.name == "lektrico_poll_errors_total":
        return cat.POLL_ERROR_REASONS
    if metric.name == "lektrico_method_supported":
        return tuple(m.name for m in cat.METHODS)
    return ()


@cache
def influx_schema() -> dict[str, tuple[dict[str, str], frozenset[str]]]:
    """measurement → ({field: type}, tags), from the catalogue's `influx=` rows and the
    serializer's measurement names."""
    fields: dict[str, dict[str, str]] = defaultdict(dict)
    tags: dict[str, set[str]] = defaultdict(lambda: set(POINT_TAGS))
    measurement_of = {name: plan.measurement for name, plan in plans("lektrico").items()}
    for metric in cat.CATALOGUE:
        row = metric.influx
        if row is None:
            continue
        measurement = measurement_of[metric.name]
        if row.label_as_field:
            for value in label_values(metric):
                fields[measurement][row.field + value] = row.type
        else:
            fields[measurement][row.field] = row.type
            if metric.kind not in (cat.Kind.STATESET, cat.Kind.INFO):
                tags[measurement].update(metric.labels)
    # Not a catalogue metric: one point per finished charging session (docs/sessions.md).
    session = f"lektrico_{SESSION_MEASUREMENT}"
    fields[session] = dict(SESSION_FIELDS)
    tags[session] = set(POINT_TAGS)
    return {m: (fields[m], frozenset(tags[m])) for m in fields}


def metric_of_field(measurement: str, field: str) -> cat.Metric | None:
    measurement_of = {name: plan.measurement for name, plan in plans("lektrico").items()}
    for metric in cat.CATALOGUE:
        row = metric.influx
        if row is None or measurement_of[metric.name] != measurement:
            continue
        if field == row.field or (row.label_as_field and field.startswith(row.field)):
            return metric
    return None


_INNER_SELECT = re.compile(
    r"SELECT\s+(?P<select>(?:(?!\bSELECT\b|\bFROM\b).)*?)\s+FROM\s+\"(?P<measurement>[^\"]+)\"",
    re.DOTALL,
)
_AS_ALIAS = re.compile(r'\s+AS\s+"[^"]*"')
_QUOTED = re.compile(r'"([^"]+)"')
_FIELD_REGEX = re.compile(r"/\^([^/]+)/")
_GROUP_BY = re.compile(r"GROUP BY\s+(.*?)(?:\s+fill\(|$)", re.DOTALL)
_WHERE_TAGS = re.compile(r'"([^"]+)"\s*=~')


def _until_subquery_ends(query: str, start: int) -> str:
    """The rest of one SELECT: up to the parenthesis closing its subquery, or the end."""
    depth = 0
    for i in range(start, len(query)):
        depth += {"(": 1, ")": -1}.get(query[i], 0)
        if depth < 0:
            return query[start:i]
    return query[start:]


def influx_references(query: str) -> Iterator[tuple[str, str, str]]:
    """(measurement, kind, name) read by each innermost SELECT: kind is field, field-regex or tag.

    Outer SELECTs of subqueries read the inner query's aliases, not stored fields, so only the
    innermost SELECT ... FROM "measurement" of each query is checked.
    """
    for match in _INNER_SELECT.finditer(query):
        measurement = match["measurement"]
        select = _AS_ALIAS.sub("", match["select"])
        for name in _QUOTED.findall(select):
            yield measurement, "field", name
        for prefix in _FIELD_REGEX.findall(select):
            yield measurement, "field-regex", prefix
        rest = _until_subquery_ends(query, match.end())
        for name in _WHERE_TAGS.findall(rest):
            yield measurement, "tag", name
        for clause in _GROUP_BY.findall(rest):
            for name in _QUOTED.findall(clause):
                yield measurement, "tag", name


def influx_metrics(query: str) -> set[str]:
    """Catalogue metrics an InfluxQL query reads."""
    found = set()
    schema = influx_schema()
    for measurement, kind, name in influx_references(query):
        if kind == "tag" or measurement not in schema:
            continue
        names = [f for f in schema[measurement][0] if kind == "field" and f == name] or [
            f for f in schema[measurement][0] if kind == "field-regex" and f.startswith(name)
        ]
        for field in names:
            metric = metric_of_field(measurement, field)
            if metric:
                found.add(metric.name)
    return found


# ---- units -----------------------------------------------------------------------------------


def catalogue_unit(name: str) -> str:
    if name in cat.BY_NAME:
        return cat.BY_NAME[name].unit
    return "seconds" if name.endswith("_seconds") else ""


def panel_units(panel: dict[str, Any]) -> set[str]:
    fields = panel.get("fieldConfig", {})
    units = {fields.get("defaults", {}).get("unit")}
    for override in fields.get("overrides", []):
        units |= {p["value"] for p in override["properties"] if p["id"] == "unit"}
    return {u for u in units if u}


def query_text(target: dict[str, Any]) -> str:
    return str(target.get("expr") or target.get("query") or "")


def metrics_of(target: dict[str, Any]) -> set[str]:
    if "expr" in target:
        return {base_metric(name) for name in promql_names(target["expr"])}
    return influx_metrics(target["query"])


# ---- the tests -------------------------------------------------------------------------------


def test_generated_dashboards_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dashboards.generate", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_dashboard_is_present() -> None:
    names = {f"{p.parent.name}/{p.name}" for p in ALL_FILES}
    assert names == {
        "prometheus/fleet-overview.json",
        "prometheus/device-detail.json",
        "prometheus/exporter-health.json",
        "influxdb/fleet-overview.json",
        "influxdb/device-detail.json",
        "influxdb/sessions.json",
    }


def typecheck(*files: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    missing = node is None or not (TYPECHECK / "node_modules" / "@grafana" / "schema").is_dir()
    if missing:
        unavailable("node or dashboards/typecheck/node_modules missing (run make npm-deps)")
    assert node is not None
    return subprocess.run(
        [node, str(TYPECHECK / "check.mjs"), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_dashboard_type_checks_against_grafana_schema() -> None:
    result = typecheck()
    assert result.returncode == 0, result.stderr
    assert f"{len(ALL_FILES)} dashboard file(s) type-check" in result.stdout


def test_type_check_rejects_a_misspelt_key_and_a_wrong_enum(tmp_path: Path) -> None:
    dashboard = load(DASHBOARDS / "prometheus" / "fleet-overview.json")
    panel = next(p for p in dashboard["panels"] if p["type"] == "timeseries")
    panel["fieldConfig"]["defaults"]["units"] = "watt"
    panel["options"]["legend"]["displayMode"] = "tabel"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(dashboard, indent=2))

    result = typecheck(broken)

    assert result.returncode == 1
    assert "'\"units\"' does not exist" in result.stderr
    assert '"tabel"' in result.stderr


@pytest.mark.parametrize("where, expr", list(prometheus_expressions()))
def test_every_promql_name_is_in_the_catalogue(where: str, expr: str) -> None:
    assert promql_names(expr), f"{where} names no lektrico metric"
    assert not unknown_names(expr), f"{where}: not in the catalogue: {unknown_names(expr)}"


def test_every_rule_expression_names_catalogue_metrics() -> None:
    for group in rules()["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            assert promql_names(rule["expr"]), f"{name} names no lektrico metric"
            assert not unknown_names(rule["expr"]), f"{name}: {unknown_names(rule['expr'])}"
    for record in recording_rules():
        assert base_metric(record) in cat.ALL_METRIC_NAMES, record


def test_name_check_catches_renames_and_histogram_suffixes() -> None:
    assert unknown_names("sum(rate(lektrico_power_watt[5m]))") == {"lektrico_power_watt"}
    assert unknown_names("lektrico_poll_duration_seconds_bucket") == {
        "lektrico_poll_duration_seconds_bucket"
    }
    assert unknown_names('fleet:lektrico_power_watts:sum{site="lektrico_x"}') == set()
    assert unknown_names('label_replace(vector(1), "state", "lektrico_nope", "", "")') == set()


def test_recording_rules_used_by_dashboards_are_defined() -> None:
    used = {
        name for _, expr in prometheus_expressions() for name in promql_names(expr) if ":" in name
    }
    assert used, "the fleet dashboard reads recording rules"
    assert used <= recording_rules().keys()


@pytest.mark.parametrize("path", INFLUX_FILES, ids=lambda p: p.stem)
def test_every_influxql_measurement_field_and_tag_exists(path: Path) -> None:
    schema = influx_schema()
    for panel, target in targets(load(path)):
        where = case_id(path, panel, target)
        refs = list(influx_references(target["query"]))
        assert refs, f"{where}: no measurement read"
        for measurement, kind, name in refs:
            assert measurement in schema, f"{where}: unknown measurement {measurement}"
            fields, tags = schema[measurement]
            if kind == "field":
                assert name in fields, f"{where}: {measurement} has no field {name}"
            elif kind == "field-regex":
                assert any(f.startswith(name) for f in fields), f"{where}: /^{name}/"
            else:
                assert name in tags or name == "$group", f"{where}: {measurement} tag {name}"
    for var in variables(load(path)):
        if var["type"] == "query":
            measurement = _QUOTED.findall(var["query"])[0]
            assert measurement in schema, f"${var['name']}: {measurement}"


def test_influx_check_catches_an_unknown_field() -> None:
    refs = list(influx_references('SELECT mean("power_watt") FROM "lektrico_charger" WHERE x'))
    assert ("lektrico_charger", "field", "power_watt") in refs
    assert "power_watt" not in influx_schema()["lektrico_charger"][0]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_data_source_is_a_variable_never_a_uid(path: Path) -> None:
    dashboard = load(path)
    assert "__inputs" not in dashboard
    kinds = [v for v in variables(dashboard) if v["type"] == "datasource"]
    assert [v["name"] for v in kinds] == ["datasource"]
    for where, key, value in walk(dashboard):
        if key == "datasource":
            assert value == {"type": kinds[0]["query"], "uid": DATASOURCE_REF}, where
        if key == "uid" and where:
            assert value == DATASOURCE_REF, f"{where}: hard-coded uid {value}"


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_panels_show_units_and_energy_in_kwh(path: Path) -> None:
    for panel in panels(load(path)):
        if panel["type"] in ("row", "text"):
            continue
        units = panel_units(panel)
        for target in panel["targets"]:
            where = case_id(path, panel, target)
            for metric in metrics_of(target):
                unit = catalogue_unit(metric)
                if unit in GRAFANA_UNITS:
                    assert units & GRAFANA_UNITS[unit], f"{where}: {metric} needs {unit}"
                if unit == "joules":
                    assert any(d in query_text(target) for d in KWH_DIVISORS), where


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_layout_has_no_repeats_and_no_overlaps(path: Path) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in panels(load(path)):
        assert "repeat" not in panel, panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


DEVICE_FILES = [p for p in ALL_FILES if p.stem != "exporter-health"]


@pytest.mark.parametrize("path", DEVICE_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_device_variable_lists_devices_for_one_or_hundreds(path: Path) -> None:
    dashboard = load(path)
    device = next(v for v in variables(dashboard) if v["name"] == "device")
    assert "lektrico_up" in device["query"] or '"lektrico_device"' in device["query"]
    if "fleet-overview" in path.name or "sessions" in path.name:  # every device at once
        assert device["multi"] and device["includeAll"] and device["allValue"] == ".*"
        selector = re.compile(r'device\s*=~\s*"\$device"|"device" =~ /\^\$device\$/')
        for panel, target in targets(dashboard):
            text = query_text(target)
            if "fleet:" not in text:
                assert selector.search(text), case_id(path, panel, target)
    else:
        assert not device["multi"] and not device["includeAll"]


# ---- provisioning and the example stack ------------------------------------------------------

DEPLOY = ROOT / "deploy"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def mounts(service: str) -> dict[str, Path]:
    """Container path → host path of a compose service's bind mounts."""
    found = {}
    for volume in compose()["services"][service].get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            found[target] = (DEPLOY / source).resolve()
    return found


def test_compose_bind_mounts_exist() -> None:
    for service in compose()["services"]:
        for target, source in mounts(service).items():
            assert source.exists(), f"{service}: {source} (mounted at {target})"


def test_grafana_provisions_every_dashboard_from_its_mount() -> None:
    providers = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/lektrico.yml").read_text()
    )
    grafana = mounts("grafana")
    provisioned = set()
    for provider in providers["providers"]:
        source = grafana[provider["options"]["path"]]
        provisioned |= set(source.glob("*.json"))
    assert provisioned == set(ALL_FILES)
    assert "/etc/grafana/provisioning" in grafana


def test_grafana_data_sources_match_the_dashboards_variables() -> None:
    data = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/lektrico.yml").read_text())
    types = {source["type"] for source in data["datasources"]}
    wanted = {
        v["query"] for path in ALL_FILES for v in variables(load(path)) if v["type"] == "datasource"
    }
    assert wanted == types == {"prometheus", "influxdb"}
    influx = next(s for s in data["datasources"] if s["type"] == "influxdb")
    assert influx["jsonData"]["version"] == "InfluxQL"


def test_compose_runs_the_demo_with_a_valid_config() -> None:
    exporter = compose()["services"]["exporter"]
    assert "--demo" in exporter["command"]
    config_dir = mounts("exporter")["/etc/lektrico-exporter"]
    config = load_config(str(config_dir / "config.yml"))
    assert config.influxdb is not None and config.influxdb.database == "lektrico"
    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    scrape_targets = [
        t
        for job in prometheus["scrape_configs"]
        for c in job.get("static_configs", [])
        for t in c["targets"]
    ]
    assert "exporter:9654" in scrape_targets
