"""Getting the records out: session rows (JSON, CSV) and the monthly statement (table, CSV,
JSON, HTML page).

Field names are stable (docs/sessions.md): a session is

    device, session_id, open, start, end (ISO 8601, UTC), start_unix, end_unix, energy_wh,
    charging_seconds, connected_seconds, peak_power_watts, phases, total_start_wh,
    total_end_wh, tariff, currency, cost, anomalies, limits, labels, parts

In CSV, `anomalies` is `kind=count;...`, `limits` is `reason=seconds/Wh;...`, `parts` is
`month/period=Wh/cost;...` and each label is a column `label_<name>`.

A statement is one month: the energy charged in that month (in the tariff's time zone, UTC
without a tariff), grouped by device or by a label; a session across months is in both with its
part of the energy and cost.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .ledger import Session

FIELDS = (
    "device",
    "session_id",
    "open",
    "start",
    "end",
    "start_unix",
    "end_unix",
    "energy_wh",
    "charging_seconds",
    "connected_seconds",
    "peak_power_watts",
    "phases",
    "total_start_wh",
    "total_end_wh",
    "tariff",
    "currency",
    "cost",
    "anomalies",
    "limits",
    "parts",
)


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """ISO 8601 (a date, or a date and time; UTC unless it says otherwise) → unix time."""
    when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def row(s: Session) -> dict[str, Any]:
    """A session as the API serves it in JSON."""
    return {
        "device": s.device,
        "session_id": s.session_id,
        "open": s.open,
        "start": iso(s.start),
        "end": iso(s.end),
        "start_unix": s.start,
        "end_unix": s.end,
        "energy_wh": round(s.energy_wh, 3),
        "charging_seconds": round(s.charging_seconds, 3),
        "connected_seconds": round(s.connected_seconds, 3),
        "peak_power_watts": s.peak_power_watts,
        "phases": s.phases,
        "total_start_wh": s.total_start_wh,
        "total_end_wh": s.total_end_wh,
        "tariff": s.tariff,
        "currency": s.currency,
        "cost": round(s.cost, 6),
        "anomalies": dict(s.anomalies),
        "limits": {r: {"seconds": v[0], "energy_wh": round(v[1], 3)} for r, v in s.limits.items()},
        "labels": dict(s.labels),
        "parts": [
            {"month": m, "period": p, "energy_wh": round(wh, 3), "cost": round(c, 6)}
            for m, p, wh, c in s.parts
        ],
    }


def matches(s: Session, labels: Mapping[str, str]) -> bool:
    return all(s.labels.get(k) == v for k, v in labels.items())


def to_csv(sessions: Sequence[Session]) -> str:
    label_names = sorted({k for s in sessions for k in s.labels})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*FIELDS, *(f"label_{k}" for k in label_names)])
    for s in sessions:
        r = row(s)
        r["anomalies"] = ";".join(f"{k}={n}" for k, n in sorted(s.anomalies.items()))
        r["limits"] = ";".join(f"{k}={v[0]:g}/{v[1]:.3f}" for k, v in sorted(s.limits.items()))
        r["parts"] = ";".join(f"{m}/{p}={wh:.3f}/{c:.6f}" for m, p, wh, c in s.parts)
        r["open"] = "true" if s.open else "false"
        values = ["" if r[f] is None else r[f] for f in FIELDS]
        writer.writerow([*values, *(s.labels.get(k, "") for k in label_names)])
    return out.getvalue()


# ---- the monthly statement -----------------------------------------------------------------


def month_bounds(month: str) -> tuple[float, float]:
    """A generous unix window around YYYY-MM (a day either side, for any time zone)."""
    try:
        first = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"month {month!r} is not like 2026-11") from None
    nxt = (first + timedelta(days=32)).replace(day=1)
    return (first - timedelta(days=1)).timestamp(), (nxt + timedelta(days=1)).timestamp()


@dataclass
class Line:
    session: Session
    energy_wh: float
    cost: float


@dataclass
class Group:
    key: str
    lines: list[Line] = field(default_factory=list)
    by_tariff: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)

    @property
    def energy_wh(self) -> float:
        return sum(line.energy_wh for line in self.lines)


@dataclass
class Statement:
    month: str
    group_by: str
    groups: list[Group]

    def as_dict(self) -> dict[str, Any]:
        return {
            "month": self.month,
            "group_by": self.group_by,
            "groups": [
                {
                    "group": g.key,
                    "sessions": len(g.lines),
                    "energy_kwh": round(g.energy_wh / 1000.0, 6),
                    "by_tariff": [
                        {
                            "tariff": t,
                            "period": p,
                            "currency": cur,
                            "energy_kwh": round(v[0] / 1000.0, 6),
                            "cost": round(v[1], 6),
                        }
                        for (t, p, cur), v in sorted(g.by_tariff.items())
                    ],
                    "sessions_list": [
                        {
                            **row(line.session),
                            "month_energy_wh": round(line.energy_wh, 3),
                            "month_cost": round(line.cost, 6),
                        }
                        for line in g.lines
                    ],
                }
                for g in self.groups
            ],
        }


def statement(sessions: Iterable[Session], month: str, group_by: str = "device") -> Statement:
    groups: dict[str, Group] = {}
    for s in sessions:
        parts = [p for p in s.parts if p[0] == month]
        if not parts:
            continue
        key = s.device if group_by == "device" else s.labels.get(group_by, "")
        g = groups.setdefault(key, Group(key))
        wh = sum(p[2] for p in parts)
        cost = sum(p[3] for p in parts)
        g.lines.append(Line(s, wh, cost))
        for _, period, pwh, pcost in parts:
            entry = g.by_tariff.setdefault((s.tariff, period, s.currency), [0.0, 0.0])
            entry[0] += pwh
            entry[1] += pcost
    ordered = [groups[k] for k in sorted(groups)]
    for g in ordered:
        g.lines.sort(key=lambda line: (line.session.start, line.session.device))
    return Statement(month, group_by, ordered)


def _tariff_text(t: str, p: str) -> str:
    return f"{t}/{p}" if t else "(no tariff)"


def render_table(st: Statement) -> str:
    out = [f"Charging statement {st.month}, by {st.group_by}", ""]
    if not st.groups:
        out.append("no energy charged in this month")
    for g in st.groups:
        out.append(
            f"{st.group_by} {g.key or '(none)'}: {len(g.lines)} sessions, "
            f"{g.energy_wh / 1000.0:.3f} kWh"
        )
        for (t, p, cur), (wh, cost) in sorted(g.by_tariff.items()):
            out.append(f"  {_tariff_text(t, p):<24} {wh / 1000.0:>10.3f} kWh {cost:>10.2f} {cur}")
        out.append(f"  {'start (UTC)':<21} {'end (UTC)':<21} {'device':<16} {'kWh':>9} {'cost':>9}")
        for line in g.lines:
            s = line.session
            end = "open" if s.open else (iso(s.end) or "")
            out.append(
                f"  {iso(s.start) or '':<21} {end:<21} {s.device:<16} "
                f"{line.energy_wh / 1000.0:>9.3f} {line.cost:>9.2f}"
            )
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_csv(st: Statement) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "month",
            st.group_by,
            "device",
            "session_id",
            "open",
            "start",
            "end",
            "energy_wh",
            "cost",
            "currency",
            "tariff",
        ]
    )
    for g in st.groups:
        for line in g.lines:
            s = line.session
            writer.writerow(
                [
                    st.month,
                    g.key,
                    s.device,
                    "" if s.session_id is None else s.session_id,
                    "true" if s.open else "false",
                    iso(s.start),
                    iso(s.end) or "",
                    f"{line.energy_wh:.3f}",
                    f"{line.cost:.6f}",
                    s.currency,
                    s.tariff,
                ]
            )
    return out.getvalue()


def render_json(st: Statement) -> str:
    return json.dumps(st.as_dict(), indent=2) + "\n"


def render_html(st: Statement, groupings: Sequence[str] = ()) -> str:
    """A page for people, printable as the month's statement; self-contained, all escaped."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Charging statement {e(st.month)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "margin-bottom:1.5em}td,th{border:1px solid #999;padding:.2em .6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}@media print{form{display:none}}</style>",
        "</head><body>",
        f"<h1>Charging statement {e(st.month)}</h1>",
        "<form method='get' action='sessions'>",
        f"<label>Month <input name='month' value='{e(st.month)}' pattern='\\d{{4}}-\\d{{2}}'>"
        "</label> <label>Group by <select name='group_by'>",
    ]
    for option in ("device", *groupings):
        chosen = " selected" if option == st.group_by else ""
        parts.append(f"<option{chosen}>{e(option)}</option>")
    parts.append("</select></label> <button>Show</button></form>")
    if not st.groups:
        parts.append("<p>No energy charged in this month.</p>")
    for g in st.groups:
        parts.append(
            f"<h2>{e(st.group_by)}: {e(g.key or '(none)')}</h2><p>{len(g.lines)} sessions, "
            f"{g.energy_wh / 1000.0:.3f} kWh</p>"
        )
        parts.append("<table><tr><th>tariff</th><th>kWh</th><th>cost</th></tr>")
        for (t, p, cur), (wh, cost) in sorted(g.by_tariff.items()):
            parts.append(
                f"<tr><td>{e(_tariff_text(t, p))}</td><td>{wh / 1000.0:.3f}</td>"
                f"<td>{cost:.2f} {e(cur)}</td></tr>"
            )
        parts.append(
            "</table><table><tr><th>start (UTC)</th><th>end (UTC)</th><th>device</th>"
            "<th>kWh</th><th>cost</th><th>anomalies</th></tr>"
        )
        for line in g.lines:
            s = line.session
            end = "open" if s.open else (iso(s.end) or "")
            parts.append(
                f"<tr><td>{e(iso(s.start) or '')}</td><td>{e(end)}</td><td>{e(s.device)}</td>"
                f"<td>{line.energy_wh / 1000.0:.3f}</td><td>{line.cost:.2f} {e(s.currency)}</td>"
                f"<td>{e(', '.join(sorted(s.anomalies)))}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts)


RENDERERS = {"table": render_table, "csv": render_csv, "json": render_json}


def current_month(now: float | None = None) -> str:
    when = datetime.fromtimestamp(now if now is not None else datetime.now(UTC).timestamp(), UTC)
    return f"{when.year:04d}-{when.month:02d}"
