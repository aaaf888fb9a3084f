"""The pages for people: the status page's assets and `/device/NAME`.

The status page is a static document with its script and style sheet (served from `static/`),
so a strict Content-Security-Policy (no inline script, nothing from elsewhere) holds; its data
comes from `/api/devices`. The device page is rendered here, every device string escaped.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from importlib import resources
from urllib.parse import quote

from exporter import __version__
from exporter.catalogue import table as cat
from exporter.device.poller import DeviceState
from exporter.reading import Sample
from exporter.sessions.ledger import Session
from exporter.web.status import ERROR_WORDS, LIMIT_WORDS, DeviceStatus, explain

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ASSETS = {
    "status.html": "text/html; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
}


def asset(name: str) -> bytes:
    return resources.files("exporter.web").joinpath("static", name).read_bytes()


_METRICS = {m.name: m for m in cat.CATALOGUE}
_SKIP = {cat.IDENTITY_INFO, "lektrico_wifi_info", "lektrico_up"}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    s = max(0.0, now - ts)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def display(metric: str, value: float) -> str:
    """A sample's value in the unit people read: kWh for energy, minutes for long durations."""
    unit = _METRICS[metric].unit if metric in _METRICS else ""
    if unit == "joules":
        return f"{value / cat.KWH:.3f} kWh"
    if unit == "seconds" and metric.endswith("_timestamp_seconds"):
        return _when(value)
    if unit == "seconds":
        return f"{value / 60:.1f} min" if value >= 120 else f"{value:.3g} s"
    if unit == "ratio":
        return f"{value * 100:.0f} %"
    if unit == "bytes":
        return f"{value / 1024:.1f} KiB"
    short = {"watts": "W", "amperes": "A", "volts": "V", "celsius": "°C", "dBm": "dBm"}
    if unit in short:
        return f"{value:g} {short[unit]}"
    return f"{value:g}"


def _table(head: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A table of already escaped cells."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="table-wrap"><table><tr>{th}</tr>{body}</table></div>'


def _labels(sample: Sample) -> str:
    return ", ".join(f"{_e(k)}={_e(v)}" for k, v in sample.labels)


def _sessions_table(sessions: Sequence[Session]) -> str:
    rows = [
        (
            _e(_when(s.start)),
            "open" if s.open else _e(_when(s.end)) if s.end is not None else "",
            _e(f"{s.energy_wh / 1000:.3f} kWh"),
            _e(f"{s.cost:.2f} {s.currency}") if s.currency else "",
            _e(", ".join(sorted(s.anomalies)) or "none"),
        )
        for s in sessions
    ]
    head = ["start", "end", "energy", "cost", "anomalies"]
    link = "<p><a href='/sessions'>all sessions, as a monthly statement</a></p>"
    return _table(head, rows) + link


def schedule_words(values: dict[str, float]) -> str | None:
    """The charging schedule in words, from the device's lektrico_schedule_* values."""
    enabled = values.get("lektrico_schedule_enabled")
    count = values.get("lektrico_schedule_intervals")
    if enabled is None and count is None:
        return None
    intervals = "" if count is None else f" ({count:g} interval{'' if count == 1 else 's'})"
    if enabled == 0:
        return "off" + intervals
    current = values.get("lektrico_schedule_current_amperes")
    if values.get("lektrico_schedule_active") != 1:
        now = "no interval active now"
    elif current == 0:
        now = "charging paused by the schedule now"
    elif current is not None:
        now = f"an interval limits charging to {current:g} A now"
    else:
        now = "an interval is active now"
    return ("on" if enabled == 1 else "unknown") + intervals + ", " + now


def device_page(
    dev: DeviceState,
    status: DeviceStatus | None,
    grafana_url: str | None,
    now: float,
    sessions: Sequence[Session] = (),
) -> str:
    reading = dev.reading
    samples = reading.samples if reading is not None else ()
    info: dict[str, str] = {}
    wifi: dict[str, str] = {}
    for s in samples:
        if s.metric == cat.IDENTITY_INFO:
            info = dict(s.labels)
        elif s.metric == "lektrico_wifi_info":
            wifi = dict(s.labels)
    name = dev.name
    quoted = quote(name, safe="")
    row = status.row if status is not None else {}
    facts = [
        ("State", row.get("state_text", "Not polled yet")),
        ("Model", info.get("model") or (dev.model.name if dev.model else "unknown")),
        ("Device id", info.get("device_id", "")),
        ("Serial", info.get("serial", "")),
        ("Firmware", " ".join(x for x in (info.get("fw_version"), info.get("fw_id")) if x)),
        ("Board revision", info.get("board_revision", "")),
        ("Alias", info.get("alias", "")),
        ("Host", dev.target.base_url),
        ("Labels", ", ".join(f"{k}={v}" for k, v in dev.target.labels)),
        ("Wi-Fi", " ".join(f"{k}={v}" for k, v in wifi.items())),
        ("Last success", _ago(status.last_success if status else None, now)),
    ]
    if status is not None and status.down_since is not None:
        facts.append(("Down since", f"{_when(status.down_since)} ({_ago(status.down_since, now)})"))
    if reading is not None and not reading.up:
        facts.append(("Last error", f"{explain(reading.reason, reading.error)} ({reading.error})"))
    facts_html = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts if v)

    supported = dev.replies.methods()
    unsupported = sorted(dev.unsupported)
    methods = _e(", ".join(supported) or "none yet")
    if unsupported:
        methods += f"<br><span class='muted'>not supported: {_e(', '.join(unsupported))}</span>"

    limits = [
        (_e(dict(s.labels).get("limit", "")), _e(display(s.metric, s.value)))
        for s in samples
        if s.metric == "lektrico_current_limit_amperes"
    ]
    reasons = [
        dict(s.labels).get("reason", "")
        for s in samples
        if s.metric == "lektrico_current_limit_reason" and s.value == 1
    ]
    why = (
        "The current is limited by " + _e(LIMIT_WORDS.get(reasons[0], reasons[0])) + "."
        if reasons
        else ""
    )
    schedule = schedule_words({s.metric: s.value for s in samples if not s.labels})

    def flagged(metric: str) -> list[str]:
        return [
            ERROR_WORDS.get(dict(s.labels).get("error", ""), dict(s.labels).get("error", ""))
            for s in samples
            if s.metric == metric and s.value == 1
        ]

    active, logged = flagged("lektrico_error_active"), flagged("lektrico_error_logged")
    values = [
        (_e(s.metric), _labels(s), _e(display(s.metric, s.value)))
        for s in samples
        if s.metric not in _SKIP and not s.metric.startswith("lektrico_error_")
    ]
    failures = [
        (_e(_when(f.time)), _e(f.reason), _e(f.message))
        for f in reversed((status.failures if status else None) or ())
    ]
    links = [f'<a href="/probe?target={quoted}">this device\'s metrics (/probe)</a>']
    if grafana_url:
        base = grafana_url.rstrip("/")
        links.append(
            f'<a href="{_e(base)}/d/lektrico-device-detail?var-device={quoted}">'
            "Grafana: device detail</a>"
        )
        links.append(f'<a href="{_e(base)}/d/lektrico-fleet-overview">Grafana: fleet</a>')
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_e(name)} · Lektrico exporter</title>",
        "<link rel='stylesheet' href='/static/status.css'></head><body>",
        f"<header><h1>{_e(name)}</h1><nav><a href='/'>all devices</a> · "
        f"{' · '.join(links)}</nav></header><main>",
        f"<section class='block'><dl class='facts'>{facts_html}</dl></section>",
        f"<section class='block'><h2>Methods</h2><p>{methods}</p></section>",
        "<section class='block'><h2>Current limits</h2>",
        f"<p>{why}</p>" if why else "",
        _table(["limit", "current"], limits) if limits else "<p class='muted'>none reported</p>",
        f"<p>Charging schedule: {_e(schedule)}</p>" if schedule else "",
        "</section><section class='block'><h2>Errors</h2>",
        f"<p>Active: {_e(', '.join(active) or 'none')}</p>",
        f"<p>Logged: {_e(', '.join(logged) or 'none')}</p></section>",
        "<section class='block'><h2>Live values</h2>",
        _table(["metric", "labels", "value"], values) if values else "<p class='muted'>none</p>",
        "</section>",
        "<section class='block'><h2>Recent sessions</h2>" + _sessions_table(sessions) + "</section>"
        if sessions
        else "",
        "<section class='block'><h2>Last poll failures</h2>",
        _table(["time", "stage", "message"], failures) if failures else "<p>none</p>",
        f"</section><p class='muted'>lektrico-exporter {_e(__version__)}</p></main></body></html>",
    ]
    return "".join(parts)
