"""The landing page at `/`: every device with its state, escaped (device strings are untrusted)."""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from urllib.parse import quote

from exporter import __version__
from exporter.device.poller import DeviceState

STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}"
    ".up{color:#187a18}.down{color:#b00020}"
)


def _ago(ts: float | None, now: float) -> str:
    return "never" if ts is None else f"{now - ts:.0f}s ago"


def _alias(st: DeviceState) -> str:
    for sample in st.reading.samples if st.reading else ():
        if sample.metric == "lektrico_device_info":
            return dict(sample.labels).get("alias", "")
    return ""


def render(devices: Iterable[DeviceState], now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = []
    for st in devices:
        r = st.reading
        state = "pending" if r is None else ("up" if r.up else "down")
        css = "" if r is None else ("up" if r.up else "down")
        rows.append(
            "<tr>"
            f"<td>{html.escape(st.name)}</td>"
            f"<td>{html.escape(_alias(st))}</td>"
            f"<td>{html.escape(st.model.name if st.model else 'unknown')}</td>"
            f'<td class="{css}">{state}</td>'
            f"<td>{_ago(r.time if r else None, now)}</td>"
            f"<td>{html.escape(r.error or '') if r else ''}</td>"
            f'<td><a href="/probe?target={quote(st.name, safe="")}">probe</a></td>'
            "</tr>"
        )
    body = "\n".join(rows) or '<tr><td colspan="7">no devices configured</td></tr>'
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Lektrico exporter</title>'
        f"<style>{STYLE}</style></head><body><h1>Lektrico exporter {html.escape(__version__)}</h1>"
        '<p><a href="/metrics">metrics</a></p><table><tr><th>device</th><th>alias</th>'
        "<th>model</th><th>state</th><th>last poll</th><th>last error</th><th></th></tr>"
        f"{body}</table></body></html>"
    )
