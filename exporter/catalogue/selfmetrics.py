"""The exporter's own process-wide metrics, on a prometheus-client registry.

These have no `device` label and are few, so prometheus-client renders them at scrape time.
Their names and help come from catalogue.EXPORTER_METRICS.
"""

from __future__ import annotations

import platform

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from exporter import __version__
from exporter.catalogue import table as cat


class SelfMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        spec = {m.name: (m.kind, m.help, m.labels) for m in cat.EXPORTER_METRICS}

        def gauge(name: str) -> Gauge:
            _, help_, labels = spec[name]
            return Gauge(name, help_, labels, registry=self.registry)

        def counter(name: str) -> Counter:
            _, help_, labels = spec[name]
            # prometheus-client appends _total itself.
            return Counter(name.removesuffix("_total"), help_, labels, registry=self.registry)

        gauge("lektrico_exporter_build_info").labels(
            version=__version__, python_version=platform.python_version()
        ).set(1)
        self.devices_configured = gauge("lektrico_devices_configured")
        self.devices_up = gauge("lektrico_devices_up")
        self.polls = counter("lektrico_polls_total")
        self.polls_late = counter("lektrico_polls_late_total")
        self.requests = counter("lektrico_device_requests_total")
        self.influx_written = counter("lektrico_influxdb_points_written_total")
        self.influx_buffered = gauge("lektrico_influxdb_points_buffered")
        self.influx_dropped = counter("lektrico_influxdb_points_dropped_total")
        self.influx_errors = counter("lektrico_influxdb_write_errors_total")
        self.influx_last_success = gauge("lektrico_influxdb_last_write_success_timestamp_seconds")
        # As Prometheus has them: 1 and the start time until a reload fails.
        self.reload_successful = gauge("lektrico_config_last_reload_successful")
        self.reload_success_time = gauge("lektrico_config_last_reload_success_timestamp_seconds")
        self.reload_successful.set(1)
        self.reload_success_time.set_to_current_time()
        # process_* (CPU, memory, fds) and python_* (GC, version), as every client library has.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.influx_spool_damaged = counter("lektrico_influxdb_spool_damaged_total")

    def render(self) -> bytes:
        return generate_latest(self.registry)
