"""How late polls start against their schedule, seen from the devices' side.

The exporter counts polls that ran past their interval or were skipped
(`lektrico_polls_late_total`) but does not expose how late the others started, so this is read
from the simulator's call log (`simulate --call-log`: one JSON line per request, with its
arrival time). Each poll asks for its device's main method exactly once, so the arrivals of
`Charger_info.Get` / `Meter_info.Get` at one device are that device's poll starts. The poller
keeps a fixed schedule (each due time is the last one plus the interval), so a device's start k
in the window is due at phase + k x interval; the phase cannot be seen from outside and is taken
as the device's earliest start in the window, so a lateness is how much later than the
device's own best start in the window a poll began (connect and tick included, both short).
A start more than half an interval late cannot be told from the next one early, so for an
exporter that has fallen behind the figures are the spread of its starts over one interval.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from exporter.catalogue import table as cat

MAIN_METHODS = frozenset(m.lower() for m in cat.MAIN_METHOD.values())


def log_size(path: Path) -> int:
    """Where the window's lines start in the call log."""
    return path.stat().st_size if path.exists() else 0


def starts_by_device(
    path: Path, offset: int, t0: float, t1: float, devices: set[str] | None = None
) -> dict[str, list[float]]:
    """Arrival times (wall clock) of each device's main method between t0 and t1."""
    starts: dict[str, list[float]] = defaultdict(list)
    with path.open("rb") as log:
        log.seek(offset)
        for line in log:
            if b"_info.Get" not in line and b"_info.get" not in line:
                continue
            try:
                call = json.loads(line)
            except ValueError:  # a line still being written at the window's end
                continue
            t = float(call["time"])
            if t > t1:
                break
            name = str(call["device"])
            if (
                t >= t0
                and str(call["rpc_method"]).lower() in MAIN_METHODS
                and (devices is None or name in devices)
            ):
                starts[name].append(t)
    return starts


def lateness(starts: dict[str, list[float]], interval: float) -> dict[str, float]:
    """p50, p99 and the largest lateness (s) of every poll start after a device's first in
    the window, and how many starts were seen."""
    late: list[float] = []
    for times in starts.values():
        if len(times) < 2:
            continue
        times.sort()
        first = times[0]
        offsets = [t - first - round((t - first) / interval) * interval for t in times]
        phase = min(offsets)
        late.extend(o - phase for o in offsets)
    if not late:
        return {"starts": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    late.sort()
    return {
        "starts": len(late),
        "devices": len(starts),
        "p50": statistics.median(late),
        "p99": late[min(len(late) - 1, int(0.99 * len(late)))],
        "max": late[-1],
    }


def window_lateness(
    path: Path,
    offset: int,
    t0: float,
    t1: float,
    interval: float,
    devices: set[str] | None = None,
) -> dict[str, float]:
    return lateness(starts_by_device(path, offset, t0, t1, devices), interval)
