"""Prometheus and InfluxDB exporter for Lektri.co EV chargers and energy meters."""

__version__ = "0.1.0"
