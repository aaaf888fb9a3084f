"""The normalised reading: what a poll of one device produced, and the only thing outputs see.

Data flows one way: device client → normalise → Reading → outputs (Prometheus, InfluxDB,
line protocol). Outputs never call devices.
"""

from __future__ import annotations

import functools
import operator
from array import array
from dataclasses import dataclass
from itertools import groupby
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


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each metric's samples are in a reading with this sequence of metric names.

    Devices of one kind, firmware and history share one, so an output finds the few metrics it
    reads, or the families that changed, without a loop in Python over a reading's hundred
    samples. A fleet has hundreds or thousands (the series of poll errors, dropped values and
    derived counters a device has vary), so each is a few arrays: about 1.5 KB."""

    names: tuple[str, ...]  # each run's metric name, in order
    bounds: array[int]  # run i is samples[bounds[i] : bounds[i + 1]]
    family_of: array[int]  # per sample: the index of its run
    split: bool  # a metric in two runs (not contiguous)

    @classmethod
    def of(cls, metrics: tuple[str, ...]) -> Layout:
        names: list[str] = []
        bounds = array("I", [0])
        family_of = array("I")
        for name, group in groupby(metrics):
            size = sum(1 for _ in group)
            family_of.extend([len(names)] * size)
            names.append(name)
            bounds.append(bounds[-1] + size)
        return cls(tuple(names), bounds, family_of, len(set(names)) < len(names))

    def run(self, index: int) -> tuple[str, int, int]:
        return self.names[index], self.bounds[index], self.bounds[index + 1]

    def same(self, other: Layout) -> bool:
        return self is other or (self.names == other.names and self.bounds == other.bounds)


_LAYOUTS: dict[tuple[str, ...], Layout] = {}
LAYOUTS_MAX = 2048  # distinct sequences of metric names kept; past that, each is worked out anew
_metric = operator.itemgetter(0)


def layout_of(samples: tuple[Sample, ...]) -> Layout:
    global _recent
    recent_samples, recent = _recent  # one reading goes through every output in turn
    if recent_samples is samples:
        return recent
    metrics = tuple(map(_metric, samples))
    layout = _LAYOUTS.get(metrics)
    if layout is None:
        layout = Layout.of(metrics)
        if len(_LAYOUTS) < LAYOUTS_MAX:
            _LAYOUTS[metrics] = layout
    _recent = (samples, layout)  # one assignment: a reader in another thread sees a pair
    return layout


def samples_of(samples: tuple[Sample, ...], layout: Layout, metric: str) -> tuple[Sample, ...]:
    """The samples of one metric, in the reading's order."""
    if layout.split:
        return tuple(s for s in samples if s.metric == metric)
    try:
        index = layout.names.index(metric)
    except ValueError:
        return ()
    return samples[layout.bounds[index] : layout.bounds[index + 1]]


_recent: tuple[tuple[Sample, ...], Layout] = ((), Layout.of(()))
