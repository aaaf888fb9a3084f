"""Firmware drift in, catalogue samples out.

Lektrico firmware differs between generations and from its own spec: keys with trailing spaces
(`"cable_current "`), numbers as int, float or string, missing keys, arrays shorter than three,
the old error key `state_machine_e_activated`, a `voltage` of 0 on three-phase units. This module
turns replies (one dict per method) into catalogue samples, dropping and counting every value it
cannot trust (wrong type, not finite, outside the plausible range).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from . import catalogue as cat
from .catalogue import Group, Metric, Model
from .protocol import PollError
from .reading import Labels, Sample

Replies = Mapping[str, Mapping[str, Any]]
KEY_ALIASES = {"state_machine_e_activated": "state_e_activated"}
MAX_LABEL_VALUE = 128
_TRUE = frozenset({"true", "1", "on", "yes"})
_FALSE = frozenset({"false", "0", "off", "no"})


def normalise_reply(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Strip key whitespace and map old key names; the values are checked later, per metric."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.strip()
        out[KEY_ALIASES.get(name, name)] = value
    return out


def check_main_reply(method: str, reply: Mapping[str, Any]) -> None:
    """A main reply that carries none of the values it exists for is malformed, not empty."""
    needed = {
        "Charger_info.Get": ("charger_state", "extended_charger_state", "instant_power"),
        "Meter_info.Get": ("current", "voltage", "active_p"),
    }[method]
    if not any(key in reply for key in needed):
        raise PollError("schema", f"reply has none of {', '.join(needed)}", method)


def to_number(raw: object, boolean: bool = False) -> tuple[float | None, str | None]:
    """(value, None) or (None, drop reason)."""
    if isinstance(raw, bool):
        # JSON true is a flag, not the number 1: `"instant_power": true` is not 1 W.
        return (float(raw), None) if boolean else (None, "type")
    if isinstance(raw, int | float):
        try:
            value = float(raw)
        except OverflowError:  # an int beyond float range (json.loads keeps big ints exact)
            return None, "out_of_range"
    elif isinstance(raw, str):
        text = raw.strip().lower()
        if boolean and text in _TRUE:
            return 1.0, None
        if boolean and text in _FALSE:
            return 0.0, None
        try:
            value = float(text)
        except ValueError:
            return None, "type"
    else:
        return None, "type"
    if not math.isfinite(value):
        return None, "non_finite"
    if boolean and value not in (0.0, 1.0):
        return None, "out_of_range"
    return value, None


def label_value(raw: object) -> str | None:
    if isinstance(raw, bool) or raw is None or isinstance(raw, dict | list):
        return None
    text = str(raw).strip()
    text = "".join(ch for ch in text if ch.isprintable())
    return text[:MAX_LABEL_VALUE]


class Extractor:
    """Walks the catalogue for one device model over one poll's replies."""

    def __init__(self, model: Model, replies: Replies, dropped: Counter[str]) -> None:
        self.model = model
        self.replies = replies
        self.dropped = dropped

    def _raw(self, src: cat.Src) -> tuple[bool, Any]:
        reply = self.replies.get(src.method)
        if reply is None or src.key not in reply:
            return False, None
        return True, reply[src.key]

    def _number(
        self, metric: Metric, sources: tuple[cat.Src, ...], scale: float, boolean: bool
    ) -> float | None:
        for src in sources:
            present, raw = self._raw(src)
            if not present:
                continue
            value, reason = to_number(raw, boolean)
            if value is not None:
                value *= scale
                if metric.valid and not metric.valid[0] <= value <= metric.valid[1]:
                    reason = "out_of_range"
                else:
                    return value
            self.dropped[reason or "type"] += 1
        return None

    def samples(self, metric: Metric) -> list[Sample]:
        ex = metric.extract
        name = metric.name
        if isinstance(ex, cat.Number):
            v = self._number(metric, ex.sources, ex.scale, ex.boolean)
            if v is None:
                return []
            return [Sample(name, (), 1.0 - v if ex.invert else v)]
        if isinstance(ex, cat.Labelled):
            out = []
            for label, sources in ex.entries:
                v = self._number(metric, sources, ex.scale, ex.boolean)
                if v is not None:
                    out.append(Sample(name, ((metric.labels[0], label),), v))
            return out
        if isinstance(ex, cat.PerPhase):
            return self._phases(metric, ex)
        if isinstance(ex, cat.StateSet):
            return self._stateset(metric, ex)
        if isinstance(ex, cat.EnumSet):
            return self._enumset(metric, ex)
        if isinstance(ex, cat.Flags):
            return self._flags(metric, ex)
        if isinstance(ex, cat.Info):
            return self._info(metric, ex)
        return []

    def _phases(self, metric: Metric, ex: cat.PerPhase) -> list[Sample]:
        present, raw = self._raw(ex.source)
        values: list[object]
        if present and isinstance(raw, list):
            values = raw
        elif ex.scalar_fallback and self.model.phases == 1:
            fallback_present, scalar = self._raw(cat.Src(ex.source.method, ex.scalar_fallback))
            if not fallback_present:
                return []
            values = [scalar]
        else:
            if present:
                self.dropped["type"] += 1
            return []
        out = []
        for phase, raw_value in zip(cat.PHASES[: self.model.phases], values, strict=False):
            value, reason = to_number(raw_value)
            if (
                value is not None
                and metric.valid
                and not (metric.valid[0] <= value * ex.scale <= metric.valid[1])
            ):
                value, reason = None, "out_of_range"
            if value is None:
                self.dropped[reason or "type"] += 1
                continue
            out.append(Sample(metric.name, (("phase", phase),), value * ex.scale))
        return out

    def _state_series(self, metric: Metric, known: tuple[str, ...], current: str) -> list[Sample]:
        label = metric.labels[0]
        out = [Sample(metric.name, ((label, s),), 1.0 if s == current else 0.0) for s in known]
        if current not in known:
            out.append(Sample(metric.name, ((label, current),), 1.0))
        return out

    def _stateset(self, metric: Metric, ex: cat.StateSet) -> list[Sample]:
        for src in ex.sources:
            present, raw = self._raw(src)
            if not present:
                continue
            state = label_value(raw) if isinstance(raw, str) else None
            if state:
                return self._state_series(metric, ex.states, state.upper())
            self.dropped["type"] += 1
        return []

    def _enumset(self, metric: Metric, ex: cat.EnumSet) -> list[Sample]:
        for src in (ex.source, *ex.fallbacks):
            present, raw = self._raw(src)
            if not present:
                continue
            code, reason = to_number(raw)
            if code is None or code != int(code):
                self.dropped[reason or "type"] += 1
                continue
            known = tuple(dict.fromkeys(ex.codes.values()))
            return self._state_series(metric, known, ex.codes.get(int(code), "unknown"))
        return []

    def _flags(self, metric: Metric, ex: cat.Flags) -> list[Sample]:
        reply = self.replies.get(ex.method)
        if not reply:
            return []
        out = []
        for key, raw in reply.items():
            flag = label_value(key)
            value, reason = to_number(raw, boolean=True)
            if not flag or value is None:
                self.dropped[reason or "type"] += 1
                continue
            out.append(Sample(metric.name, ((metric.labels[0], flag),), value))
        return out

    def _info(self, metric: Metric, ex: cat.Info) -> list[Sample]:
        labels: list[tuple[str, str]] = []
        for label, sources in ex.fields:
            value = ""
            for src in sources:
                present, raw = self._raw(src)
                text = label_value(raw) if present else None
                if text:
                    value = text
                    break
            labels.append((label, value))
        found = {k: v for k, v in labels}
        if metric.name == "lektrico_device_info":
            found["model"] = self.model.name
            if not found["serial"] and "_" in found["device_id"]:
                found["serial"] = found["device_id"].split("_", 1)[1]
        elif not any(found.values()):
            return []
        ordered: Labels = tuple((label, found[label]) for label, _ in ex.fields)
        return [Sample(metric.name, ordered, 1.0)]


def extract(
    model: Model,
    replies: Replies,
    dropped: Counter[str],
    groups: frozenset[Group] = frozenset({Group.HEALTH, Group.LIVE}),
) -> list[Sample]:
    """Every catalogue sample this model's replies give, in catalogue order."""
    ex = Extractor(model, replies, dropped)
    out: list[Sample] = []
    for metric in cat.CATALOGUE:
        if metric.group in groups and model.kind in metric.kinds:
            out.extend(ex.samples(metric))
    return out


def inactive_errors(known: Replies) -> dict[str, bool]:
    """Active_errors as it must be when Charger_info says has_active_errors is false."""
    for method in ("Active_errors.Get", "Logged_errors.Get"):
        reply = known.get(method)
        if reply:
            return dict.fromkeys(reply, False)
    return dict.fromkeys(cat.ERROR_FLAGS, False)
