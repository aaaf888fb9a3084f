"""Small builders for Grafana dashboard JSON (the classic JSON model, schemaVersion 41).

Only what our dashboards use. Every builder returns plain dicts shaped like the `Dashboard` type
of @grafana/schema; `dashboards/typecheck` proves that for every generated file. Panels are laid
out left to right in the order they are added, wrapping at Grafana's 24 columns, so a dashboard
reads like its source: rows and panels, no coordinates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.catalogue.table import KWH as JOULES_PER_KWH

JSON = dict[str, Any]
SCHEMA_VERSION = 41
GRID_WIDTH = 24
# Joules per kWh, the catalogue's factor: every energy query, PromQL and InfluxQL, divides joules
# by this. Written out in digits because InfluxQL has no exponent notation.
KWH = str(int(JOULES_PER_KWH))

# ---- data sources ----------------------------------------------------------------------------


def datasource_ref(kind: str) -> JSON:
    """Panels name their data source through the `datasource` variable, never by UID."""
    return {"type": kind, "uid": "${datasource}"}


def datasource_variable(kind: str, label: str) -> JSON:
    return {
        "name": "datasource",
        "label": label,
        "type": "datasource",
        "query": kind,
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def query_variable(
    name: str,
    label: str,
    kind: str,
    query: str,
    *,
    multi: bool = False,
    include_all: bool = False,
    all_value: str | None = None,
    regex: str = "",
    description: str = "",
) -> JSON:
    """A variable filled by a data-source query; refreshed when the time range changes."""
    variable: JSON = {
        "name": name,
        "label": label,
        "description": description,
        "type": "query",
        "datasource": datasource_ref(kind),
        "query": query,
        "refresh": 2,
        "regex": regex,
        "sort": 7,  # natural ascending: charger-2 before charger-10
        "hide": 0,
        "multi": multi,
        "includeAll": include_all,
        "options": [],
        "skipUrlSync": False,
    }
    if all_value is not None:
        variable["allValue"] = all_value
    return variable


def adhoc_variable(kind: str) -> JSON:
    return {
        "name": "filters",
        "label": "Label filters",
        "description": "Filter every query by any label, e.g. the site or location you configured.",
        "type": "adhoc",
        "datasource": datasource_ref(kind),
        "hide": 0,
        "skipUrlSync": False,
    }


# ---- queries ---------------------------------------------------------------------------------


def prom(
    expr: str,
    legend: str = "",
    *,
    instant: bool = False,
    table: bool = False,
    interval: str | None = None,
) -> JSON:
    """A Prometheus query. `table` implies an instant query in table format."""
    target: JSON = {
        "datasource": datasource_ref("prometheus"),
        "editorMode": "code",
        "expr": dedent(expr),
        "legendFormat": legend or "__auto",
        "range": not (instant or table),
        "instant": instant or table,
        "format": "table" if table else "time_series",
    }
    if interval:
        target["interval"] = interval
    return target


def influxql(query: str, alias: str = "", *, table: bool = False) -> JSON:
    """A raw InfluxQL query (works on InfluxDB 1.x, on 2.x through DBRP mapping, and on 3.x)."""
    target: JSON = {
        "datasource": datasource_ref("influxdb"),
        "query": dedent(query),
        "rawQuery": True,
        "resultFormat": "table" if table else "time_series",
    }
    if alias:
        target["alias"] = alias
    return target


def dedent(text: str) -> str:
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    cut = min(indents, default=0)
    return "\n".join(line[cut:] for line in lines).strip()


# ---- field config ----------------------------------------------------------------------------


def thresholds(*steps: tuple[float | None, str]) -> JSON:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


NEUTRAL = thresholds((None, "green"))


def value_mapping(texts: Mapping[str, tuple[str, str]]) -> JSON:
    """Map values to text and colour: {"1": ("Up", "green")}."""
    return {
        "type": "value",
        "options": {
            value: {"text": text, "color": color, "index": i}
            for i, (value, (text, color)) in enumerate(texts.items())
        },
    }


def override(name: str, properties: Mapping[str, Any]) -> JSON:
    """Field properties (Grafana ids: unit, displayName, mappings...) for one field by name."""
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


def field_config(
    unit: str,
    *,
    custom: JSON | None = None,
    mappings: Sequence[JSON] = (),
    steps: JSON | None = None,
    color: str = "palette-classic",
    minimum: float | None = None,
    maximum: float | None = None,
    decimals: int | None = None,
    no_value: str | None = None,
    overrides: Sequence[JSON] = (),
) -> JSON:
    defaults: JSON = {
        "unit": unit,
        "color": {"mode": color},
        "thresholds": steps or NEUTRAL,
        "mappings": list(mappings),
    }
    if custom is not None:
        defaults["custom"] = custom
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if decimals is not None:
        defaults["decimals"] = decimals
    if no_value is not None:
        defaults["noValue"] = no_value
    return {"defaults": defaults, "overrides": list(overrides)}


HIDE_NOTHING = {"legend": False, "tooltip": False, "viz": False}


def graph_custom(*, bars: bool = False, stack: bool = False, fill: int = 10) -> JSON:
    return {
        "drawStyle": "bars" if bars else "line",
        "lineInterpolation": "linear",
        "lineWidth": 1,
        "fillOpacity": 80 if bars else fill,
        "gradientMode": "none",
        "showPoints": "never",
        "pointSize": 4,
        "spanNulls": False,
        "insertNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "axisPlacement": "auto",
        "axisLabel": "",
        "axisBorderShow": False,
        "axisCenteredZero": False,
        "axisColorMode": "text",
        "scaleDistribution": {"type": "linear"},
        "barAlignment": 0,
        "hideFrom": HIDE_NOTHING,
        "thresholdsStyle": {"mode": "off"},
    }


TABLE_CUSTOM = {
    "align": "auto",
    "cellOptions": {"type": "auto"},
    "inspect": False,
    "filterable": True,
}


def legend(*calcs: str, table: bool = False, show: bool = True) -> JSON:
    return {
        "showLegend": show,
        "displayMode": "table" if table else "list",
        "placement": "right" if table else "bottom",
        "calcs": list(calcs),
    }


TOOLTIP = {"mode": "multi", "sort": "desc"}


def reduce_last() -> JSON:
    return {"calcs": ["lastNotNull"], "fields": "", "values": False}


# ---- panels ----------------------------------------------------------------------------------


@dataclass
class Panel:
    """A panel before layout: its JSON without id and gridPos, and its size."""

    body: JSON
    width: int
    height: int


def _panel(
    kind: str,
    title: str,
    description: str,
    targets: Sequence[JSON],
    fields: JSON,
    options: JSON,
    width: int,
    height: int,
    datasource: JSON,
    **extra: Any,
) -> Panel:
    refs = [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)]
    body: JSON = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": datasource,
        "targets": refs,
        "fieldConfig": fields,
        "options": options,
        **extra,
    }
    return Panel(body, width, height)


def _datasource_of(targets: Sequence[JSON]) -> JSON:
    kinds = {t["datasource"]["type"] for t in targets}
    assert len(kinds) == 1, f"one data source type per panel, got {kinds}"
    return datasource_ref(kinds.pop())


def timeseries(
    title: str,
    description: str,
    targets: Sequence[JSON],
    unit: str,
    *,
    width: int = 12,
    height: int = 8,
    bars: bool = False,
    stack: bool = False,
    legend_calcs: Sequence[str] = (),
    legend_table: bool = False,
    interval: str | None = None,
    time_from: str | None = None,
    steps: JSON | None = None,
    threshold_style: str = "off",
    minimum: float | None = None,
    maximum: float | None = None,
    overrides: Sequence[JSON] = (),
    no_value: str | None = None,
) -> Panel:
    custom = graph_custom(bars=bars, stack=stack)
    custom["thresholdsStyle"] = {"mode": threshold_style}
    extra: JSON = {}
    if interval:
        extra["interval"] = interval
    if time_from:
        extra["timeFrom"] = time_from
    return _panel(
        "timeseries",
        title,
        description,
        targets,
        field_config(
            unit,
            custom=custom,
            steps=steps,
            minimum=minimum,
            maximum=maximum,
            overrides=overrides,
            no_value=no_value,
        ),
        {"legend": legend(*legend_calcs, table=legend_table), "tooltip": TOOLTIP},
        width,
        height,
        _datasource_of(targets),
        **extra,
    )


def stat(
    title: str,
    description: str,
    targets: Sequence[JSON],
    unit: str,
    *,
    width: int = 4,
    height: int = 4,
    steps: JSON | None = None,
    mappings: Sequence[JSON] = (),
    text_mode: str = "auto",
    graph: bool = False,
    color_mode: str = "value",
    decimals: int | None = None,
    no_value: str | None = None,
) -> Panel:
    return _panel(
        "stat",
        title,
        description,
        targets,
        field_config(
            unit,
            mappings=mappings,
            steps=steps,
            color="thresholds",
            decimals=decimals,
            no_value=no_value,
        ),
        {
            "reduceOptions": reduce_last(),
            "orientation": "auto",
            "textMode": text_mode,
            "colorMode": color_mode,
            "graphMode": "area" if graph else "none",
            "justifyMode": "auto",
            "wideLayout": True,
            "showPercentChange": False,
            "percentChangeColorMode": "standard",
        },
        width,
        height,
        _datasource_of(targets),
    )


def bargauge(
    title: str,
    description: str,
    targets: Sequence[JSON],
    unit: str,
    *,
    width: int = 8,
    height: int = 8,
    steps: JSON | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Panel:
    return _panel(
        "bargauge",
        title,
        description,
        targets,
        field_config(unit, steps=steps, color="thresholds", minimum=minimum, maximum=maximum),
        {
            "reduceOptions": reduce_last(),
            "orientation": "horizontal",
            "displayMode": "gradient",
            "valueMode": "color",
            "namePlacement": "auto",
            "showUnfilled": True,
            "sizing": "auto",
            "minVizHeight": 16,
            "minVizWidth": 8,
            "maxVizHeight": 300,
            "legend": legend(show=False),
        },
        width,
        height,
        _datasource_of(targets),
    )


def table(
    title: str,
    description: str,
    targets: Sequence[JSON],
    unit: str = "none",
    *,
    width: int = 12,
    height: int = 8,
    overrides: Sequence[JSON] = (),
    mappings: Sequence[JSON] = (),
    transformations: Sequence[JSON] = (),
    sort_by: str | None = None,
    no_value: str | None = None,
) -> Panel:
    options: JSON = {"showHeader": True, "frameIndex": 0, "cellHeight": "sm"}
    if sort_by:
        options["sortBy"] = [{"displayName": sort_by, "desc": True}]
    fields = field_config(unit, mappings=mappings, overrides=overrides, no_value=no_value)
    fields["defaults"]["custom"] = dict(TABLE_CUSTOM)
    return _panel(
        "table",
        title,
        description,
        targets,
        fields,
        options,
        width,
        height,
        _datasource_of(targets),
        transformations=list(transformations),
    )


def state_timeline(
    title: str,
    description: str,
    targets: Sequence[JSON],
    mappings: Sequence[JSON],
    *,
    unit: str = "none",
    width: int = 24,
    height: int = 8,
    per_page: int | None = None,
) -> Panel:
    """One row per series; `per_page` pages through many rows (hundreds of chargers)."""
    options: JSON = {
        "mergeValues": True,
        "showValue": "auto",
        "alignValue": "left",
        "rowHeight": 0.9,
        "legend": legend(),
        "tooltip": {"mode": "single", "sort": "none"},
    }
    if per_page:
        options["perPage"] = per_page
    return _panel(
        "state-timeline",
        title,
        description,
        targets,
        field_config(
            unit,
            mappings=mappings,
            color="thresholds",
            custom={"fillOpacity": 80, "lineWidth": 0, "hideFrom": HIDE_NOTHING},
        ),
        options,
        width,
        height,
        _datasource_of(targets),
    )


# ---- transformations -------------------------------------------------------------------------


def organize(hide: Iterable[str] = (), rename: Mapping[str, str] | None = None) -> JSON:
    return {
        "id": "organize",
        "options": {
            "excludeByName": {name: True for name in hide},
            "renameByName": dict(rename or {}),
            "indexByName": {},
        },
    }


def join_by(field_name: str) -> JSON:
    return {"id": "joinByField", "options": {"byField": field_name, "mode": "outer"}}


def drop_fields(pattern: str) -> JSON:
    return {"id": "filterFieldsByName", "options": {"exclude": {"pattern": pattern}}}


# ---- layout and dashboards -------------------------------------------------------------------


@dataclass
class Row:
    title: str


@dataclass
class Layout:
    """Places panels left to right, wrapping at 24 columns; a Row starts a new band."""

    items: list[JSON] = field(default_factory=list)
    _x: int = 0
    _y: int = 0
    _band: int = 0
    _id: int = 0

    def _next_id(self) -> int:
        self._id += 1
        return self._id

    def add(self, *things: Panel | Row) -> None:
        for thing in things:
            if isinstance(thing, Row):
                self._newline()
                self.items.append(
                    {
                        "type": "row",
                        "title": thing.title,
                        "id": self._next_id(),
                        "collapsed": False,
                        "panels": [],
                        "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": self._y},
                    }
                )
                self._y += 1
                continue
            if self._x + thing.width > GRID_WIDTH:
                self._newline()
            body = dict(thing.body)
            body["id"] = self._next_id()
            body["gridPos"] = {"h": thing.height, "w": thing.width, "x": self._x, "y": self._y}
            self.items.append(body)
            self._x += thing.width
            self._band = max(self._band, thing.height)

    def _newline(self) -> None:
        self._y += self._band
        self._x = 0
        self._band = 0


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: Sequence[JSON],
    layout: Layout,
    *,
    time_from: str = "now-6h",
    refresh: str = "30s",
) -> JSON:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["lektrico"],
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": refresh,
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "weekStart": "",
        "version": 1,
        "links": [
            {
                "title": "Lektrico dashboards",
                "type": "dashboards",
                "tags": ["lektrico"],
                "asDropdown": True,
                "includeVars": False,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
            }
        ],
        "templating": {"list": list(variables)},
        "panels": layout.items,
    }


# How each charger state is shown (text, colour), in the Prometheus and InfluxDB dashboards.
STATE_TEXT = {
    "A": ("A · no car", "text"),
    "B": ("B · car connected", "yellow"),
    "B_AUTH": ("B · waiting for authorisation", "orange"),
    "B_PAUSE": ("B · paused", "purple"),
    "B_SCHEDULER": ("B · waiting for schedule", "purple"),
    "C": ("C · charging", "green"),
    "D": ("D · charging, ventilated", "green"),
    "E": ("E · error", "red"),
    "F": ("F · fault", "dark-red"),
    "OTA": ("firmware update", "blue"),
    "LOCKED": ("locked", "text"),
}
