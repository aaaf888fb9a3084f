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

import asyncio
import math
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

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
        self._cache: tuple[bytes, Deflated | None] | None = None

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
            self._cache = (body, None)
        return self._cache[0]

    def render_gzip(self, tail: bytes = b"") -> bytes:
        """The exposition followed by `tail`, as one gzip member.

        The fleet's part is compressed once per change and kept; a scrape compresses only the
        small tail (the exporter's own metrics) and appends it to the same deflate stream.
        """
        body = self.render()
        assert self._cache is not None
        head = self._cache[1]
        if head is None:
            head = Deflated.of(body)
            self._cache = (body, head)
        return head.gzip_with(tail)

    async def render_gzip_async(self, tail: bytes = b"") -> bytes:
        """render_gzip, compressing the fleet's part in a worker thread (~0.2 s at 10,000
        devices) so polls and other scrapes go on meanwhile."""
        body = self.render()
        assert self._cache is not None
        head = self._cache[1]
        if head is None:
            head = await asyncio.to_thread(Deflated.of, body)
            if self._cache is not None and self._cache[0] is body:
                self._cache = (body, head)
        return head.gzip_with(tail)


GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
GZIP_LEVEL = 1  # exposition text compresses ~10x even at the fastest level; scrapes stay fast


@dataclass(frozen=True)
class Deflated:
    """Raw deflate blocks ending in a sync flush, so more blocks may follow in the same stream."""

    data: bytes
    crc: int
    size: int

    @classmethod
    def of(cls, body: bytes) -> Deflated:
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
        data = compressor.compress(body) + compressor.flush(zlib.Z_SYNC_FLUSH)
        return cls(data, zlib.crc32(body), len(body))

    def gzip_with(self, tail: bytes) -> bytes:
        # A sync flush ends byte-aligned with no final block, so a second compressor's blocks
        # can continue the stream; the trailer's CRC-32 continues over the tail.
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
        last = compressor.compress(tail) + compressor.flush()
        trailer = struct.pack("<II", zlib.crc32(tail, self.crc), (self.size + len(tail)) % 2**32)
        return b"".join((GZIP_HEADER, self.data, last, trailer))
