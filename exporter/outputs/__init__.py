"""The outputs every reading goes to: the interface, and the optional ones built from the config.

An output takes readings synchronously from the poller (`publish`, which must not block) and
does its I/O in its own task between `start()` and `close()`. The Prometheus exposition is
always there; InfluxDB and line protocol are optional and independent, so an InfluxDB-only user
needs no scraper.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from exporter.reading import Reading

if TYPE_CHECKING:
    from exporter.catalogue.selfmetrics import SelfMetrics
    from exporter.config.schema import Config


class Output(Protocol):
    """Where readings go. Every output (the Prometheus exposition, the status page's board,
    the InfluxDB writer, the line-protocol file) is one of these, and the app wires a list."""

    def publish(self, reading: Reading) -> None:
        """Take a reading; called after every poll, must return at once."""

    def remove(self, device: str) -> None:
        """Forget a device that left the configuration (its series, its row)."""

    async def start(self) -> None:
        """Begin (open files, connect, start background tasks)."""

    async def close(self) -> None:
        """Write out what is buffered and close; called once, at shutdown."""


@runtime_checkable
class LineSink(Protocol):
    """An output that also takes ready-made line-protocol points (finished sessions)."""

    def publish_lines(self, data: bytes) -> None:
        """Queue newline-terminated points; must return at once."""


def build_outputs(config: Config, metrics: SelfMetrics) -> list[Output]:
    # Imported only when configured: the InfluxDB client alone weighs 16 MB of RSS.
    outputs: list[Output] = []
    prefix = "lektrico"
    if config.influxdb is not None:
        from exporter.outputs.influx.writer import InfluxWriter

        prefix = config.influxdb.measurement_prefix
        outputs.append(InfluxWriter(config.influxdb, metrics))
    if config.line_protocol is not None:
        from exporter.outputs.lineproto_file import LineProtocolFile

        outputs.append(LineProtocolFile(config.line_protocol, prefix))
    return outputs


def writable_problem(config: Config) -> str | None:
    """For --check-config: an output path that could not be written, named by its key."""
    if config.influxdb is not None and config.influxdb.spool_dir is not None:
        from exporter.outputs.influx import spool

        problem = spool.writable_problem(Path(config.influxdb.spool_dir))
        if problem:
            return f"influxdb.spool_dir: {problem}"
    if config.line_protocol is not None:
        from exporter.outputs import lineproto_file

        problem = lineproto_file.writable_problem(config.line_protocol.path)
        if problem:
            return f"line_protocol.path: {problem}"
    return None
