"""The spool's files: what was not written comes back after a restart, and only that.

A spool the exporter cannot use stops the start with one line and status 1 (through the
command line, as a user runs it); damage it can repair without losing points is counted.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.config.schema import ConfigError, parse_config
from exporter.outputs.influx.spool import Spool, SpoolError
from harness.processes import free_port
from harness.servers import unavailable
from tests.conftest import fetch

REPO = Path(__file__).resolve().parent.parent
EXPORTER = Path(sys.executable).with_name("lektrico-exporter")


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
    spool = Spool(tmp_path)
    spool.open()
    spool.close()
    assert [reason for reason, _ in spool.damage] == ["torn_line"]


def test_two_exporters_cannot_share_a_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.open()

    with pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path).open()
    first.close()


def test_the_spool_stays_within_max_bytes_dropping_the_oldest_not_in_memory(
    tmp_path: Path,
) -> None:
    drops: list[tuple[str, int]] = []
    spool = Spool(
        tmp_path, max_bytes=4000, segment_bytes=400, on_drop=lambda r, n, m: drops.append((r, n))
    )
    spool.open()
    head = spool.append(lines("head"), 1, cache=True)  # in memory: never dropped
    for i in range(300):
        assert spool.append(lines(f"p{i:03d}"), 1, cache=False) is None

    on_disk = sum(p.stat().st_size for p in tmp_path.glob("*.lp"))
    assert on_disk <= 4000
    dropped = sum(n for _, n in drops)
    assert {r for r, _ in drops} == {"spool_full"}
    assert dropped > 0 and dropped + spool.unloaded + 1 == 301
    waiting = spool.unloaded
    spool.consumed([head])
    spool.close()
    kept = replayed(tmp_path).splitlines(keepends=True)
    # In order, none twice, the newest there: whole older segments went (but not the head's).
    assert len(kept) == waiting and kept == sorted(set(kept))
    assert kept[-1] == lines("p299")


# ---- the spool at start, through the command line ----------------------------------------------


def unprivileged() -> list[str]:
    """A command prefix under which file permissions apply, also to root (who passes them)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        unavailable("setpriv (util-linux) is needed to test permissions as root")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def exporter_config(tmp_path: Path, outputs: str) -> Path:
    """A config with no devices and these outputs; InfluxDB is not listening."""
    path = tmp_path / "config.yaml"
    path.write_text(f"listen: 127.0.0.1:{free_port()}\ndevices: []\n{outputs}")
    return path


def spool_config(tmp_path: Path, spool_dir: Path) -> Path:
    influx = (
        f"influxdb: {{url: 'http://127.0.0.1:{free_port()}', bucket: b, org: o, token: t,"
        f" spool_dir: '{spool_dir}', flush_interval: 0.2s, max_retry_delay: 0.5s}}\n"
    )
    return exporter_config(tmp_path, influx)


def run_exporter(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`lektrico-exporter --config ...` to its end (bounded: one that starts is a failure)."""
    command = [*unprivileged(), str(EXPORTER), "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=20, cwd=REPO)


def assert_one_line(result: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    assert result.returncode == status, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("lektrico-exporter: "), result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def spool_with(directory: Path, names: str, done: int) -> Path:
    """A spool left by an earlier run: one segment, its first `done` points written."""
    directory.mkdir()
    segment = directory / "000000000001.lp"
    segment.write_bytes(lines(*names))
    segment.with_suffix(".ack").write_bytes(b"%020d\n" % len(lines(*names[:done])))
    assert replayed(directory) == lines(*names[done:])  # what the exporter would write
    return segment


def test_an_unreadable_segment_stops_the_start_with_one_line(tmp_path: Path) -> None:
    segment = spool_with(tmp_path / "spool", "abc", done=1)
    segment.chmod(0)

    assert_one_line(
        run_exporter(spool_config(tmp_path, tmp_path / "spool")), 1, str(segment), "Permission"
    )


def test_a_directory_named_like_a_segment_stops_the_start_with_one_line(tmp_path: Path) -> None:
    spool_with(tmp_path / "spool", "abc", done=1)
    impostor = tmp_path / "spool" / "000000000007.lp"
    impostor.mkdir()

    result = run_exporter(spool_config(tmp_path, tmp_path / "spool"))

    assert_one_line(result, 1, str(impostor), "is a directory")


def test_an_unwritable_spool_dir_stops_the_start_with_one_line(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o555)

    assert_one_line(run_exporter(spool_config(tmp_path, spool_dir)), 1, str(spool_dir))


def test_check_config_finds_an_unwritable_spool_dir(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o555)

    result = run_exporter(spool_config(tmp_path, spool_dir), "--check-config")

    assert_one_line(result, 2, "influxdb.spool_dir", str(spool_dir), "not writable")


def start_exporter(config: Path) -> subprocess.Popen[str]:
    command = [str(EXPORTER), "--config", str(config)]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO)


def stop_exporter(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    return proc.returncode, err


async def spool_metrics(port: int, wanted: str) -> str:
    deadline = time.monotonic() + 15
    text = ""
    while time.monotonic() < deadline:
        try:
            _, text = await fetch(f"http://127.0.0.1:{port}/metrics")
        except OSError:
            text = ""
        if wanted in text:
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"{wanted!r} not on /metrics within 15 s:\n{text[-2000:]}")


@pytest.mark.parametrize("ack", [b"-5\n", b"999999\n", b"2\n", b"garbage"])
async def test_a_damaged_ack_replays_the_whole_segment_and_is_counted(
    tmp_path: Path, ack: bytes
) -> None:
    """Negative, past the segment's end, inside a line, not a number: InfluxDB absorbs a repeat,
    so the whole segment goes again, and nothing is discarded."""
    segment = spool_with(tmp_path / "spool", "abc", done=1)
    segment.with_suffix(".ack").write_bytes(ack)
    config = spool_config(tmp_path, tmp_path / "spool")
    port = int(re.search(r"127.0.0.1:(\d+)", config.read_text())[1])  # type: ignore[index]

    proc = start_exporter(config)
    try:
        text = await spool_metrics(
            port, 'lektrico_influxdb_spool_damaged_total{reason="ack_invalid"} 1.0'
        )
    finally:
        code, err = stop_exporter(proc)

    assert "lektrico_influxdb_points_buffered 3.0" in text  # a, b and c
    assert code == 0 and "Traceback" not in err, err
    damaged = [line for line in err.splitlines() if "spool damaged" in line]
    assert len(damaged) == 1 and str(segment.with_suffix(".ack")) in damaged[0], err


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2MiB", 2 << 20), ("1GiB", 1 << 30), ("500MB", 500_000_000), (1 << 21, 1 << 21)],
)
def test_spool_max_bytes_takes_sizes(value: object, expected: int) -> None:
    config = parse_config(
        f"influxdb: {{url: 'http://127.0.0.1:1', bucket: b, spool_max_bytes: {value}}}"
    ).influxdb
    assert config is not None and config.spool_max_bytes == expected


@pytest.mark.parametrize("value", ["lots", "-1GiB", "1000", "1KiB"])
def test_spool_max_bytes_refuses_what_is_not_a_size_of_at_least_a_mebibyte(value: str) -> None:
    with pytest.raises(ConfigError, match="spool_max_bytes") as error:
        parse_config(
            f"influxdb: {{url: 'http://127.0.0.1:1', bucket: b, spool_max_bytes: {value}}}"
        )
    assert "\n" not in str(error.value)
