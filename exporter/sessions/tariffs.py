"""Tariffs: the `tariffs:` config section and the pricing of energy deltas.

A tariff has a currency, an IANA time zone and periods, each priced per kWh and in force on some
weekdays between two local times:

    tariffs:
      default: home                  # for devices that choose none
      by_label:                      # first match wins, after a device's own `tariff:`
        - match: {car: company}
          tariff: employer
      table:
        home:
          currency: EUR
          timezone: Europe/Bucharest
          periods:
            - {name: night, price: 0.11, from: "22:00", to: "07:00"}
            - {name: day, price: 0.24}             # every day, all day: what night leaves
        employer:
          currency: EUR
          timezone: Europe/Bucharest
          periods: [{name: flat, price: 0.30}]

A period matches a local time when its weekday is in `days` (default every day) and the time is
in [from, to); `to` before `from` wraps past midnight (on the same listed weekdays: a Friday
22:00-07:00 period covers Friday 22:00-24:00 and Friday 00:00-07:00). The first matching period
wins, and every minute of the week must be matched by one.

An energy delta between two polls is spread evenly over the time between them and split at every
period boundary, local midnight (so at month ends) and DST change, each piece priced at the
period in force and attributed to the local month it falls in.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from exporter.config.loader import FieldProblem
from exporter.config.model import Field, Section, field_validator, model_validator

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MINUTES_A_DAY = 1440


_Section = Section


def _minutes(text: str) -> int:
    """'HH:MM' → minutes after midnight; '24:00' is the end of the day."""
    hours, sep, mins = text.strip().partition(":")
    if not sep or not hours.isdigit() or not mins.isdigit() or len(mins) != 2:
        raise ValueError(f"{text!r} is not a time like 07:30")
    value = int(hours) * 60 + int(mins)
    if int(mins) > 59 or value > MINUTES_A_DAY:
        raise ValueError(f"{text!r} is not a time between 00:00 and 24:00")
    return value


class PeriodConfig(_Section):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    price: Annotated[float, Field(ge=0, allow_inf_nan=False)]  # currency per kWh
    days: list[str] = list(WEEKDAYS)
    start: str = Field("00:00", alias="from")
    end: str = Field("24:00", alias="to")

    @field_validator("days")
    @classmethod
    def _check_days(cls, days: list[str]) -> list[str]:
        out = []
        for day in days:
            key = day.strip().lower()[:3]
            if key not in WEEKDAYS:
                raise ValueError(f"{day!r} is not a weekday (mon, tue, ... sun)")
            out.append(key)
        if not out:
            raise ValueError("lists no weekday")
        return out

    @field_validator("start", "end")
    @classmethod
    def _check_time(cls, text: str) -> str:
        _minutes(text)
        return text.strip()

    @model_validator(mode="after")
    def _check_span(self) -> PeriodConfig:
        if _minutes(self.start) % MINUTES_A_DAY == _minutes(self.end) % MINUTES_A_DAY and not (
            _minutes(self.start) == 0 and _minutes(self.end) == MINUTES_A_DAY
        ):
            raise FieldProblem(("to",), "equals `from`: the period would be empty")
        return self


class TariffConfig(_Section):
    currency: Annotated[str, Field(min_length=1, max_length=16)]
    timezone: str = "UTC"
    periods: Annotated[list[PeriodConfig], Field(min_length=1)]

    @field_validator("timezone")
    @classmethod
    def _check_zone(cls, name: str) -> str:
        name = name.strip()
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            hint = "an IANA time zone like Europe/Bucharest"
            if name not in available_timezones():
                raise ValueError(f"unknown time zone {name!r}; give {hint}") from None
        return name

    @model_validator(mode="after")
    def _check_coverage(self) -> TariffConfig:
        hole = Tariff("", self).first_uncovered()
        if hole is not None:
            day, minute = hole
            when = f"{DAY_NAMES[day]} {minute // 60:02d}:{minute % 60:02d}"
            raise FieldProblem(("periods",), f"no period covers {when}; add a catch-all period")
        return self


class LabelRule(_Section):
    match: Annotated[dict[str, str], Field(min_length=1)]
    tariff: str


class TariffsConfig(_Section):
    default: str | None = None
    by_label: list[LabelRule] = []
    table: dict[str, TariffConfig] = {}

    @model_validator(mode="after")
    def _check_names(self) -> TariffsConfig:
        if self.default is not None and self.default not in self.table:
            raise FieldProblem(("default",), f"unknown tariff {self.default!r}{self._known()}")
        for i, rule in enumerate(self.by_label):
            if rule.tariff not in self.table:
                message = f"unknown tariff {rule.tariff!r}{self._known()}"
                raise FieldProblem(("by_label", i, "tariff"), message)
        return self

    def _known(self) -> str:
        return f"; known: {', '.join(self.table)}" if self.table else "; `table` defines none"

    def choose(self, own: str | None, labels: dict[str, str]) -> str | None:
        """The tariff name for a device: its own, else the first label rule, else the default."""
        if own is not None:
            return own
        for rule in self.by_label:
            if all(labels.get(k) == v for k, v in rule.match.items()):
                return rule.tariff
        return self.default


@dataclass(frozen=True)
class Piece:
    """Part of an energy delta: the tariff period it was charged in and the local month."""

    period: str  # "" without a tariff
    month: str  # YYYY-MM, local to the tariff's zone (UTC without a tariff)
    wh: float
    cost: float


class Tariff:
    """A configured tariff, ready to split and price energy deltas."""

    def __init__(self, name: str, config: TariffConfig | None) -> None:
        self.name = name
        self.currency = config.currency if config else ""
        self.zone = ZoneInfo(config.timezone if config else "UTC")
        self._periods: list[tuple[str, float, frozenset[int], int, int]] = []
        for p in config.periods if config else ():
            days = frozenset(WEEKDAYS.index(d) for d in p.days)
            self._periods.append((p.name, p.price, days, _minutes(p.start), _minutes(p.end)))
        if not self._periods:
            self._periods.append(("", 0.0, frozenset(range(7)), 0, MINUTES_A_DAY))
        self.period_names = tuple(dict.fromkeys(name for name, *_ in self._periods))
        self._edges = sorted({m % MINUTES_A_DAY for *_, a, b in self._periods for m in (a, b)})
        self._day = functools.lru_cache(maxsize=64)(self._segments)

    def period_at(self, weekday: int, minute: int) -> tuple[str, float]:
        for name, price, days, start, end in self._periods:
            if weekday not in days:
                continue
            inside = start <= minute < end if start < end else (minute >= start or minute < end)
            if inside:
                return name, price
        raise LookupError("uncovered")  # excluded by TariffConfig's coverage check

    def first_uncovered(self) -> tuple[int, int] | None:
        for day in range(7):
            for minute in range(MINUTES_A_DAY):
                try:
                    self.period_at(day, minute)
                except LookupError:
                    return day, minute
        return None

    def _local(self, day: date, minute: int, fold: int) -> float:
        hour, minute = divmod(minute, 60)
        return datetime(
            day.year, day.month, day.day, hour, minute, tzinfo=self.zone, fold=fold
        ).timestamp()

    def _segments(self, day: date) -> tuple[list[float], list[tuple[str, float, str]]]:
        """One local day as (starts, classes): piece i starts at starts[i] (unix) and runs to
        the next start (the last one to the next local midnight)."""
        start = datetime(day.year, day.month, day.day, tzinfo=self.zone).timestamp()
        nxt = day + timedelta(days=1)
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=self.zone).timestamp()
        # Every local half hour (where DST changes happen) and period edge, in both folds of
        # an ambiguous time: each piece between them has one UTC offset and one period.
        cuts = {start, end}
        for minute in {*range(0, MINUTES_A_DAY, 30), *self._edges}:
            for fold in (0, 1):
                t = self._local(day, minute, fold)
                if start < t < end:
                    cuts.add(t)
        edges = sorted(cuts)
        starts: list[float] = []
        classes: list[tuple[str, float, str]] = []
        for a, b in itertools.pairwise(edges):
            local = datetime.fromtimestamp((a + b) / 2, self.zone)
            name, price = self.period_at(local.weekday(), local.hour * 60 + local.minute)
            cls = (name, price, f"{local.year:04d}-{local.month:02d}")
            if not classes or classes[-1] != cls:
                starts.append(a)
                classes.append(cls)
        starts.append(end)
        return starts, classes

    def split(self, wh: float, t0: float, t1: float) -> list[Piece]:
        """`wh` charged evenly between unix times t0 and t1, by period and month."""
        if t1 <= t0 or not math.isfinite(t1 - t0):
            t0 = t1 = max(t0, t1)
        if t1 == t0:
            name, price, month = self._class_at(t1)
            return [Piece(name, month, wh, wh / 1000.0 * price)]
        rate = wh / (t1 - t0)
        out: dict[tuple[str, str], list[float]] = {}
        day = datetime.fromtimestamp(t0, self.zone).date()
        t = t0
        while t < t1:
            starts, classes = self._day(day)
            i = max(bisect.bisect_right(starts, t) - 1, 0)
            while i < len(classes) and t < t1:
                b = min(starts[i + 1], t1)
                if b > t:
                    name, price, month = classes[i]
                    part = out.setdefault((name, month), [0.0, 0.0])
                    part[0] += rate * (b - t)
                    part[1] += rate * (b - t) / 1000.0 * price
                    t = b
                i += 1
            day += timedelta(days=1)
        return [Piece(name, month, e, c) for (name, month), (e, c) in out.items()]

    def _class_at(self, t: float) -> tuple[str, float, str]:
        local = datetime.fromtimestamp(t, self.zone)
        name, price = self.period_at(local.weekday(), local.hour * 60 + local.minute)
        return name, price, f"{local.year:04d}-{local.month:02d}"


NO_TARIFF = Tariff("", None)


def build_tariffs(config: TariffsConfig | None) -> dict[str, Tariff]:
    if config is None:
        return {}
    return {name: Tariff(name, t) for name, t in config.table.items()}


def month_of(t: float, zone: Any) -> str:
    local = datetime.fromtimestamp(t, zone)
    return f"{local.year:04d}-{local.month:02d}"
