"""Every dashboard panel shows data: its queries run against real databases fed by the exporter.

A simulated fleet (both charger generations, both meters) is polled every second by the exporter; a
real Prometheus scrapes it every second with rules/lektrico.rules.yml loaded, and the exporter's
line protocol (exporter/outputs/influx/lines.py) is loaded into a real InfluxDB 1.6. Then every
query of every panel, with its template variables filled in the way Grafana fills them (variable
queries run against the same database), must return data of the expected shape: non-empty, finite,
with the labels its legend and table joins name, values its value mappings know, and energy in kWh
rather than joules.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pytest

from exporter.app import Exporter
from exporter.catalogue import table as cat
from exporter.catalogue.selfmetrics import SelfMetrics
from exporter.config.schema import InfluxConfig, parse_config
from exporter.outputs.influx.lines import Serializer
from exporter.outputs.influx.writer import InfluxWriter
from exporter.reading import Reading
from exporter.simulator.server import DeviceSpec, SimulatedFleet
from harness.processes import free_port
from harness.servers import InfluxDB1, Prometheus, VictoriaMetrics, require_binary

from .conftest import override_replies
from .test_dashboards import (
    INFLUX_FILES,
    PROMETHEUS_FILES,
    RULES,
    base_metric,
    case_id,
    influx_metrics,
    load,
    promql_names,
    targets,
    variables,
)

T = TypeVar("T")
pytestmark = pytest.mark.server

# Both charger generations and both meters; the first of each kind is the device-detail pick.
FLEET = (
    # A method failing at every slow poll (cut short): the method failure panels have data,
    # and it costs only System_currents' own limits.
    DeviceSpec("charger-3p", "3p22k", seed=11, method_faults={"System_currents.Get": "truncated"}),
    DeviceSpec("charger-1p", "1p7k", seed=12),
    DeviceSpec("charger-old", "1p7k-old", seed=13),
    DeviceSpec("meter-3p", "3em", seed=14),
    DeviceSpec("meter-1p", "em", seed=15),
    # Charging when polling starts and done 12 s later (at 60x): a finished session for the
    # sessions dashboard.
    DeviceSpec("charger-session", "1p7k", seed=176),
)
ALL_WEEK = {"start_d": 1, "start_h": 0, "start_m": 0, "end_d": 7, "end_h": 23, "end_m": 59}
ALL_WEEK |= {"current": 16, "lb_mode": 1}
KIND = {"3p22k": cat.CHARGER, "1p7k": cat.CHARGER, "1p7k-old": cat.CHARGER}
SITES = ("home", "office")
JOB = "lektrico"
DATABASE = "lektrico"
SCRAPES = 6  # samples per series before the queries run: enough for rate() and increase()
SETUP_TIMEOUT = 45.0

# What Grafana puts in for its built-in variables (a 1 h range, 15 s scrapes).
PROMETHEUS_BUILTINS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
INFLUX_BUILTINS = {"$timeFilter": "time > now() - 1h", "$__interval": "10s"}

PROMETHEUS_CONFIG = """
global: {{scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}}
rule_files: ["{rules}"]
scrape_configs:
  - job_name: {job}
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
"""


# ---- the stack -------------------------------------------------------------------------------


class LoopThread:
    """An event loop in a thread, so the exporter polls while the tests query synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = SETUP_TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Servers(NamedTuple):
    prometheus: Prometheus
    influxdb: InfluxDB1
    victoria_metrics: VictoriaMetrics


@dataclass
class Stack:
    prometheus: Prometheus
    influxdb: InfluxDB1
    devices: dict[str, str]  # name → kind (charger or meter)

    def devices_of(self, kind: str | None) -> list[str]:
        return [name for name, k in self.devices.items() if kind in (None, k)]


def get_json(url: str, params: dict[str, str]) -> Any:
    query = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{url}?{query}", timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{exc.code} from {url} for {params}: {exc.read()!r}") from None


def promql(stack: Stack, expr: str, path: str = "/api/v1/query", **params: str) -> Any:
    body = get_json(stack.prometheus.url + path, {"query": expr, **params})
    assert body["status"] == "success", body
    return body["data"]


def scrapes_done(stack: Stack) -> bool:
    checks = (
        f'min(count_over_time(lektrico_up{{job="{JOB}"}}[1m])) >= {SCRAPES}',
        f'count(lektrico_up{{job="{JOB}"}} == 1) == {len(FLEET)}',
        "count(fleet:lektrico_power_watts:sum) > 0",
        "lektrico_influxdb_last_write_success_timestamp_seconds > 0",
    )
    return all(promql(stack, check)["result"] for check in checks)


async def start_servers(tmp: Path, exporter_port: int) -> Servers:
    config = PROMETHEUS_CONFIG.format(rules=RULES, job=JOB, port=exporter_port)
    servers = Servers(
        Prometheus(tmp / "prometheus", config),
        InfluxDB1(tmp / "influxdb"),
        VictoriaMetrics(tmp / "victoria-metrics"),
    )
    await asyncio.gather(*(server.start() for server in servers))
    await servers.influxdb.query(f'CREATE DATABASE "{DATABASE}"')
    return servers


async def stop_servers(servers: Servers) -> None:
    await asyncio.gather(*(server.stop() for server in servers))


async def start_writer(url: str, metrics: SelfMetrics) -> InfluxWriter:
    """The exporter's InfluxDB output, writing to VictoriaMetrics's InfluxDB 2.x write API.

    It feeds the Exporter health dashboard's InfluxDB writer panels with real counters.
    """
    config = InfluxConfig.model_validate(
        {"url": url, "bucket": DATABASE, "org": "lektrico", "flush_interval": "1s"}
    )
    writer = InfluxWriter(config, metrics)
    await writer.start()
    return writer


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for server in (Prometheus, InfluxDB1, VictoriaMetrics):
        require_binary(server.binary)  # skips here, fails under CI, when one is missing
    tmp = tmp_path_factory.mktemp("dashboard-data")
    runner = LoopThread()
    serializer = Serializer(precision="ms")
    lines: list[str] = []

    def to_line_protocol(reading: Reading) -> None:
        lines.extend(serializer.lines(reading))

    port = free_port()
    metrics = SelfMetrics()
    exporter: Exporter | None = None
    writer: InfluxWriter | None = None
    servers: Servers | None = None
    fleet: SimulatedFleet | None = None
    try:
        servers = runner.run(start_servers(tmp, port))
        writer = runner.run(start_writer(servers.victoria_metrics.url, metrics))
        # Made once the servers are up: the simulated clock starts with the fleet, and at 60x
        # a slow server start would be minutes of simulated time, the session long over.
        fleet = SimulatedFleet(list(FLEET), speed=60.0)
        charger = fleet.device("charger-3p")
        # A schedule enabled and covering the whole week, so the schedule panels have data
        # whatever the time the test runs at.
        override_replies(
            fleet,
            "charger-3p",
            {
                "App_config.Get": lambda: {
                    **charger.read("App_config.Get"),
                    "charging_schedule_enabled": True,
                },
                "Charging_schedule.Get": {"charging_schedule": [ALL_WEEK]},
            },
        )
        runner.run(fleet.start())
        devices = [
            {"name": s.name, "host": fleet.host(s.name), "labels": {"site": SITES[i % 2]}}
            for i, s in enumerate(FLEET)
        ]
        config = parse_config(
            f"listen: '127.0.0.1:{port}'\n"
            f"devices: {json.dumps(devices)}\n"
            f"state: {{path: '{tmp / 'state.db'}'}}\n"
            "poll: {interval: 1s, timeout: 500ms, slow_interval: 2s, identity_interval: 30s}\n"
            # A tariff, so the derived energy and cost panels have series.
            "tariffs: {default: home, table: {home: {currency: EUR, periods: [{name: night,"
            " price: 0.1, from: '22:00', to: '07:00'}, {name: day, price: 0.2}]}}}\n"
        )
        exporter = Exporter(config, metrics=metrics, extra_sinks=[to_line_protocol, writer.publish])
        assert exporter.sessions is not None
        # Finished sessions' lektrico_session points go where the readings go.
        exporter.sessions.emit = lambda data: lines.extend(data.decode().splitlines())
        exporter.sessions.precision = "ms"  # as the readings' lines
        runner.run(exporter.start())
        stack = Stack(
            servers.prometheus,
            servers.influxdb,
            {s.name: KIND.get(s.profile, cat.METER) for s in FLEET},
        )
        deadline = time.monotonic() + SETUP_TIMEOUT
        while not (scraped := scrapes_done(stack)) or not any(
            x.startswith("lektrico_session,") for x in lines
        ):
            assert time.monotonic() < deadline, (
                "no session finished in time" if scraped else "Prometheus did not scrape in time"
            )
            time.sleep(0.5)
        body = ("\n".join(list(lines)) + "\n").encode()
        status, text = runner.run(servers.influxdb.write(DATABASE, body, precision="ms"))
        assert status == 204, text
        yield stack
    finally:
        if exporter is not None:
            runner.run(exporter.stop())
        if writer is not None:
            runner.run(writer.close())
        if fleet is not None:
            runner.run(fleet.stop())
        if servers is not None:
            runner.run(stop_servers(servers))
        runner.close()


# ---- template variables ----------------------------------------------------------------------


def var_regex(var: dict[str, Any]) -> re.Pattern[str] | None:
    text = var.get("regex") or ""
    if not text:
        return None
    return re.compile(text.strip("/"))


def pick(var: dict[str, Any], options: list[str]) -> str:
    """The value Grafana selects: the saved one if offered, else the first; "All" if allowed."""
    regex = var_regex(var)
    options = [o for o in options if regex is None or regex.fullmatch(o)]
    assert options, f"variable ${var['name']} has no options"
    if var.get("includeAll"):
        return str(var.get("allValue") or "|".join(options))
    current = (var.get("current") or {}).get("value")
    return current if current in options else options[0]


def fill(text: str, values: dict[str, str]) -> str:
    # Longest names first, so $device does not eat the start of $devices.
    for name in sorted(values, key=len, reverse=True):
        text = text.replace(name, values[name])
    return text


def prometheus_options(stack: Stack, query: str) -> list[str]:
    """Run a Grafana Prometheus variable query: label_values(...) or label_names(...)."""
    if match := re.fullmatch(r"label_names\((.*)\)", query):
        # Grafana asks for the labels of every metric whose name contains the argument.
        selector = f'{{__name__=~".*{match[1]}.*"}}'
        data = get_json(stack.prometheus.url + "/api/v1/labels", {"match[]": selector})
        return sorted(set(data["data"]) - {"__name__"})
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
    assert match, query
    data = get_json(stack.prometheus.url + "/api/v1/series", {"match[]": match[1]})
    return sorted({series[match[2]] for series in data["data"] if match[2] in series})


def resolve_prometheus(
    stack: Stack, dashboard: dict[str, Any], device: str | None
) -> dict[str, str]:
    """Values for the dashboard's variables, each query run with the values before it."""
    values = dict(PROMETHEUS_BUILTINS)
    for var in variables(dashboard):
        name = "$" + var["name"]
        if var["type"] == "query":
            options = prometheus_options(stack, fill(var["query"], values))
            if var["name"] == "device" and device is not None:
                assert device in options, f"{device} not offered by $device: {options}"
                values[name] = device  # single value: Grafana inserts it as it is
                continue
            values[name] = pick(var, options)
    return values


STEP_SECONDS = {"1d": 86400, "1w": 604800}


def grafana_range(target: dict[str, Any], seconds: float = 60.0) -> dict[str, str]:
    """The last minute at the target's step, aligned the way Grafana aligns range queries:
    start and end rounded down to the step, end one step on (so today's bar is included)."""
    step = STEP_SECONDS.get(target.get("interval", ""), 1)
    now = time.time()
    start = (now - seconds) // step * step
    end = now // step * step + step
    return {"start": f"{start:.0f}", "end": f"{end:.0f}", "step": str(step)}


# ---- result shape checks ---------------------------------------------------------------------

LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def mapped_values(panel: dict[str, Any]) -> set[str] | None:
    """The values a stat or state timeline maps to text, when it maps numbers."""
    if panel["type"] not in ("stat", "state-timeline"):
        return None
    keys: set[str] = set()
    for mapping in panel["fieldConfig"]["defaults"].get("mappings", []):
        if mapping["type"] == "value":
            keys |= set(mapping["options"])
    return keys or None


def join_labels(panel: dict[str, Any]) -> set[str]:
    return {
        t["options"]["byField"]
        for t in panel.get("transformations", [])
        if t["id"] == "joinByField"
    }


def shows_kwh(panel: dict[str, Any], target: dict[str, Any]) -> bool:
    energy = {
        m
        for m in (base_metric(n) for n in promql_names(target.get("expr", "")))
        if cat.BY_NAME.get(m) is not None and cat.BY_NAME[m].unit == "joules"
    }
    return bool(energy) or "3600000" in target.get("query", "")


def check_prometheus_series(
    panel: dict[str, Any], target: dict[str, Any], series: list[dict[str, Any]], legend: str
) -> list[str]:
    problems = []
    wanted = set(LEGEND_LABEL.findall(legend)) | join_labels(panel)
    mapped = mapped_values(panel)
    for s in series:
        values = [s["value"]] if "value" in s else s["values"]
        numbers = [float(v) for _, v in values]
        if missing := wanted - s["metric"].keys():
            problems.append(f"series {s['metric']} lacks {sorted(missing)}")
        if not all(math.isfinite(n) for n in numbers):
            problems.append(f"series {s['metric']} has non-finite values")
        if mapped is not None:
            unknown = {f"{n:g}" for n in numbers} - mapped
            if unknown:
                problems.append(f"values {sorted(unknown)} have no value mapping")
        if shows_kwh(panel, target) and any(abs(n) > 1e7 for n in numbers):
            problems.append("energy above 10 GWh: joules not converted to kWh?")
    return problems


@dataclass
class Case:
    path: Path
    panel: dict[str, Any]
    target: dict[str, Any]

    @property
    def id(self) -> str:
        return case_id(self.path, self.panel, self.target)

    def kind(self) -> str | None:
        """The device kind a device-detail query needs (charger or meter), from the catalogue."""
        names = {base_metric(n) for n in promql_names(self.target.get("expr", ""))}
        names |= influx_metrics(self.target.get("query", ""))
        kinds = set.union(*(set(cat.BY_NAME[n].devices) for n in names if n in cat.BY_NAME))
        return kinds.pop() if len(kinds) == 1 else None


def cases(files: list[Path]) -> list[Case]:
    return [Case(path, panel, target) for path in files for panel, target in targets(load(path))]


def device_for(stack: Stack, case: Case, dashboard: dict[str, Any]) -> str | None:
    """None on fleet dashboards (they run with "All"); on device detail, the newest model of
    the kind the query is about (a charger or a meter), as a user would pick it."""
    device = next((v for v in variables(dashboard) if v["name"] == "device"), None)
    if device is None or device.get("includeAll"):
        return None
    return stack.devices_of(case.kind())[0]


# ---- the tests -------------------------------------------------------------------------------


PROMETHEUS_CASES = cases(PROMETHEUS_FILES)
INFLUX_CASES = cases(INFLUX_FILES)


@pytest.mark.parametrize("case", PROMETHEUS_CASES, ids=lambda c: c.id)
def test_prometheus_panel_query_returns_data(stack: Stack, case: Case) -> None:
    dashboard = load(case.path)
    device = device_for(stack, case, dashboard)
    values = resolve_prometheus(stack, dashboard, device)
    expr = fill(case.target["expr"], values)
    legend = fill(case.target.get("legendFormat", ""), values)
    if case.target.get("range"):
        data = promql(stack, expr, "/api/v1/query_range", **grafana_range(case.target))
        assert data["resultType"] == "matrix"
    else:
        data = promql(stack, expr)
        assert data["resultType"] == "vector"

    assert data["result"], f"no data for {device or 'all devices'}:\n{expr}"
    problems = check_prometheus_series(case.panel, case.target, data["result"], legend)
    assert not problems, f"{expr}\n" + "\n".join(problems)


def test_prometheus_variables_offer_the_fleet(stack: Stack) -> None:
    assert prometheus_options(stack, "label_values(lektrico_up, job)") == [JOB]
    devices = prometheus_options(stack, f'label_values(lektrico_up{{job=~"{JOB}"}}, device)')
    assert devices == sorted(stack.devices)
    assert "site" in prometheus_options(stack, "label_names(lektrico_up)")


# ---- InfluxDB --------------------------------------------------------------------------------


def influx_rows(stack: Stack, runner_query: str) -> list[dict[str, Any]]:
    """Series of an InfluxQL query, run over HTTP like Grafana (epoch ms)."""
    body = get_json(
        stack.influxdb.url + "/query", {"q": runner_query, "db": DATABASE, "epoch": "ms"}
    )
    errors = [r["error"] for r in body.get("results", []) if "error" in r]
    assert not errors and "error" not in body, f"{runner_query}\n{errors or body['error']}"
    series: list[dict[str, Any]] = body["results"][0].get("series", [])
    return series


def influx_options(stack: Stack, query: str) -> list[str]:
    """Run a SHOW TAG VALUES / SHOW TAG KEYS variable query."""
    options = set()
    for series in influx_rows(stack, query):
        column = series["columns"].index("value" if "value" in series["columns"] else "tagKey")
        options |= {row[column] for row in series["values"]}
    return sorted(options)


def resolve_influx(stack: Stack, dashboard: dict[str, Any], device: str | None) -> dict[str, str]:
    values = dict(INFLUX_BUILTINS)
    for var in variables(dashboard):
        if var["type"] != "query":
            continue
        options = influx_options(stack, fill(var["query"], values))
        if var["name"] == "device" and device is not None:
            assert device in options, f"{device} not offered by $device: {options}"
            values["$device"] = device
        else:
            values["$" + var["name"]] = pick(var, options)
    return values


def check_influx_series(
    panel: dict[str, Any], target: dict[str, Any], series: list[dict[str, Any]], alias: str
) -> list[str]:
    problems = []
    wanted = set(re.findall(r"\$tag_([a-zA-Z_][a-zA-Z0-9_]*)", alias))
    mapped = mapped_values(panel)
    values = []
    for s in series:
        if missing := wanted - (s.get("tags") or {}).keys():
            problems.append(f"series {s['name']} {s.get('tags')} lacks tags {sorted(missing)}")
        values += [v for row in s["values"] for v in row[1:] if v is not None]
    if not values:
        problems.append("every value is null")
    for v in values:
        if isinstance(v, str) and mapped is not None and v not in mapped:
            problems.append(f"value {v!r} has no value mapping")
        if isinstance(v, float | int) and not isinstance(v, bool):
            if not math.isfinite(v):
                problems.append(f"non-finite value {v}")
            if shows_kwh(panel, target) and abs(v) > 1e7:
                problems.append("energy above 10 GWh: joules not converted to kWh?")
    return problems


@pytest.mark.parametrize("case", INFLUX_CASES, ids=lambda c: c.id)
def test_influxdb_panel_query_returns_data(stack: Stack, case: Case) -> None:
    dashboard = load(case.path)
    device = device_for(stack, case, dashboard)
    values = resolve_influx(stack, dashboard, device)
    query = fill(case.target["query"], values)

    series = influx_rows(stack, query)

    assert series, f"no data for {device or 'all devices'}:\n{query}"
    alias = fill(case.target.get("alias", ""), values)
    problems = check_influx_series(case.panel, case.target, series, alias)
    assert not problems, f"{query}\n" + "\n".join(problems)


def test_influxdb_variables_offer_the_fleet(stack: Stack) -> None:
    devices = influx_options(stack, 'SHOW TAG VALUES FROM "lektrico_device" WITH KEY = "device"')
    assert devices == sorted(stack.devices)
    assert "site" in influx_options(stack, 'SHOW TAG KEYS FROM "lektrico_charger"')
