"""Readings as InfluxDB line protocol, derived from the catalogue's `influx=` rows.

One point per measurement (and phase) per poll; tags are the device, its model, the phase and
the user's labels; the timestamp is the poll time at the configured precision. A device
"garage" (3p22k, user label site="home") polled at 1700000000 gives, at precision "s":

    lektrico_device,device=garage,model=3p22k,site=home up=true,poll_duration_seconds=0.012,...
    lektrico_charger,device=garage,model=3p22k,site=home state="C",power_watts=11040.0,...
    lektrico_charger_phase,device=garage,model=3p22k,phase=L1,site=home current_amperes=16.0,...
    lektrico_charger_errors,device=garage,model=3p22k,site=home active_overtemp=false,...

A field's type comes from its catalogue row and never changes between writes (InfluxDB rejects
a write whose field type differs from the stored one): "float" is always written with a
decimal point or exponent, "int" rounded with the `i` suffix, "bool" as true/false and "string"
quoted. Escaping follows the line protocol reference: commas and spaces in measurements;
commas, equals signs and spaces in tag keys, tag values and field keys; double quotes and
backslashes in string field values. Line breaks cannot be written and become spaces; empty tag
values are left out, as InfluxDB requires.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from exporter.catalogue import table as cat
from exporter.catalogue.table import Kind
from exporter.reading import Labels, Reading

PRECISION_FACTOR: Mapping[str, int] = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
FIELD_TYPES = frozenset({"float", "int", "bool", "string"})
POINT_TAGS = ("device", "model")  # every point's own tags, beside the user's labels

_CONTROL = str.maketrans({"\n": " ", "\r": " ", "\t": " "})
_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\ ", "\r": r"\ ", "\t": r"\ "})
_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\ ", "\r": r"\ ", "\t": r"\ "})
# A backslash before an escapable character or at the end is read differently by InfluxDB 1.x
# (kept, or a parse error) and 2.x (an escape); the only unambiguous spelling is none at all.
_AMBIGUOUS_BACKSLASH = re.compile(r"\\(?=[\\ ,=\n\r\t]|$)")


def _unambiguous(text: str) -> str:
    return _AMBIGUOUS_BACKSLASH.sub("/", text) if "\\" in text else text


def escape_measurement(name: str) -> str:
    return _unambiguous(name).translate(_MEASUREMENT)


def escape_key(text: str) -> str:
    """A tag key, tag value or field key."""
    return _unambiguous(text).translate(_KEY)


def quote_string(text: str) -> str:
    """A string field value, quoted."""
    body = text.translate(_CONTROL).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{body}"'


def _float(value: float) -> str | None:
    return repr(float(value)) if math.isfinite(value) else None


def _int(value: float) -> str | None:
    if not math.isfinite(value):
        return None
    whole = round(value)
    return f"{whole}i" if -(2**63) <= whole < 2**63 else None


def _bool(value: float) -> str | None:
    if not math.isfinite(value):
        return None
    return "true" if value else "false"


FORMATTERS: Mapping[str, Callable[[float], str | None]] = {
    "float": _float,
    "int": _int,
    "bool": _bool,
}


def format_field(value: float | str, type_: str) -> str | None:
    """The field value as line protocol; None when it cannot be written (not finite, or an
    integer beyond 64 bits)."""
    if type_ == "string":
        return quote_string(str(value))
    return FORMATTERS[type_](float(value))


def timestamp(unix: float, precision: str) -> int:
    """Unix time in whole units of `precision`, truncated (1700000000.25 → 1700000000250 ms)."""
    factor = PRECISION_FACTOR[precision]
    whole = math.floor(unix)
    # Rounding to a thousandth of a unit first drops float noise (0.25 s is 249999999.99... ns).
    return whole * factor + math.floor(round((unix - whole) * factor, 3))


class Mode(Enum):
    VALUE = 1  # one field; the metric's labels (phase) are tags
    PER_LABEL = 2  # one field per label value (label_as_field)
    STATE = 3  # a stateset: one string field, the state whose series is 1
    INFO = 4  # each label a string field


@dataclass(frozen=True)
class Plan:
    """How one catalogue metric's samples become fields."""

    measurement: str  # escaped, with prefix
    field: str  # the field name, or its prefix for PER_LABEL and INFO
    key: str  # the escaped field name and "=", for VALUE and STATE
    type: str
    mode: Mode
    format: Callable[[float], str | None]


def _mode(m: cat.Metric) -> Mode:
    if m.kind is Kind.STATESET:
        return Mode.STATE
    if m.influx is not None and m.influx.label_as_field:
        return Mode.INFO if m.kind is Kind.INFO else Mode.PER_LABEL
    return Mode.VALUE


def plans(
    prefix: str = "lektrico", catalogue: Iterable[cat.Metric] = cat.CATALOGUE
) -> dict[str, Plan]:
    out: dict[str, Plan] = {}
    for m in catalogue:
        if m.influx is None:
            continue
        if m.influx.type not in FIELD_TYPES:
            raise ValueError(f"{m.name}: unknown InfluxDB field type {m.influx.type!r}")
        name = f"{prefix}_{m.influx.measurement}" if prefix else m.influx.measurement
        out[m.name] = Plan(
            measurement=escape_measurement(name),
            field=m.influx.field,
            key=escape_key(m.influx.field) + "=",
            type=m.influx.type,
            mode=_mode(m),
            format=FORMATTERS.get(m.influx.type, _float),
        )
    return out


class Serializer:
    """Reading → line-protocol lines (str, without newline)."""

    def __init__(self, precision: str = "s", prefix: str = "lektrico") -> None:
        if precision not in PRECISION_FACTOR:
            raise ValueError(f"precision must be one of {', '.join(PRECISION_FACTOR)}")
        self.precision = precision
        self.plans = plans(prefix)
        self._tagsets: dict[tuple[str, str, Labels, Labels], str] = {}
        self._keys: dict[str, str] = {}

    def _tagset(self, reading: Reading, extra: Labels = ()) -> str:
        key = (reading.device, reading.model, reading.user_labels, extra)
        found = self._tagsets.get(key)
        if found is None:
            if len(self._tagsets) > 100_000:
                self._tagsets.clear()
            tags = [("device", reading.device), ("model", reading.model), *reading.user_labels]
            # Sorted by key, as InfluxDB recommends; empty values are not allowed, so left out.
            found = "".join(
                f",{escape_key(k)}={escape_key(v)}" for k, v in sorted([*tags, *extra]) if v
            )
            self._tagsets[key] = found
        return found

    def _key(self, name: str) -> str:
        """`name=`, escaped; field names repeat every poll, so they are escaped once."""
        found = self._keys.get(name)
        if found is None:
            if len(self._keys) > 100_000:
                self._keys.clear()
            found = self._keys[name] = escape_key(name) + "="
        return found

    def lines(self, reading: Reading) -> list[str]:
        points: dict[tuple[str, Labels], dict[str, str]] = {}
        for metric, labels, value in reading.samples:
            plan = self.plans.get(metric)
            if plan is None:
                continue
            point = points.get((plan.measurement, () if plan.mode is not Mode.VALUE else labels))
            if point is None:
                tags = labels if plan.mode is Mode.VALUE else ()
                point = points[plan.measurement, tags] = {}
            if plan.mode is Mode.VALUE:
                text = plan.format(value)
                if text is not None:
                    point[plan.key] = text
            elif plan.mode is Mode.PER_LABEL:
                text = plan.format(value)
                if text is not None and labels:
                    point[self._key(plan.field + labels[0][1])] = text
            elif plan.mode is Mode.STATE:
                if value == 1.0 and labels:
                    point[plan.key] = quote_string(labels[0][1])
            else:
                for k, v in labels:
                    if v and k not in POINT_TAGS:
                        point[self._key(plan.field + k)] = quote_string(v)
        ts = timestamp(reading.time, self.precision)
        return [
            f"{measurement}{self._tagset(reading, tags)} "
            f"{','.join([k + v for k, v in fields.items()])} {ts}"
            for (measurement, tags), fields in points.items()
            if fields
        ]

    def encode(self, reading: Reading) -> bytes:
        """The reading's lines, each ending in a newline, UTF-8."""
        lines = self.lines(reading)
        return ("\n".join(lines) + "\n").encode() if lines else b""
