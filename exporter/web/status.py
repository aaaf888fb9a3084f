"""What the status page shows: a row per device, kept up to date from the readings.

`StatusBoard` is an output like the others: it hears every reading (`publish`) and every removed
device (`remove`), and keeps for each device the few values a person looks at (state in words,
power, session energy, temperature, signal), when it last answered, since when it has been down,
and its last failures. A row is built once per reading, so `/api/devices` at 10,000 devices only
filters, sorts and slices prepared rows.

Everything here is data; `exporter.web.server` turns it into JSON and HTML (escaped there: device
strings are untrusted).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from exporter.catalogue import table as cat
from exporter.config.addresses import parse_endpoint
from exporter.device.poller import DeviceState
from exporter.reading import Labels, Reading, layout_of, samples_of

MAX_FAILURES = 20
MAX_PAGE = 500

STATE_WORDS: Mapping[str, str] = {
    "A": "Available (no car)",
    "B": "Car connected",
    "B_AUTH": "Waiting for authorisation",
    "B_PAUSE": "Paused",
    "B_SCHEDULER": "Paused by schedule",
    "C": "Charging",
    "D": "Charging (ventilation)",
    "E": "Error: no power to the car (state E)",
    "F": "Error: charger fault (state F)",
    "OTA": "Updating firmware",
    "LOCKED": "Locked",
}
CHARGING = frozenset({"C", "D"})

ERROR_WORDS: Mapping[str, str] = {
    "state_e_activated": "no power to the car (state E)",
    "overtemp": "overtemperature",
    "critical_temp": "critical temperature",
    "overcurrent": "overcurrent",
    "meter_fault": "meter fault",
    "voltage_error": "voltage out of range",
    "rcd_error": "residual current detected (RCD)",
    "rcd_test_error": "RCD self-test failed",
    "rcd_err_pin_error": "RCD error pin",
    "rcd_err6_pin_error": "RCD 6 mA error pin",
    "rcd_init_start_error": "RCD start-up failed",
    "rcd_init_end_error": "RCD start-up did not finish",
    "state_f_activated": "charger fault (state F)",
    "contactor_failure": "contactor failure",
    "cp_diode_failure": "control-pilot diode failure (check the cable and the car)",
    "undervoltage_error": "undervoltage",
    "overvoltage_error": "overvoltage",
    "state_machine_na_error": "state machine error",
}

LIMIT_WORDS: Mapping[str, str] = {
    "hardware": "the charger's hardware maximum",
    "install": "the installation current set by the installer",
    "user": "the user's current setting",
    "dynamic": "dynamic load management",
    "schedule": "the charging schedule",
    "em_offline": "the energy meter being offline (safe current)",
    "em": "the energy meter's load balancing",
    "ocpp": "the OCPP back end",
    "temperature": "temperature derating",
    "phase_switching": "phase switching in progress",
    "single_phase_disabled": "single-phase charging being disabled",
    "unknown": "a reason this exporter does not know",
}

# Why a poll failed (the poller's reasons), said for people, with what to check.
REASON_HINTS: Mapping[str, tuple[str, str]] = {
    "timeout": ("No answer in time", "is it powered and on the network? raise poll.timeout?"),
    "connect": ("Cannot connect", "check the address and port, and that the device is on"),
    "http": ("HTTP error", "check the address; a 401 means a wrong username or password"),
    "json": ("Not a device reply", "something else answers at this address (a router page?)"),
    "rpc": ("The device refused the request", "its firmware may not support this method"),
    "schema": ("Unexpected reply", "the firmware may be newer than this exporter knows"),
}


def explain(reason: str | None, message: str | None) -> str:
    """A failure in plain words, with what to check."""
    if reason is None:
        return ""
    words, hint = REASON_HINTS.get(reason, (reason, ""))
    text = message or ""
    if reason == "http" and "401" in text:
        words, hint = "Wrong or missing credentials (HTTP 401)", "check username and password"
    elif reason == "connect" and "refused" in text.lower():
        words = "Connection refused"
        hint = "the address answers but nothing listens on that port: check the port"
    return f"{words}: {hint}" if hint else words


@dataclass(frozen=True, slots=True)
class Failure:
    time: float
    reason: str
    message: str


@dataclass(slots=True)
class DeviceStatus:
    """What the page knows of one device, from its readings."""

    name: str
    labels: Labels = ()
    host: str = ""
    reading: Reading | None = None
    row: dict[str, Any] = field(default_factory=dict)
    last_success: float | None = None
    down_since: float | None = None
    # Made at the first failure: an empty deque is 0.6 KB, and most devices never fail.
    failures: deque[Failure] | None = None


_STATUS_INDEX = {"up": 1, "down": 2, "pending": 3}
Group = tuple[str, str] | None  # None: the whole fleet; else (label, value)


class StatusBoard:
    """Per-device status for the page and `/api/devices`; an output of the poller.

    Counts per fleet and per label value are kept up to date as readings arrive (a reading
    takes its device's old row out of them and puts its new one in), so the summary costs
    nothing per request, and the device names are kept sorted for the default view.
    """

    def __init__(self) -> None:
        self.devices: dict[str, DeviceStatus] = {}
        self._counts: dict[Group, list[float]] = {}
        self._by_name: list[str] | None = None
        self._hostless: set[str] = set()  # published before `sync` told their host

    # ---- output interface ----------------------------------------------------------------

    def publish(self, reading: Reading) -> None:
        st = self.devices.get(reading.device)
        if st is None:
            st = self.devices[reading.device] = DeviceStatus(reading.device)
            self._by_name = None
            self._hostless.add(reading.device)
        if st.row:
            self._count(st, -1)
        st.labels = reading.user_labels
        if reading.up:
            st.last_success = reading.time
            st.down_since = None
        else:
            if st.down_since is None:
                st.down_since = reading.time
            if st.failures is None:
                st.failures = deque(maxlen=MAX_FAILURES)
            st.failures.append(
                Failure(reading.time, reading.reason or "unknown", (reading.error or "")[:300])
            )
        st.reading = reading
        st.row = summarise(reading, st)
        self._count(st, 1)

    def remove(self, device: str) -> None:
        st = self.devices.pop(device, None)
        if st is not None and st.row:
            self._count(st, -1)
        self._by_name = None

    async def start(self) -> None:
        """Nothing to open: the board lives in memory."""

    async def close(self) -> None:
        self.devices.clear()
        self._counts.clear()

    # ---- what the page asks ----------------------------------------------------------------

    def sync(self, devices: Mapping[str, DeviceState]) -> None:
        """Know every configured device, those not polled yet as pending, and its host."""
        new = devices.keys() - self.devices.keys()
        for name in (*new, *self._hostless):
            dev = devices.get(name)
            if dev is None:
                continue
            st = self.devices.get(dev.name)
            if st is None:
                st = self.devices[dev.name] = DeviceStatus(dev.name, dev.target.labels)
                self._by_name = None
            if not st.host:
                st.host = parse_endpoint(dev.target.base_url).address
                if st.row:
                    self._count(st, -1)
                else:
                    st.row = pending_row(dev.name, dev.target.labels, dev.target.model)
                st.row["host"] = st.host
                st.row["search"] += " " + st.host.lower()
                self._count(st, 1)
        self._hostless.clear()

    def rows(self) -> list[dict[str, Any]]:
        return [st.row for st in self.devices.values()]

    def page(self, q: Query) -> tuple[int, list[dict[str, Any]]]:
        """The rows `q` asks for, and how many matched."""
        if q.is_default_view():
            if self._by_name is None:
                self._by_name = sorted(self.devices, key=str.lower)
            names = self._by_name[::-1] if q.descending else self._by_name
            page = names[q.offset : q.offset + q.limit]
            return len(names), [self.devices[n].row for n in page]
        return select(self.rows(), q)

    def summary(self) -> dict[str, Any]:
        """Fleet counts, and the same per value of every label."""
        by_label: dict[str, dict[str, dict[str, float]]] = {}
        fleet: dict[str, float] = _bucket(self._counts.get(None))
        for group, counts in self._counts.items():
            if group is not None and counts[0] > 0:
                by_label.setdefault(group[0], {})[group[1]] = _bucket(counts)
        return {**fleet, "by_label": by_label}

    def _count(self, st: DeviceStatus, sign: int) -> None:
        row = st.row
        index = _STATUS_INDEX[row["status"]]
        charging = 1 if row["charging"] else 0
        power = row["power_w"] if row["power_w"] is not None and not row["meter"] else 0.0
        for group in (None, *row["label_items"]):
            counts = self._counts.get(group)
            if counts is None:
                counts = self._counts[group] = [0, 0, 0, 0, 0, 0.0]
            counts[0] += sign
            counts[index] += sign
            counts[4] += sign * charging
            counts[5] += sign * power


def _bucket(counts: list[float] | None) -> dict[str, float]:
    c = counts or [0, 0, 0, 0, 0, 0.0]
    return {
        "configured": int(c[0]),
        "up": int(c[1]),
        "down": int(c[2]),
        "pending": int(c[3]),
        "charging": int(c[4]),
        "power_w": round(c[5], 1) if c[0] else 0.0,
    }


def summarise(reading: Reading, st: DeviceStatus) -> dict[str, Any]:
    """The row of one device: only what the table shows, in display units."""
    info: dict[str, str] = {}
    state = None
    power = meter_power = None
    session_j = temperature = rssi = None
    samples = reading.samples
    layout = layout_of(samples)  # the few metrics shown, not a loop over a hundred samples
    for s in samples_of(samples, layout, cat.IDENTITY_INFO):
        info = dict(s.labels)
    for s in samples_of(samples, layout, "lektrico_charger_state"):
        if s.value == 1:
            state = s.labels[0][1]
    for s in samples_of(samples, layout, "lektrico_power_watts"):
        power = s.value
    for s in samples_of(samples, layout, "lektrico_meter_power_watts"):
        meter_power = (meter_power or 0.0) + s.value
    for s in samples_of(samples, layout, "lektrico_session_energy_joules"):
        session_j = s.value
    for s in samples_of(samples, layout, "lektrico_temperature_celsius"):
        temperature = s.value
    for s in samples_of(samples, layout, "lektrico_wifi_signal_dbm"):
        rssi = s.value
    active = [
        s.labels[0][1] for s in samples_of(samples, layout, "lektrico_error_active") if s.value == 1
    ]
    if power is None:
        power = meter_power
    kwh = None if session_j is None else round(session_j / cat.KWH, 3)
    if not reading.up:
        words = "Down"
    elif active:
        words = "Error: " + ", ".join(ERROR_WORDS.get(e, e) for e in active)
    elif state is not None:
        words = STATE_WORDS.get(state, f"State {state}")
    else:
        words = "Up"
    labels = dict(reading.user_labels)
    model = info.get("model") or reading.model
    firmware = info.get("fw_version", "")
    alias = info.get("alias", "")
    error_text = explain(reading.reason, reading.error) if not reading.up else ""
    search = " ".join((reading.device, model, firmware, alias, st.host, words, error_text))
    return {
        "search": (search + " " + " ".join(labels.values())).lower(),
        "name": reading.device,
        "host": st.host,
        "labels": labels,
        "labels_text": labels_text(reading.user_labels),
        "label_items": reading.user_labels,
        "meter": model in ("em", "3em"),
        "model": model,
        "firmware": firmware,
        "alias": alias,
        "status": "up" if reading.up else "down",
        "state": state,
        "state_text": words,
        "charging": state in CHARGING if reading.up else False,
        "power_w": power if reading.up else None,
        "session_kwh": kwh if reading.up else None,
        "temperature_c": temperature if reading.up else None,
        "wifi_dbm": rssi if reading.up else None,
        "active_errors": active,
        "last_poll": reading.time,
        "last_success": st.last_success,
        "down_since": st.down_since,
        "error": reading.error or "" if not reading.up else "",
        "error_text": error_text,
    }


def labels_text(labels: Labels) -> str | None:
    """The labels as one sortable text, "site=home, owner=ana"; None (sorted last) for none."""
    return ", ".join(f"{k}={v}" for k, v in labels) or None


def pending_row(name: str, labels: Labels, model: str | None) -> dict[str, Any]:
    return {
        "search": " ".join((name, *dict(labels).values())).lower(),
        "name": name,
        "labels": dict(labels),
        "labels_text": labels_text(labels),
        "label_items": labels,
        "meter": model in ("em", "3em"),
        "model": model or "unknown",
        "firmware": "",
        "alias": "",
        "status": "pending",
        "state": None,
        "state_text": "Not polled yet",
        "charging": False,
        "power_w": None,
        "session_kwh": None,
        "temperature_c": None,
        "wifi_dbm": None,
        "active_errors": [],
        "last_poll": None,
        "last_success": None,
        "down_since": None,
        "error": "",
        "error_text": "",
    }


# What /api/devices says of a device: stable, documented names (docs/deployment.md).
PUBLIC_FIELDS = (
    "name",
    "host",
    "labels",
    "model",
    "firmware",
    "alias",
    "status",
    "state",
    "state_text",
    "charging",
    "power_w",
    "session_kwh",
    "temperature_c",
    "wifi_dbm",
    "active_errors",
    "last_poll",
    "last_success",
    "down_since",
    "error",
    "error_text",
)
TEXT_COLUMNS = frozenset(
    {"name", "labels_text", "model", "firmware", "host", "status", "state_text", "error_text"}
)
SORTABLE = (
    "name",
    "labels_text",
    "model",
    "firmware",
    "host",
    "status",
    "state_text",
    "power_w",
    "session_kwh",
    "temperature_c",
    "wifi_dbm",
    "last_success",
    "down_since",
    "error_text",
)


@dataclass(frozen=True)
class Query:
    """What `/api/devices` was asked: filters, order and page."""

    text: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    state: str = ""  # a state code (C, A, ...), "charging" or "error"
    status: str = ""  # up, down, pending
    sort: str = "name"
    descending: bool = False
    offset: int = 0
    limit: int = 100

    def is_default_view(self) -> bool:
        """No filter, sorted by name: answered from the sorted names alone."""
        return not (self.text or self.labels or self.state or self.status) and self.sort == "name"

    @classmethod
    def parse(cls, params: Mapping[str, str], label_params: Sequence[str]) -> Query:
        """From query parameters; ValueError names the parameter that is wrong."""
        labels = []
        for item in label_params:
            key, sep, value = item.partition(":")
            if not sep or not key:
                raise ValueError("label must be NAME:VALUE")
            labels.append((key, value))
        sort = params.get("sort", "name")
        if sort not in SORTABLE:
            raise ValueError(f"sort must be one of {', '.join(SORTABLE)}")
        status = params.get("status", "")
        if status not in ("", "up", "down", "pending"):
            raise ValueError("status must be up, down or pending")
        try:
            offset = int(params.get("offset", "0"))
            limit = int(params.get("limit", "100"))
        except ValueError:
            raise ValueError("offset and limit must be integers") from None
        if offset < 0 or not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"offset must be >= 0 and limit 1-{MAX_PAGE}")
        return cls(
            text=params.get("q", "")[:200].lower(),
            labels=tuple(labels[:10]),
            state=params.get("state", "")[:32],
            status=status,
            sort=sort,
            descending=params.get("order", "asc") == "desc",
            offset=offset,
            limit=limit,
        )


def select(rows: list[dict[str, Any]], q: Query) -> tuple[int, list[dict[str, Any]]]:
    """The rows matching `q`, sorted (empty cells last), and the page asked for; with the
    total that matched. Each filter is one pass of a comprehension: 10,000 rows in a few ms."""
    if q.status:
        rows = [r for r in rows if r["status"] == q.status]
    if q.state == "charging":
        rows = [r for r in rows if r["charging"]]
    elif q.state == "error":
        rows = [r for r in rows if r["active_errors"]]
    elif q.state:
        rows = [r for r in rows if r["state"] == q.state]
    for label, value in q.labels:
        rows = [r for r in rows if r["labels"].get(label) == value]
    if q.text:
        rows = [r for r in rows if q.text in r["search"]]
    column = q.sort
    filled = [r for r in rows if r[column] is not None]
    empty = [r for r in rows if r[column] is None] if len(filled) < len(rows) else []
    if column in TEXT_COLUMNS:
        filled.sort(key=lambda r: r[column].lower(), reverse=q.descending)
    else:
        filled.sort(key=itemgetter(column), reverse=q.descending)
    found = filled + empty
    return len(found), found[q.offset : q.offset + q.limit]
