"""The normalised reading: what a poll of one device produced, and the only thing outputs see.

Data flows one way: device client → normalise → Reading → outputs (Prometheus, InfluxDB,
line protocol). Outputs never call devices.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

Labels = tuple[tuple[str, str], ...]


class Sample(NamedTuple):
    metric: str  # a catalogue name
    labels: Labels  # the metric's own labels (not device/user labels)
    value: float


@functools.cache
def label_pair(name: str, value: str) -> Labels:
    """The labels ((name, value),) of a catalogue name and value, one tuple for the fleet."""
    return ((name, value),)


@dataclass(frozen=True, slots=True)
class Reading:
    device: str  # configured name
    user_labels: Labels
    time: float  # unix time the poll started
    up: bool
    duration: float
    model: str
    samples: tuple[Sample, ...]  # health + (when up) live + exporter's per-device counters
    reason: str | None = None  # why the device is down
    error: str | None = None  # one-line message, for the landing page and logs
