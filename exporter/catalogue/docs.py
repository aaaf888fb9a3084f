"""Renders docs/metrics.md from the catalogue (`make docs`)."""

from __future__ import annotations

import sys

from exporter.catalogue import table as cat


def _source(metric: cat.Metric) -> str:
    ex = metric.extract
    if isinstance(ex, cat.Flags):
        return f"`{ex.method}` (every flag key)"
    if isinstance(ex, cat.Derived):
        return "derived by the exporter from successive polls, kept in its state store"
    if isinstance(ex, cat.Length):
        return f"items in `{ex.source.method}` `{ex.source.key}`"
    srcs = cat.inputs_of(ex)
    if not srcs:
        return "computed by the exporter"
    text = ", ".join(dict.fromkeys(f"`{s.method}` `{s.key}`" for s in srcs))
    scale = getattr(ex, "scale", 1.0)
    return text + (f" x {scale:g}" if scale != 1.0 else "")


def render() -> str:
    out = [
        "# Metrics reference",
        "",
        "Generated from `exporter/catalogue/table.py` by `make docs`; do not edit by hand.",
        "Every device series also carries `device` and the device's configured labels.",
        "",
        "| name | type | labels | unit | devices | source | InfluxDB |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in cat.CATALOGUE:
        influx = "-"
        if m.influx:
            field = m.influx.field or "<label>"
            if m.influx.label_as_field:
                field = f"{m.influx.field}<{m.labels[0]}>"
            influx = f"`lektrico_{m.influx.measurement}` `{field}` ({m.influx.type})"
        out.append(
            f"| `{m.name}` | {m.kind.value} | {', '.join(m.labels) or '-'} | {m.unit or '-'} | "
            f"{', '.join(sorted(m.devices))} | {_source(m)} | {influx} |"
        )
    out += ["", "## The exporter's own", "", "| name | type | labels | help |", "|---|---|---|---|"]
    for own in cat.EXPORTER_METRICS:
        name, kind, help_, labels = own.name, own.kind.value, own.help, own.labels
        out.append(f"| `{name}` | {kind} | {', '.join(labels) or '-'} | {help_} |")
    notes = [m for m in cat.CATALOGUE if m.notes]
    if notes:
        out += ["", "## Notes", ""]
        out += [f"- `{m.name}`: {m.notes}" for m in notes]
    out += [
        "",
        "## Methods polled",
        "",
        "A method a device does not have is asked once per identity refresh, not at its cadence.",
        "",
        "| method | cadence | devices | at the slow cadence only while |",
        "|---|---|---|---|",
    ]
    for method in cat.METHODS:
        when = "-"
        if method.slow_if is not None:
            when = f"`{method.slow_if.method}` `{method.slow_if.key}` is on"
        elif method.slow_unless:
            keys = ", ".join(f"`{s.key}`" for s in method.slow_unless)
            when = f"`{method.slow_unless[0].method}` lacks one of {keys}"
        out.append(
            f"| `{method.name}` | {method.cadence.value} | {', '.join(sorted(method.devices))} "
            f"| {when} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
