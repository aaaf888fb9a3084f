"""What /proc says about a process and about the machine (Linux only).

The tests and benchmarks run the exporter as its own process so that these figures are its own:
CPU seconds from /proc/PID/stat, RSS and threads from /proc/PID/status, open file descriptors
from /proc/PID/fd; and for the machine, busy CPU time from /proc/stat and the load average.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def proc_status(pid: int, key: str) -> int:
    """One number of /proc/PID/status, e.g. VmRSS (in kB) or Threads."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for {pid}")


def rss_bytes(pid: int) -> int:
    return proc_status(pid, "VmRSS") * 1024


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def group_pids(pgid: int) -> list[int]:
    """Processes of one process group (the simulator and its workers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry))
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def group_cpu(pgid: int) -> float:
    """CPU seconds of every process in a group so far (one that exits meanwhile counts 0)."""
    total = 0.0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def machine_busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])
