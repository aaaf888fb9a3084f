"""Prometheus text exposition, rendered once per poll and joined per scrape.

Each poll renders its device's samples into one bytes chunk per metric family. A scrape of
`/metrics` concatenates, family by family, the chunks every device left there: it never walks
samples or Python objects per sample. The text format requires a family's samples to be
contiguous, which is why chunks are kept per family and not per device.

Example of what a device contributes (device "garage", user label site="home"):

    lektrico_up{device="garage",site="home"} 1
    lektrico_power_watts{device="garage",site="home"} 1179.57
    lektrico_current_amperes{device="garage",site="home",phase="L1"} 5.468
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable

from . import catalogue as cat
from .catalogue import Group
from .reading import Labels, Reading, Sample

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEADERS: dict[str, bytes] = {
    m.name: f"# HELP {m.name} {m.help}\n# TYPE {m.name} {m.prom_type}\n".encode()
    for m in cat.CATALOGUE
}
FAMILY_ORDER = tuple(m.name for m in cat.CATALOGUE)
PROBE_GROUPS = frozenset({Group.HEALTH, Group.LIVE})
_GROUP = {m.name: m.group for m in cat.CATALOGUE}


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    value = float(value)  # an int passes type checks as a float but has no is_integer() on 3.11
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def label_text(labels: Labels) -> str:
    return ",".join(f'{k}="{escape(v)}"' for k, v in labels)


def render_device(reading: Reading, groups: frozenset[Group] | None = None) -> dict[str, bytes]:
    """One device's samples as exposition lines, one bytes chunk per family."""
    base = label_text((("device", reading.device), *reading.user_labels))
    lines: dict[str, list[str]] = {}
    for sample in reading.samples:
        if groups is not None and _GROUP[sample.metric] not in groups:
            continue
        lines.setdefault(sample.metric, []).append(_line(base, sample))
    return {name: "".join(text).encode() for name, text in lines.items()}


def _line(base: str, sample: Sample) -> str:
    extra = "," + label_text(sample.labels) if sample.labels else ""
    return f"{sample.metric}{{{base}{extra}}} {format_value(sample.value)}\n"


def join_families(chunks: Iterable[tuple[str, Iterable[bytes]]]) -> bytes:
    parts: list[bytes] = []
    for name, family in chunks:
        start = len(parts)
        parts.extend(family)
        if len(parts) > start:
            parts.insert(start, HEADERS[name])
    return b"".join(parts)


def render_probe(reading: Reading) -> bytes:
    """/probe: one device, health and live values, none of the exporter's own."""
    block = render_device(reading, PROBE_GROUPS)
    return join_families((name, [block[name]]) for name in FAMILY_ORDER if name in block)


class Exposition:
    """The fleet's exposition for /metrics, updated by every poll (an output sink)."""

    def __init__(self) -> None:
        self._families: dict[str, dict[str, bytes]] = {name: {} for name in FAMILY_ORDER}
        self._present: dict[str, tuple[str, ...]] = {}
        self._cache: tuple[bytes, bytes] | None = None

    def publish(self, reading: Reading) -> None:
        block = render_device(reading)
        for name in self._present.get(reading.device, ()):
            if name not in block:
                del self._families[name][reading.device]
        for name, chunk in block.items():
            self._families[name][reading.device] = chunk
        self._present[reading.device] = tuple(block)
        self._cache = None

    def remove(self, device: str) -> None:
        for name in self._present.pop(device, ()):
            self._families[name].pop(device, None)
        self._cache = None

    def devices(self) -> int:
        return len(self._present)

    def render(self) -> bytes:
        if self._cache is None:
            body = join_families((name, self._families[name].values()) for name in FAMILY_ORDER)
            self._cache = (body, b"")
        return self._cache[0]

    def render_gzip(self) -> bytes:
        body = self.render()
        assert self._cache is not None
        if not self._cache[1]:
            self._cache = (body, gzip_bytes(body))
        return self._cache[1]


def gzip_bytes(body: bytes, level: int = 1) -> bytes:
    # Level 1: exposition text compresses ~10x even at the fastest level, and scrapes stay fast.
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()
