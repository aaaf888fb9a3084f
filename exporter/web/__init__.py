"""The exporter's own HTTP side: the endpoints (`server`: /metrics, /probe, /sd, /api/devices,
/api/sessions, reload, health), the status board every reading updates (`status`, an output),
the pages for people (`pages`: the device page and the sessions statement; `static/`: the status
page), TLS and basic auth from a web config file (`webconfig`), and the container health check
(`healthcheck`).

May import: `exporter.catalogue`, `exporter.config`, `exporter.reading`, `exporter.device` (to
read device state and poll on /probe), `exporter.outputs.prometheus` (to serve its exposition)
and `exporter.sessions` (to serve the records). Nothing imports web but the app's wiring.
"""
