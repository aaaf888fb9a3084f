"""The spool's files: what was not written comes back after a restart, and only that."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.influx_spool import Spool, SpoolError


def lines(*names: str) -> bytes:
    return b"".join(f"m,device={n} v=1 1\n".encode() for n in names)


def replayed(directory: Path) -> bytes:
    spool = Spool(directory)
    try:
        spool.open()
        return b"".join(c.data for c in spool.load(10**6))
    finally:
        spool.close()


def test_what_was_not_consumed_is_replayed_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    a = spool.append(lines("a"), 1, cache=True)
    spool.append(lines("b"), 1, cache=True)
    spool.append(lines("c"), 1, cache=True)

    spool.consumed([a])
    spool.close()

    assert replayed(tmp_path) == lines("b", "c")


def test_out_of_order_consumption_acknowledges_only_the_done_prefix(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    chunks = [spool.append(lines(n), 1, cache=True) for n in "abcd"]

    spool.consumed([chunks[1], chunks[0], chunks[3]])
    spool.close()

    assert replayed(tmp_path) == lines("c", "d")


def test_a_fully_consumed_segment_is_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=40)
    spool.open()
    chunks = [spool.append(lines(n), 1, cache=True) for n in "abcdef"]
    assert len(list(tmp_path.glob("*.lp"))) > 1

    spool.consumed(chunks)
    spool.close()

    assert not list(tmp_path.glob("*.lp")) and not list(tmp_path.glob("*.ack"))


def test_a_replayed_segment_is_deleted_once_written(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.open()
    first.append(lines("a", "b"), 2, cache=True)
    first.close()

    second = Spool(tmp_path)
    second.open()
    chunks = second.load(10**6)
    second.consumed(chunks)
    second.close()

    assert chunks and not list(tmp_path.glob("*.lp"))


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    spool.append(lines("a"), 1, cache=True)
    spool.close()
    segment = next(tmp_path.glob("*.lp"))
    segment.write_bytes(segment.read_bytes() + b"m,device=torn v=")

    assert replayed(tmp_path) == lines("a")


def test_two_exporters_cannot_share_a_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.open()

    with pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path).open()
    first.close()
