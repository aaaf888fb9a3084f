"""Prometheus and InfluxDB exporter for Lektri.co EV chargers and energy meters.

The folders follow the data path, which runs one way:

    config/ ──► device/ ──► reading.Reading ──► sessions/ ──► outputs/ ──► web/
    (what to    (poll a      (one poll of one    (sessions,    (Prometheus,  (serve /metrics,
     poll)       device)      device, normalised) energy, cost) InfluxDB, …)  /probe, pages)

`catalogue/` is the one table of metrics every part reads; `simulator/` is a fleet of
simulated devices for the demo, the tests and the benchmark; `app.py` wires the parts and
`cli.py` is the command line. A new output goes in `outputs/`, a new device method in the
catalogue and `device/normalise.py`, a new endpoint in `web/server.py`.
"""

__version__ = "0.1.0"
