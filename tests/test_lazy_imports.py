"""What a config does not use is not imported: a home owner's small board pays only for what
runs (the InfluxDB client alone is 16 MB of RSS and a third of a second of start-up). The HTML
pages and the sessions' statement are loaded by the first request for them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

OPTIONAL = (
    "influxdb_client",
    "zeroconf",
    "bcrypt",
    "matplotlib",
    "exporter.simulator",
    "exporter.web.pages",
    "exporter.sessions.statement",
    "difflib",  # "did you mean" hints, for a configuration with mistakes
)
PROBE = """
import json, sys
from exporter.app import Exporter
from exporter.cli import parser
from exporter.config.schema import parse_config
Exporter(parse_config(sys.argv[1]))
print(json.dumps(sorted(sys.modules)))
"""


def imported(config: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, config], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    modules: list[str] = json.loads(out.stdout.splitlines()[-1])
    return {m for m in modules if m in OPTIONAL or m.split(".")[0] in OPTIONAL}


def test_an_exporter_without_influxdb_discovery_or_auth_imports_none_of_them() -> None:
    assert imported("devices: [{name: c1, host: 192.168.1.50}]") == set()


@pytest.mark.parametrize(
    ("config", "module"),
    [
        ("influxdb: {url: 'http://127.0.0.1:1', token: t, org: o, bucket: b}", "influxdb_client"),
    ],
)
def test_a_configured_output_imports_its_library(config: str, module: str) -> None:
    assert module in imported(config)
