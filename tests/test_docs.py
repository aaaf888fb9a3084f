"""The generated metrics reference matches the catalogue, and the README keeps its promises."""

from __future__ import annotations

import re
from pathlib import Path

from exporter.catalogue import docs
from exporter.catalogue import table as catalogue

ROOT = Path(__file__).parent.parent


def test_metrics_reference_is_generated_from_the_catalogue() -> None:
    committed = (ROOT / "docs" / "metrics.md").read_text()
    assert committed == docs.render(), "docs/metrics.md is stale: run `make docs`"


def test_every_metric_is_documented() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    for name in catalogue.ALL_METRIC_NAMES:
        assert f"`{name}`" in text


def test_readme_opens_with_two_commands_that_the_makefile_has() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```\w*\n(.*?)```", readme, re.DOTALL)
    assert block is not None
    commands = [
        line
        for line in block.group(1).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert [c.split("#")[0].strip() for c in commands] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
