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


# Most of a fleet's samples are small whole numbers alike from device to device: a flag that
# is off, a state series at 0, a method supported, an error counter still at zero, a current
# limit of 16 A. Each of those is one object for the whole fleet, not one per device: over half
# of a device's samples, and objects the garbage collector need not walk. Bounded: past
# SHARED_MAX distinct ones, samples are made one per device as before.
_SHARED: dict[tuple[str, Labels, float], Sample] = {}
SHARED_MAX = 65536
SHARED_VALUES = 255.0  # whole numbers from 0 to this


def shared_sample(metric: str, labels: Labels, value: float) -> Sample:
    """Sample(metric, labels, value); the fleet's one object of it where the value is a whole
    number from 0 to SHARED_VALUES.

    Only for labels from the catalogue or the config (a bounded set), never ones a device
    reported (those would fill the table with one device's series)."""
    if 0.0 <= value <= SHARED_VALUES and value == int(value):
        key = (metric, labels, value)
        sample = _SHARED.get(key)
        if sample is None:
            sample = Sample(metric, labels, float(value) + 0.0)  # never -0.0
            if len(_SHARED) < SHARED_MAX:
                _SHARED[key] = sample
        return sample
    return Sample(metric, labels, value)


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
