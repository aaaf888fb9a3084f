"""The references on the same samples as the exporter's last scrape: prometheus_client's
generate_latest, the exporter's own Exposition rendered in-process, and the InfluxDB serialiser."""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bench.results import SizeResult
from exporter.reading import Reading, Sample


@dataclass
class ParsedFamily:
    name: str
    type: str
    documentation: str
    samples: list[tuple[str, dict[str, str], float]]


def parse_exposition(body: bytes) -> list[ParsedFamily]:
    """The per-device families of an exposition, parsed with prometheus_client.parser."""
    from prometheus_client.parser import text_string_to_metric_families

    families = []
    for family in text_string_to_metric_families(body.decode()):
        samples = [
            (s.name, dict(s.labels), s.value) for s in family.samples if "device" in s.labels
        ]
        if samples:
            families.append(ParsedFamily(family.name, family.type, family.documentation, samples))
    return families


def reference_registry(families: list[ParsedFamily]) -> Any:
    """A plain prometheus_client registry holding the same samples, as most exporters do."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

    disable_created_metrics()  # type: ignore[no-untyped-call]  # no _created series either
    registry = CollectorRegistry(auto_describe=False)
    for family in families:
        labelnames = list(family.samples[0][1])
        doc = family.documentation or family.name
        metric: Any
        if family.type == "counter":
            metric = Counter(family.name, doc, labelnames, registry=registry)
            for _, labels, value in family.samples:
                metric.labels(*(labels.get(k, "") for k in labelnames)).inc(value)
        else:
            metric = Gauge(family.name, doc, labelnames, registry=registry)
            for _, labels, value in family.samples:
                metric.labels(*(labels.get(k, "") for k in labelnames)).set(value)
    return registry


def time_repeatedly(fn: Callable[[], Any], reps: int, budget: float) -> tuple[float, Any]:
    """Median seconds of `fn` over at most `reps` calls and about `budget` seconds (at least 1)."""
    times = []
    result = None
    t_end = time.monotonic() + budget
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        if time.monotonic() > t_end:
            break
    return statistics.median(times), result


def readings_of(families: list[ParsedFamily]) -> list[Reading]:
    """The scraped samples as Readings again, one per device, for the InfluxDB serialiser."""
    per_device: dict[str, list[Sample]] = {}
    profile: dict[str, str] = {}
    for family in families:
        for name, labels, value in family.samples:
            device = labels.pop("device")
            profile[device] = labels.pop("profile", "unknown")
            per_device.setdefault(device, []).append(
                Sample(name, tuple(sorted(labels.items())), value)
            )
    now = time.time()
    return [
        Reading(
            device=d,
            user_labels=(("profile", profile[d]),),
            time=now,
            up=True,
            duration=0.01,
            model=profile[d],
            samples=tuple(samples),
        )
        for d, samples in per_device.items()
    ]


def influx_serialiser() -> tuple[Callable[[Reading], Any] | None, str]:
    """The line-protocol serialiser of exporter/outputs/influx/lines.py, or None and why not."""
    try:
        import exporter.outputs.influx.lines as influx
    except ImportError as exc:
        return None, f"exporter/outputs/influx/lines.py not importable ({exc})"
    serializer = getattr(influx, "Serializer", None)
    if serializer is not None:
        return serializer().encode, "exporter.outputs.influx.lines.Serializer().encode"
    for name, fn in inspect.getmembers(influx, inspect.isfunction):
        if fn.__module__ != influx.__name__ or name.startswith("_"):
            continue
        params = list(inspect.signature(fn).parameters.values())
        required = [
            p
            for p in params
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(required) == 1 and "Reading" in str(params[0].annotation):
            return fn, f"exporter.outputs.influx.lines.{name}"
    return None, "exporter/outputs/influx/lines.py has no public function taking one Reading"


def count_points(output: Any) -> int:
    if isinstance(output, bytes | str):
        text = output.decode() if isinstance(output, bytes) else output
        return sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    if isinstance(output, Iterable):
        return sum(count_points(item) if isinstance(item, bytes | str) else 1 for item in output)
    return 1


def influx_rate(readings: list[Reading], budget: float) -> tuple[float | None, str]:
    fn, where = influx_serialiser()
    if fn is None:
        return None, where
    points = 0
    t0 = time.perf_counter()
    try:
        for _ in range(100):  # bounded; at least one pass over every reading
            for reading in readings:
                points += count_points(fn(reading))
            if time.perf_counter() - t0 > budget:
                break
    except Exception as exc:  # a module still being written must not sink the whole run
        return None, f"{where} failed: {type(exc).__name__}: {exc}"
    return points / (time.perf_counter() - t0), where


def own_render_in_process(
    res: SizeResult, readings: list[Reading], opts: argparse.Namespace
) -> None:
    """The exporter's Exposition on the same samples, timed like generate_latest: in this
    process, no HTTP, no polls competing for the event loop. A reading is published before
    every render, as a poll would between two scrapes, so nothing comes from the cache."""
    from exporter.outputs.prometheus import Exposition

    exposition = Exposition()
    for reading in readings:
        exposition.publish(reading)
    turn = iter(range(10**9))

    def render(gzip: bool) -> bytes:
        exposition.publish(readings[next(turn) % len(readings)])
        return exposition.render_gzip() if gzip else exposition.render()

    reps, budget = opts.scrapes, opts.reference_budget
    res.own_render_seconds, _ = time_repeatedly(lambda: render(False), reps, budget)
    res.own_render_gzip_seconds, _ = time_repeatedly(lambda: render(True), reps, budget)
    if res.own_render_seconds > 0:
        res.reference_ratio_in_process = res.reference_seconds / res.own_render_seconds


def references(res: SizeResult, body: bytes, opts: argparse.Namespace) -> None:
    families = parse_exposition(body)
    res.reference_samples = sum(len(f.samples) for f in families)
    registry = reference_registry(families)
    from prometheus_client import generate_latest

    res.reference_seconds, text = time_repeatedly(
        lambda: generate_latest(registry), opts.reference_reps, opts.reference_budget
    )
    res.reference_bytes = len(text)
    res.reference_ratio = res.reference_seconds / res.metrics_plain_seconds
    readings = readings_of(families)
    own_render_in_process(res, readings, opts)
    res.influx_points_per_second, res.influx_note = influx_rate(
        readings, min(opts.reference_budget, 5.0)
    )
