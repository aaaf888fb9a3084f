"""The exporter's own HTTP side: endpoints (`server`: /metrics, /probe, /sd, reload, health),
the landing page (`landing`), TLS and basic auth from a web config file (`webconfig`), and the
container health check (`healthcheck`).

May import: `exporter.catalogue`, `exporter.config`, `exporter.device` (to read device state
and poll on /probe), `exporter.outputs.prometheus` (to serve its exposition).
"""
