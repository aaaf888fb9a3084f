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
import operator
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import compress
from typing import NamedTuple

from exporter.catalogue import table as cat
from exporter.catalogue.table import Group
from exporter.reading import Labels, Layout, Reading, Sample, layout_of

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEADERS: dict[str, bytes] = {
    m.name: f"# HELP {m.name} {m.help}\n# TYPE {m.name} {m.prom_type}\n".encode()
    for m in cat.CATALOGUE
}
FAMILY_ORDER = tuple(m.name for m in cat.CATALOGUE)
PROBE_GROUPS = frozenset({Group.HEALTH, Group.LIVE})
_GROUP = {m.name: m.group for m in cat.CATALOGUE}
_metric = operator.itemgetter(0)


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    value = float(value)  # an int passes type checks as a float but has no is_integer() on 3.11
    if value.is_integer():  # most values; never NaN or infinite
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def label_text(labels: Labels) -> str:
    return ",".join(f'{k}="{escape(v)}"' for k, v in labels)


# The text of a sample's own labels. A fleet's samples carry few distinct label tuples (a
# phase, a state, an error flag), most of them the very same tuple objects, so each is escaped
# and joined once. Bounded: past LABEL_TEXTS_MAX distinct ones, each is made afresh.
_LABEL_TEXTS: dict[Labels, str] = {}
LABEL_TEXTS_MAX = 65536


def _extra_text(labels: Labels) -> str:
    text = _LABEL_TEXTS.get(labels)
    if text is None:
        text = "," + label_text(labels)
        if len(_LABEL_TEXTS) < LABEL_TEXTS_MAX:
            _LABEL_TEXTS[labels] = text
    return text


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
    extra = _extra_text(sample.labels) if sample.labels else ""
    return f"{sample.metric}{{{base}{extra}}} {format_value(sample.value)}\n"


def join_families(chunks: Iterable[tuple[str, Iterable[bytes]]]) -> bytes:
    parts: list[bytes] = []
    for name, family in chunks:
        start = len(parts)
        parts.extend(family)
        if len(parts) > start:
            parts.insert(start, HEADERS[name])
    return b"".join(parts)


def _join_each(families: list[tuple[bytes, list[bytes]]]) -> list[bytes]:
    """Each family's header and chunks as one bytes object."""
    return [b"".join((header, *chunks)) for header, chunks in families]


def render_probe(reading: Reading) -> bytes:
    """/probe: one device, health and live values, none of the exporter's own."""
    block = render_device(reading, PROBE_GROUPS)
    return join_families((name, [block[name]]) for name in FAMILY_ORDER if name in block)


class Published(NamedTuple):
    """What a device's chunks were made from."""

    reading: Reading
    present: tuple[str, ...]  # the families it has chunks in
    layout: Layout | None  # None when rendered as a whole
    base: str  # the text of its device and user labels


class Exposition:
    """The fleet's exposition for /metrics, updated by every poll (an output sink).

    Every device has a slot; each family keeps one chunk per slot (b"" where the device has
    none), so a scrape joins each family's list as it stands. For gzip, each family's slots are
    cut in blocks of `BLOCK` devices, and each block is compressed on its own and kept until a
    poll changes one of its chunks: a scrape compresses only the blocks that changed since the
    last one (the live families; configuration, identity and error flags stay put), and joins
    the rest as they are, so gzip costs a fraction of compressing the whole body.
    """

    BLOCK = 512
    THREAD_FROM = 512  # devices from which a plain scrape is joined off the event loop

    def __init__(self) -> None:
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._chunks: dict[str, list[bytes]] = {name: [] for name in FAMILY_ORDER}
        self._filled: dict[str, int] = dict.fromkeys(FAMILY_ORDER, 0)  # non-empty chunks
        # Per family and block: bumped at every change of one of the block's chunks.
        self._versions: dict[str, list[int]] = {name: [] for name in FAMILY_ORDER}
        self._blocks: dict[tuple[str, int], Block] = {}  # compressed, with the version it is of
        self._last: dict[str, Published] = {}  # what each device's chunks were made from
        self._plain: bytes | None = None

    def _slot(self, device: str) -> int:
        slot = self._slots.get(device)
        if slot is None:
            if self._free:
                slot = self._free.pop()
            else:
                slot = len(self._chunks[FAMILY_ORDER[0]])
                for chunks in self._chunks.values():
                    chunks.append(b"")
                if slot % self.BLOCK == 0:
                    for versions in self._versions.values():
                        versions.append(0)
            self._slots[device] = slot
        return slot

    def _set(self, name: str, slot: int, chunk: bytes) -> None:
        chunks = self._chunks[name]
        old = chunks[slot]
        if old == chunk:
            return
        self._filled[name] += (chunk != b"") - (old != b"")
        chunks[slot] = chunk
        self._versions[name][slot // self.BLOCK] += 1

    def publish(self, reading: Reading) -> None:
        """Render the families whose samples differ from the device's last reading; a family
        whose samples are the same keeps its chunk (most do, from one poll to the next)."""
        device = reading.device
        slot = self._slot(device)
        samples = reading.samples
        layout = layout_of(samples)
        if layout.split:
            self._publish_whole(reading, slot)
            return
        last = self._last.get(device)
        if (
            last is not None
            and last.layout is not None
            and last.layout.same(layout)
            and last.reading.user_labels == reading.user_labels
        ):
            base = last.base
            # The families of the samples that differ, found without a loop in Python.
            changed: Iterable[int] = set(
                compress(layout.family_of, map(operator.ne, last.reading.samples, samples))
            )
        else:
            base = label_text((("device", device), *reading.user_labels))
            changed = range(len(layout.names))
        for index in changed:
            name, start, end = layout.run(index)
            self._set(name, slot, "".join([_line(base, s) for s in samples[start:end]]).encode())
        if last is None or last.present != layout.names:
            self._clear_absent(last, slot, layout.names)
        self._last[device] = Published(reading, layout.names, layout, base)
        self._plain = None

    def _publish_whole(self, reading: Reading, slot: int) -> None:
        block = render_device(reading)
        self._clear_absent(self._last.get(reading.device), slot, block)
        for name, chunk in block.items():
            self._set(name, slot, chunk)
        self._last[reading.device] = Published(reading, tuple(block), None, "")
        self._plain = None

    def _clear_absent(self, last: Published | None, slot: int, present: Iterable[str]) -> None:
        if last is None:
            return
        keep = set(present)
        for name in last.present:
            if name not in keep:
                self._set(name, slot, b"")

    async def start(self) -> None:
        """Nothing to open: the exposition is rendered in memory."""

    async def close(self) -> None:
        """Nothing to write out: scrapers read it while it runs."""

    def remove(self, device: str) -> None:
        slot = self._slots.pop(device, None)
        if slot is None:
            return
        last = self._last.pop(device, None)
        for name in last.present if last is not None else ():
            self._set(name, slot, b"")
        self._free.append(slot)
        self._plain = None

    def devices(self) -> int:
        return len(self._last)

    def render(self) -> bytes:
        if self._plain is None:
            self._plain = join_families(
                (name, self._chunks[name]) for name in FAMILY_ORDER if self._filled[name]
            )
        return self._plain

    async def render_async(self) -> tuple[bytes, ...]:
        """render() as the parts of one body: for a large fleet, family by family, joined in a
        worker thread from the chunks as they were when the scrape began.

        Joined on the loop, 10,000 devices' 74 MB held every poll back for 100-800 ms a scrape.
        In the thread each family is one join of at most a few MB, and between them the loop
        takes the GIL back, so polls go on while a scrape is made; nothing is kept afterwards."""
        if self._plain is not None or len(self._slots) < self.THREAD_FROM:
            return (self.render(),)
        families = [
            (HEADERS[name], self._chunks[name].copy())
            for name in FAMILY_ORDER
            if self._filled[name]
        ]
        return tuple(await asyncio.to_thread(_join_each, families))

    def render_gzip(self, tail: bytes = b"") -> bytes:
        """The exposition followed by `tail` (the exporter's own metrics), as one gzip member."""
        plan = self._gzip_plan()
        return self._gzip_of(plan, [Block.of(b"".join(block)) for block in plan.stale], tail)

    async def render_gzip_async(self, tail: bytes = b"") -> bytes:
        """render_gzip, compressing the changed blocks in a worker thread (zlib lets go of the
        GIL), so polls and other scrapes go on meanwhile. The body is the exposition as it
        was when the scrape began: polls that land meanwhile go to the next scrape."""
        plan = self._gzip_plan()
        fresh = await asyncio.to_thread(lambda: [Block.of(b"".join(b)) for b in plan.stale])
        return self._gzip_of(plan, fresh, tail)

    def _gzip_plan(self) -> GzipPlan:
        """What the body is made of now: kept blocks, and the text of blocks to compress."""
        plan = GzipPlan()
        for name in FAMILY_ORDER:
            if not self._filled[name]:
                continue
            plan.parts.append(HEADER_BLOCKS[name])
            chunks = self._chunks[name]
            for index, version in enumerate(self._versions[name]):
                block = self._blocks.get((name, index))
                if block is not None and block.version == version:
                    if block.size:
                        plan.parts.append(block)
                    continue
                plan.parts.append((name, index, version))
                plan.stale.append(chunks[index * self.BLOCK : (index + 1) * self.BLOCK])
        return plan

    def _gzip_of(self, plan: GzipPlan, fresh: list[Block], tail: bytes) -> bytes:
        made = iter(fresh)
        data: list[bytes] = [GZIP_HEADER]
        crc = size = 0
        for part in plan.parts:
            if isinstance(part, tuple):
                name, index, version = part
                block = next(made).at(version)
                current = self._blocks.get((name, index))
                if current is None or current.version <= version:
                    self._blocks[(name, index)] = block
                if not block.size:
                    continue
            else:
                block = part
            data.append(block.data)
            crc = crc32_combine(crc, block.crc, block.shift)
            size += block.size
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
        data.append(compressor.compress(tail) + compressor.flush())
        data.append(struct.pack("<II", zlib.crc32(tail, crc), (size + len(tail)) % 2**32))
        return b"".join(data)


GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
GZIP_LEVEL = 1  # exposition text compresses ~10x even at the fastest level; scrapes stay fast


@dataclass(frozen=True, slots=True)
class Block:
    """Text compressed as raw deflate blocks ending in a sync flush (byte-aligned, not final),
    so that blocks compressed apart can follow each other in one deflate stream; with its
    CRC-32, length, and the operator that shifts a CRC past it (see crc32_combine)."""

    data: bytes
    crc: int
    size: int
    shift: int
    version: int = 0

    @classmethod
    def of(cls, plain: bytes) -> Block:
        if not plain:
            return cls(b"", 0, 0, 0)
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
        data = compressor.compress(plain) + compressor.flush(zlib.Z_SYNC_FLUSH)
        return cls(data, zlib.crc32(plain), len(plain), crc32_shift(len(plain)))

    def at(self, version: int) -> Block:
        return Block(self.data, self.crc, self.size, self.shift, version)


@dataclass
class GzipPlan:
    parts: list[Block | tuple[str, int, int]] = field(default_factory=list)
    stale: list[list[bytes]] = field(default_factory=list)  # each stale block's chunks


# CRC-32 of concatenated data from the parts' CRCs, as zlib's crc32_combine (not in Python's
# zlib module): crc(A + B) = crc(A) * x^(8 len(B)) mod P  xor  crc(B), over GF(2) with the
# reflected polynomial. The multiplier depends on len(B) only, so each Block keeps its own.
_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (bit-reflected)."""
    m = 1 << 31
    p = 0
    while m and a:
        if a & m:
            p ^= b
            a ^= m
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return p


def _x2n_table() -> tuple[int, ...]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multmodp(table[-1], table[-1]))
    return tuple(table)


_X2N = _x2n_table()  # x^(2^k) mod P


def crc32_shift(length: int) -> int:
    """x^(8 length) mod P: what a CRC is multiplied by to move it past `length` bytes."""
    p = 1 << 31  # x^0
    k = 3
    while length:
        if length & 1:
            p = _multmodp(_X2N[k & 31], p)
        length >>= 1
        k += 1
    return p


def crc32_combine(crc_a: int, crc_b: int, shift_b: int) -> int:
    """CRC-32 of A + B from crc32(A), crc32(B) and crc32_shift(len(B))."""
    return _multmodp(shift_b, crc_a) ^ crc_b


HEADER_BLOCKS = {name: Block.of(text) for name, text in HEADERS.items()}
