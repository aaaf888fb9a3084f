"""Firmware drift in, catalogue samples out.

Lektrico firmware differs between generations and from its own spec: keys with trailing spaces
(`"cable_current "`), numbers as int, float or string, missing keys, arrays shorter than three,
the old error key `state_machine_e_activated`, a `voltage` of 0 on three-phase units. This module
turns replies (one dict per method) into catalogue samples, dropping and counting every value it
cannot trust (wrong type, not finite, outside the plausible range). Flag keys that become the same
label once cleaned (`"overtemp"` and `"overtemp "`, or two names alike in their first 128
characters) give one series, active if either is, and count as dropped (`duplicate`).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import sys
import zoneinfo
from array import array
from collections import ChainMap, Counter
from collections.abc import Iterable, Mapping
from itertools import repeat
from typing import Any

from exporter.catalogue import table as cat
from exporter.catalogue.table import Group, Metric, Model
from exporter.device.client import PollError
from exporter.reading import Labels, Sample, label_pair, shared_sample

Replies = Mapping[str, Mapping[str, Any]]
KEY_ALIASES = {"state_machine_e_activated": "state_e_activated"}
MAX_LABEL_VALUE = 128
_TRUE = frozenset({"true", "1", "on", "yes"})
_FALSE = frozenset({"false", "0", "off", "no"})


def normalise_reply(raw: Mapping[str, Any], method: str | None = None) -> dict[str, Any]:
    """Strip key whitespace and map old key names; the values are checked later, per metric.

    With the `method`, keys no catalogue row and no poll logic reads are left out: a device's
    last replies are kept until its next poll, and most of a reply is never read."""
    keep = kept_keys(method) if method is not None else None
    if method is not None and keep is None:
        # Read whole (error flags): keys are cleaned where they become labels, so that two
        # keys that clean to the same label are merged there, and counted, not overwritten.
        return dict(raw)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.strip()
        name = KEY_ALIASES.get(name, name)
        if keep is None:
            out[name] = value
        elif name in keep:
            # The catalogue's own key string, and short text values interned: one object for
            # the fleet instead of one per device (JSON decoding makes new ones every reply).
            out[keep[name]] = sys.intern(value) if type(value) is str and len(value) < 64 else value
    return out


@functools.cache
def kept_keys(method: str) -> dict[str, str] | None:
    """The keys of a method's reply worth keeping, each mapped to itself; None: all (a method
    read whole)."""
    keys = {src.key for src in cat.POLLER_INPUTS if src.method == method}
    for metric in cat.CATALOGUE:
        for src in cat.inputs_of(metric.extract):
            if src.method != method:
                continue
            if src.key == cat.WHOLE_REPLY:
                return None
            keys.add(src.key)
    return {key: key for key in keys}


def check_main_reply(method: str, reply: Mapping[str, Any]) -> None:
    """A main reply that carries none of the values it exists for is malformed, not empty."""
    needed = cat.MAIN_REPLY_VALUES[method]
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


# Error flags the catalogue knows: their samples are shared by the fleet (shared_sample);
# a flag a device invents gets samples of its own, so it cannot grow that table.
_KNOWN_FLAGS = frozenset(cat.ERROR_FLAGS)


class Extractor:
    """Walks the catalogue for one device model over one poll's replies."""

    def __init__(
        self, model: Model, replies: Replies, dropped: Counter[str], now: float | None = None
    ) -> None:
        self.model = model
        self.replies = replies
        self.dropped = dropped
        self.now = now  # unix time of the poll, for the schedule
        self.minute: int | None = None  # of the week, once worked out

    def week_minute(self) -> int | None:
        """The poll's minute of the week in the device's zone (None without a time): the
        only thing of the time the schedule rows read."""
        if self.minute is None and self.now is not None:
            self.minute = week_minute(self.now, self._zone())
        return self.minute

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
            return [shared_sample(name, (), 1.0 - v if ex.invert else v)]
        if isinstance(ex, cat.Labelled):
            out = []
            for label, sources in ex.entries:
                v = self._number(metric, sources, ex.scale, ex.boolean)
                if v is not None:
                    out.append(shared_sample(name, label_pair(metric.labels[0], label), v))
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
        if isinstance(ex, cat.Length):
            present, raw = self._raw(ex.source)
            if not present:
                return []
            if not isinstance(raw, list):
                self.dropped["type"] += 1
                return []
            return [shared_sample(name, (), float(len(raw)))]
        if isinstance(ex, cat.Schedule):
            return self._schedule(metric, ex)
        return []

    def _schedule(self, metric: Metric, ex: cat.Schedule) -> list[Sample]:
        present, intervals = self._raw(cat.SCHEDULE_INPUTS[0])
        on_present, on_raw = self._raw(cat.SCHEDULE_INPUTS[1])
        if not present or not on_present or self.now is None:
            return []
        enabled, _ = to_number(on_raw, boolean=True)
        if enabled is None or not isinstance(intervals, list):
            self.dropped["type"] += 1
            return []
        current = None
        if enabled:
            minute = self.week_minute()
            assert minute is not None
            # Both rows read the intervals; unreadable ones count once, with "active".
            drops = self.dropped if ex.part == "active" else Counter()
            current = active_interval(intervals, minute, drops)
        if ex.part == "active":
            return [shared_sample(metric.name, (), 0.0 if current is None else 1.0)]
        if current is None:
            return []
        if metric.valid and not metric.valid[0] <= current <= metric.valid[1]:
            self.dropped["out_of_range"] += 1
            return []
        return [Sample(metric.name, (), current)]

    def _zone(self) -> dt.tzinfo:
        _, name = self._raw(cat.SCHEDULE_INPUTS[2])
        zone = time_zone(name) if isinstance(name, str) else None
        if zone is not None:
            return zone
        _, offset = self._raw(cat.SCHEDULE_INPUTS[3])
        hours, _ = to_number(offset)
        if hours is not None and -14 <= hours <= 14:
            return dt.timezone(dt.timedelta(hours=hours))
        return dt.UTC

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
            out.append(shared_sample(metric.name, label_pair("phase", phase), value * ex.scale))
        return out

    def _state_series(self, metric: Metric, known: tuple[str, ...], current: str) -> list[Sample]:
        label = metric.labels[0]
        out = [
            shared_sample(metric.name, label_pair(label, s), 1.0 if s == current else 0.0)
            for s in known
        ]
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
        merged: dict[str, float] = {}
        for key, raw in reply.items():
            name = key.strip() if isinstance(key, str) else key
            flag = label_value(KEY_ALIASES.get(name, name))
            value, reason = to_number(raw, boolean=True)
            if not flag or value is None:
                self.dropped[reason or "type"] += 1
                continue
            if flag in merged:
                # Active wins, whatever order the keys came in.
                self.dropped["duplicate"] += 1
                merged[flag] = max(merged[flag], value)
            else:
                merged[flag] = value
        out = []
        for flag, value in merged.items():
            if flag in _KNOWN_FLAGS:
                out.append(shared_sample(metric.name, label_pair(metric.labels[0], flag), value))
            else:
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
        if ex.identity:
            found["model"] = self.model.name
            # A charger's device_id ends in its serial (1p7k_500006); a meter's does not
            # (m2w_81 is its model): its serial comes from M2w_config.Get only.
            if not found["serial"] and self.model.kind == cat.CHARGER and "_" in found["device_id"]:
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
    memo: Memo | None = None,
    now: float | None = None,
) -> list[Sample]:
    """Every catalogue sample this model's replies give, in catalogue order; `now` (unix time)
    is the poll's time, for the rows that depend on it (the schedule).

    With a `memo` (one per device), rows whose inputs are unchanged since the memo's last call
    are not worked out again: see `Memo`. The result is the same either way."""
    if memo is not None:
        return memo.extract(model, replies, dropped, groups, now)
    ex = Extractor(model, replies, dropped, now)
    out: list[Sample] = []
    for metric in cat.CATALOGUE:
        if metric.group in groups and model.kind in metric.devices:
            out.extend(ex.samples(metric))
    return out


_ROWS = tuple(m for m in cat.CATALOGUE if not isinstance(m.extract, cat.Computed))
# Per row, the (method, key) pairs it reads; key WHOLE_REPLY stands for the whole reply.
_DEPENDS = tuple(frozenset((s.method, s.key) for s in cat.inputs_of(m.extract)) for m in _ROWS)
# Per method, the pairs rows read from it (with key WHOLE_REPLY where a row reads it whole).
_READ: dict[str, frozenset[tuple[str, str]]] = {}
for _pairs in _DEPENDS:
    for _method, _key in _pairs:
        _READ[_method] = _READ.get(_method, frozenset()) | {(_method, _key)}
# Per device kind: (row index, metric, depends) of the rows that kind has.
_KIND_ROWS = {
    kind: tuple((i, m, _DEPENDS[i]) for i, m in enumerate(_ROWS) if kind in m.devices)
    for kind in (cat.CHARGER, cat.METER)
}
_TIMED = frozenset(i for i, m in enumerate(_ROWS) if cat.time_dependent(m.extract))
# Per (method, key) pair, the rows that read it.
_ROWS_READING: dict[tuple[str, str], tuple[int, ...]] = {}
for _i, _pairs in enumerate(_DEPENDS):
    for _pair in _pairs:
        _ROWS_READING[_pair] = (*_ROWS_READING.get(_pair, ()), _i)
_ABSENT = object()
_NO_SPANS = array("i", [-1, 0] * len(_ROWS))
# A value equal to the last one but of another type can give other samples: 1 and True (a
# number, or a dropped bool), 1 and 1.0 (label text "1" or "1.0"). So values count as the same
# only when of the same type, and a list only when its items are of the same types too (a list
# in a list is never read as a number).
_SIMPLE = frozenset({str, int, float, type(None)})


def _same_value(a: object, b: object) -> bool:
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b) or a != b:
        return False
    if kind is list:
        assert isinstance(a, list) and isinstance(b, list)
        return list(map(type, a)) == list(map(type, b))
    return kind in _SIMPLE


def changed_inputs(old: Replies, new: Replies) -> set[tuple[str, str]]:
    """The (method, key) pairs rows read whose value differs between two polls' replies; a
    method's (method, WHOLE_REPLY) is in when any of its keys differs."""
    changed: set[tuple[str, str]] = set()
    for method, read in _READ.items():
        a, b = old.get(method), new.get(method)
        if a is b:
            continue  # the same reply: a method not fetched again this poll
        whole = (method, cat.WHOLE_REPLY)
        if a is None or b is None:
            changed.update(read)
            changed.add(whole)
            continue
        keys = a.keys() | b.keys() if whole in read else [key for _, key in read]
        # _same_value inlined for the common case (a number or a string, of the same type),
        # with each reply's values looked up by map: one comparison or two a key, no call.
        diff = [
            (method, key)
            for key, x, y in zip(
                keys,
                map(a.get, keys, repeat(_ABSENT)),
                map(b.get, keys, repeat(_ABSENT)),
                strict=True,
            )
            if x is not y
            and (
                type(x) is not type(y)
                or x != y
                or (type(x) not in _SIMPLE and not _same_value(x, y))
            )
        ]
        if diff:
            changed.update(diff)
            changed.add(whole)
    return changed


class Memo:
    """A device's samples per catalogue row from its last extraction, reused while unchanged.

    A row's samples depend only on the device's model and the reply values the row reads
    (`catalogue.inputs_of`). When each of those is the same as at the last extraction (equal,
    and of the same JSON type), the row's samples are the last ones, and the values the row
    dropped then are counted as dropped again. Most of a charger's values are the same from one
    poll to the next, and the slow and identity methods' replies are the very same objects, so
    most rows cost nothing: the last samples are copied whole, and only the rows whose inputs
    changed are worked out and written over their old places (`_splice`). A row whose number
    of samples changes moves the rows after it, and then the whole list is laid out again.

    The caller must pass a new replies mapping when replies change, never the last one mutated
    (the memo keeps the last one to compare with).
    """

    __slots__ = ("drops", "groups", "minute", "model", "replies", "samples", "spans")

    def __init__(self) -> None:
        self.model: Model | None = None
        self.groups: frozenset[Group] = frozenset()
        self.replies: Replies = {}
        self.samples: tuple[Sample, ...] = ()
        # Row i's samples are samples[spans[2i] : spans[2i] + spans[2i + 1]]; the start is -1
        # when the row was not worked out (another model's row, or LIVE while down).
        self.spans = array("i")  # compact: a device keeps ~140 of these
        self.drops: dict[int, tuple[str, ...]] = {}  # row → drop reasons, only rows with drops
        # The week minute the time-dependent rows were worked out for, if they read it.
        self.minute: int | None = None  # of the week, once worked out

    def extract(
        self,
        model: Model,
        replies: Replies,
        dropped: Counter[str],
        groups: frozenset[Group],
        now: float | None = None,
    ) -> list[Sample]:
        ex = Extractor(model, replies, dropped, now)
        valid = model is self.model
        changed = changed_inputs(self.replies, replies) if valid else set()
        if valid and groups == self.groups:
            out = self._splice(ex, changed, dropped)
            if out is not None:
                self.replies = replies
                return out
        return self._lay_out(ex, groups, valid, changed, dropped)

    def _splice(
        self, ex: Extractor, changed: set[tuple[str, str]], dropped: Counter[str]
    ) -> list[Sample] | None:
        """The last samples with the changed rows worked out again in their places; None when
        one of them now has another number of samples (nothing is kept or counted then)."""
        spans = self.spans
        rows = {i for pair in changed for i in _ROWS_READING.get(pair, ()) if spans[2 * i] >= 0}
        timed = [i for i in _TIMED if spans[2 * i] >= 0]
        if timed:
            minute = ex.week_minute()
            if minute is None or minute != self.minute:
                rows.update(timed)
        out = list(self.samples)
        kept: dict[int, tuple[str, ...]] = {}
        for i in sorted(rows):
            mine: Counter[str] = Counter()
            ex.dropped = mine
            samples = ex.samples(_ROWS[i])
            at, n = spans[2 * i], spans[2 * i + 1]
            if len(samples) != n:
                return None
            out[at : at + n] = samples
            if mine:
                kept[i] = tuple(mine.elements())
        for i, reasons in self.drops.items():
            if i not in rows:
                kept[i] = reasons
        for reasons in kept.values():
            dropped.update(reasons)
        self.samples, self.drops, self.minute = tuple(out), kept, ex.minute
        return out

    def _lay_out(
        self,
        ex: Extractor,
        groups: frozenset[Group],
        valid: bool,
        changed: set[tuple[str, str]],
        dropped: Counter[str],
    ) -> list[Sample]:
        """Every row of the model in `groups`, each reused where it is `valid` (the same
        model as last time) and its inputs are not among the `changed` ones."""
        model, replies = ex.model, ex.replies
        last, spans, drops = self.samples, self.spans, self.drops
        out: list[Sample] = []
        new_drops: dict[int, tuple[str, ...]] = {}
        new_spans = array("i", _NO_SPANS)
        for i, metric, depends in _KIND_ROWS[model.kind]:
            if metric.group not in groups:
                continue
            start = len(out)
            at = spans[2 * i] if valid else -1
            if (
                at >= 0
                and (not changed or changed.isdisjoint(depends))
                # A time-dependent row reads the time as its minute of the week, and only that.
                and (
                    i not in _TIMED or (self.minute is not None and self.minute == ex.week_minute())
                )
            ):
                out.extend(last[at : at + spans[2 * i + 1]])
                reasons = drops.get(i)
                if reasons:
                    dropped.update(reasons)
                    new_drops[i] = reasons
            else:
                mine: Counter[str] = Counter()
                ex.dropped = mine
                out.extend(ex.samples(metric))
                if mine:
                    dropped.update(mine)
                    new_drops[i] = tuple(mine.elements())
            new_spans[2 * i] = start
            new_spans[2 * i + 1] = len(out) - start
        self.model, self.groups, self.replies = model, groups, replies
        self.samples, self.spans, self.drops = tuple(out), new_spans, new_drops
        self.minute = ex.minute
        return out


@functools.lru_cache(maxsize=256)
def time_zone(name: str) -> dt.tzinfo | None:
    """The IANA zone of that name, or None (empty, unknown, or a POSIX TZ string)."""
    name = name.strip()
    if not name or len(name) > 64:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


WEEK_MINUTES = 7 * 24 * 60


def week_minute(unix: float, zone: dt.tzinfo) -> int:
    """Minutes since Monday 00:00 in that zone (the schedule's days run 1-7 from Monday)."""
    local = dt.datetime.fromtimestamp(unix, zone)
    return local.weekday() * 1440 + local.hour * 60 + local.minute


_INTERVAL_KEYS = (("start_d", 1, 7), ("start_h", 0, 23), ("start_m", 0, 59))
_INTERVAL_END_KEYS = (("end_d", 1, 7), ("end_h", 0, 23), ("end_m", 0, 59))


def _point(interval: Mapping[str, Any], keys: tuple[tuple[str, int, int], ...]) -> int | None:
    parts = []
    for key, low, high in keys:
        value, _ = to_number(interval.get(key))
        if value is None or value != int(value) or not low <= value <= high:
            return None
        parts.append(int(value))
    day, hour, minute = parts
    return (day - 1) * 1440 + hour * 60 + minute


def active_interval(intervals: list[Any], minute: int, dropped: Counter[str]) -> float | None:
    """The `current` of the first interval covering that minute of the week, or None. An
    interval ending before it starts wraps over the week's end; one that is not readable is
    skipped and counted."""
    for interval in intervals:
        if not isinstance(interval, Mapping):
            dropped["type"] += 1
            continue
        start = _point(interval, _INTERVAL_KEYS)
        end = _point(interval, _INTERVAL_END_KEYS)
        current, reason = to_number(interval.get("current"))
        if start is None or end is None:
            dropped["out_of_range"] += 1
            continue
        if current is None:
            dropped[reason or "type"] += 1
            continue
        inside = start <= minute < end if start <= end else minute >= start or minute < end
        if inside:
            return current
    return None


def inactive_errors(known: Replies) -> dict[str, bool]:
    """Active_errors as it must be when Charger_info says has_active_errors is false."""
    for method in (cat.ACTIVE_ERRORS, cat.LOGGED_ERRORS):
        reply = known.get(method)
        if reply:
            return dict.fromkeys(reply, False)
    return dict.fromkeys(cat.ERROR_FLAGS, False)


class DeviceReplies:
    """What one device has said, normalised: the one way from its replies to its samples.

    A poll `clean`s each raw reply as it arrives (and `check_main`s the main one), reads what
    it decides on from `get` and `switch`, then `merge`s its fresh replies; `samples` gives the
    catalogue samples of everything known. The keys kept of each reply are the ones the
    catalogue reads (its rows and `POLLER_INPUTS`): the catalogue is the only list of keys.
    """

    __slots__ = ("by_method", "memo")

    def __init__(self) -> None:
        # Replaced, never changed in place: the memo compares the next replies with these.
        self.by_method: dict[str, dict[str, Any]] = {}
        self.memo = Memo()

    clean = staticmethod(normalise_reply)
    check_main = staticmethod(check_main_reply)

    def __bool__(self) -> bool:
        return bool(self.by_method)

    def __contains__(self, method: object) -> bool:
        return method in self.by_method

    def methods(self) -> list[str]:
        return sorted(self.by_method)

    def get(self, method: str) -> Mapping[str, Any]:
        """A method's last reply; empty when it never answered."""
        return self.by_method.get(method, {})

    def merge(self, fresh: Mapping[str, dict[str, Any]], drop: Iterable[str] = ()) -> None:
        """A successful poll's replies over the known ones; the `drop`ped methods forgotten."""
        replies = {**self.by_method, **fresh}
        for method in drop:
            replies.pop(method, None)
        self.by_method = replies

    def forget(self) -> None:
        """Everything read from the unit that was at this address before."""
        self.by_method = {}
        self.memo = Memo()

    def known(self, fresh: Mapping[str, Mapping[str, Any]]) -> Replies:
        """The replies known once `fresh` is merged, without merging it."""
        return ChainMap(fresh, self.by_method)  # type: ignore[arg-type]

    @staticmethod
    def switch(reply: Mapping[str, Any], key: str) -> bool | None:
        """A reply's on/off value; None when absent or not a flag."""
        if key not in reply:
            return None
        on, _ = to_number(reply[key], boolean=True)
        return None if on is None else on == 1.0

    def errors_inactive(self) -> dict[str, bool]:
        """Active_errors as it must be when Charger_info says has_active_errors is false."""
        return inactive_errors(self.by_method)

    def samples(
        self, model: Model, dropped: Counter[str], groups: frozenset[Group], now: float
    ) -> list[Sample]:
        return self.memo.extract(model, self.by_method, dropped, groups, now)
