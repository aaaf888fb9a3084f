"""The Grafana dashboards' generator, run from the repository root: `python -m dashboards.generate`.

`builder` holds the panel builders and the shared constants, `influx_dashboards` the InfluxQL
dashboards, `generate` the Prometheus ones and the command that writes (or checks) the JSON.
"""
