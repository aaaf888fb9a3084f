"""The metric catalogue: every metric the exporter can emit, as one declarative table.

`table` holds the rows and their types; every output (Prometheus, InfluxDB, line protocol),
the reference in docs/metrics.md (`docs`), the dashboards and the tests read it, and nothing
else lists metrics. `selfmetrics` holds the exporter's own process-level counters.

May import: the standard library and prometheus_client only. Everything else imports this.
"""
