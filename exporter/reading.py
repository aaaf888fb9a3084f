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

    Devices of one kind and firmware share one, so an output finds the few metrics it reads,
    or the families that changed, without a loop in Python over a reading's hundred samples.
    Kept compact (a fleet may have a few hundred): per sample four bytes, per run a few ints."""

    families: tuple[tuple[str, int, int], ...]  # runs of one metric: (name, start, end), in order
    family_of: array[int]  # per sample: the index of its run in `families`
    names: tuple[str, ...]  # the runs' metric names
    split: bool  # a metric in two runs (not contiguous)
    runs: dict[str, tuple[int, ...]]  # metric → its runs as start, end, start, end, ...

    @classmethod
    def of(cls, metrics: tuple[str, ...]) -> Layout:
        families: list[tuple[str, int, int]] = []
        family_of = array("I")
        runs: dict[str, tuple[int, ...]] = {}
        at = 0
        for name, group in groupby(metrics):
            size = sum(1 for _ in group)
            family_of.extend([len(families)] * size)
            families.append((name, at, at + size))
            runs[name] = (*runs.get(name, ()), at, at + size)
            at += size
        names = tuple(f[0] for f in families)
        return cls(tuple(families), family_of, names, len(runs) < len(names), runs)


_LAYOUTS: dict[tuple[str, ...], Layout] = {}
LAYOUTS_MAX = 4096  # distinct sequences of metric names; past that, each is worked out anew
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
    runs = layout.runs.get(metric)
    if runs is None:
        return ()
    if len(runs) == 2:
        return samples[runs[0] : runs[1]]
    return tuple(s for at in range(0, len(runs), 2) for s in samples[runs[at] : runs[at + 1]])


_recent: tuple[tuple[Sample, ...], Layout] = ((), Layout.of(()))
