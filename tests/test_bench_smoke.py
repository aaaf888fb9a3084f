"""The benchmark (`python -m bench.run`) runs end to end on a tiny fleet and prints every figure.

The real figures come from `make bench` (docs/performance.md); this only proves the script
works: simulator, exporter, floor and references all start, measure and stop.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

from harness.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
FIGURES = (
    "polls per second",
    "polls on time",
    "exporter CPU per 1,000 polls",
    "HTTP requests per device per poll",
    "RSS per device",
    "/metrics render, plain",
    "/metrics render, gzip",
    "/probe requests per second",
    "InfluxDB serialisation points/s",
    "ref: generate_latest, same samples",
    "exporter render, same samples, in-process",
    "ref: bare aiohttp floor",
    "ref: floor paced at N/interval",
    "exporter capacity, polling flat out",
    "exporter / floor (polls per CPU s)",
)
TARGETS = 6  # five of the sizes, and the big end with the ledger; other phases add theirs


def run_benchmark(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the benchmark; on timeout SIGTERM lets it stop the processes it started."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.run", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(f"benchmark took over {timeout:.0f}s\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_benchmark_prints_every_figure_for_a_tiny_fleet(tmp_path: Path) -> None:
    # Arrange: a tiny fleet on its own loopback addresses, results kept out of the repo.
    address_base = f"127.201.{random.randrange(0, 200)}.1"
    out_dir, plot = tmp_path / "out", tmp_path / "performance.png"
    args = [
        "--sizes", "40", "--interval", "3", "--duration", "3", "--sim-processes", "2",
        "--scrapes", "3", "--probe-requests", "200", "--probe-seconds", "2",
        "--reference-reps", "2", "--reference-budget", "1", "--settle-timeout", "10",
        "--capacity-warmup", "2", "--capacity-seconds", "2",
        "--address-base", address_base, "--device-port", str(free_port()),
        "--out", str(out_dir), "--plot", str(plot),
        "--cadence-devices", "0", "--no-first-poll", "--state-off", "", "--no-ends",
    ]  # fmt: skip

    # Act
    result = run_benchmark(args, timeout=90)

    # Assert
    assert result.returncode == 0, result.stdout + result.stderr
    for figure in FIGURES:
        assert figure in result.stdout, f"{figure!r} missing from\n{result.stdout}"
    verdicts = [line for line in result.stdout.splitlines() if line.strip()[:4] in {"PASS", "MISS"}]
    assert len(verdicts) == TARGETS, result.stdout
    report = json.loads((out_dir / "results.json").read_text())
    (size,) = report["sizes"]
    assert size["n"] == 40
    assert size["polls"] > 0 and size["cpu_per_1000_polls"] > 0
    assert size["metrics_plain_bytes"] > size["metrics_gzip_bytes"] > 0
    assert size["reference_samples"] > 0 and size["floor"]["ok"] > 0
    assert size["floor_paced"]["ok"] > 0 and size["floor_paced"]["rate"] == 40 / 3
    assert size["capacity"]["polls_per_second"] > 0 and size["capacity_ratio"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_counts_first_polls_and_polls_a_sharded_fleet(tmp_path: Path) -> None:
    # Arrange: no sizes; the first-poll phase and a tiny fleet over two replicas.
    address_base = f"127.202.{random.randrange(0, 200)}.1"
    out_dir = tmp_path / "out"
    args = [
        "--sizes", "", "--shards", "30", "--shard-count", "2", "--interval", "3",
        "--duration", "3", "--sim-processes", "2", "--settle-timeout", "10",
        "--cadence-devices", "0", "--first-poll", "--no-ends",
        "--address-base", address_base, "--device-port", str(free_port()),
        "--out", str(out_dir), "--plot", str(tmp_path / "performance.png"),
    ]  # fmt: skip

    # Act
    result = run_benchmark(args, timeout=60)

    # Assert
    assert result.returncode == 0, result.stdout + result.stderr
    for heading in ("First poll: requests per device", "Sharded: 30 devices over 2 replicas"):
        assert heading in result.stdout, f"{heading!r} missing from\n{result.stdout}"
    phases = json.loads((out_dir / "results.json").read_text())["phases"]
    assert all(row["requests"] > 0 for row in phases["first_poll"])
    replicas = phases["shards"]["replicas"]
    assert sum(r["devices"] for r in replicas) == 30 and all(r["polls"] > 0 for r in replicas)
    assert "first poll ≤ 8 requests" in result.stdout
