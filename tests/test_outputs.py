"""Which outputs a config asks for: InfluxDB and line protocol, together or alone."""

from __future__ import annotations

from pathlib import Path

from exporter.catalogue.selfmetrics import SelfMetrics
from exporter.config.schema import parse_config
from exporter.outputs import build_outputs
from exporter.outputs.influx.writer import InfluxWriter
from exporter.outputs.lineproto_file import LineProtocolFile

INFLUX = "influxdb: {url: 'http://127.0.0.1:8086', bucket: b, org: o, token: t, "
LINES = "line_protocol: {path: '-'}\n"


def kinds(text: str) -> list[type]:
    return [type(o) for o in build_outputs(parse_config(text), SelfMetrics())]


def test_no_output_sections_means_prometheus_only() -> None:
    assert kinds("{}") == []


def test_influxdb_and_line_protocol_run_together_or_alone() -> None:
    assert kinds(INFLUX + "measurement_prefix: ev}\n") == [InfluxWriter]
    assert kinds(LINES) == [LineProtocolFile]
    assert kinds(INFLUX + "measurement_prefix: ev}\n" + LINES) == [InfluxWriter, LineProtocolFile]


def test_line_protocol_uses_the_influxdb_measurement_prefix(tmp_path: Path) -> None:
    outputs = build_outputs(
        parse_config(INFLUX + "measurement_prefix: ev}\n" + LINES), SelfMetrics()
    )

    assert isinstance(outputs[1], LineProtocolFile)
    assert outputs[1].serializer.plans["lektrico_up"].measurement == "ev_device"
