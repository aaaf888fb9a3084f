"""The ledger stage: readings pass through it on their way from the poller to the outputs.

`apply(reading)` feeds the ledger and returns the reading with the device's derived counter
samples added; it is the poller's stage, so every output sees them like any other sample.
Finished sessions become `lektrico_session` line-protocol points for the InfluxDB writer (`emit`,
one point per session, timestamped at its start) and, with every device's ledger state, go to
the store: a task hands the changes to one worker thread at least every second.

As an output it has `publish(reading)` (apply, result unused), `remove(device)` and `close()`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import orjson

from exporter.config.schema import Config
from exporter.outputs.influx import lines as influx
from exporter.reading import Reading

from .ledger import Ledger, Session
from .store import Batch, Store, StoreError, default_path, session_row
from .tariffs import build_tariffs

log = logging.getLogger("lektrico.sessions")
# Seconds from a change to its write: the store is never more than about this far behind.
# The writer sleeps while nothing changed, so an idle exporter does not wake for it.
FLUSH_INTERVAL = 0.5


def store_path(config: Config) -> str:
    return config.state.path or default_path()


# The lektrico_session point's fields and their InfluxDB types (docs/influxdb.md); its tags are
# device, model and the device's labels.
SESSION_MEASUREMENT = "session"
SESSION_FIELDS = {
    "energy_joules": "float",
    "charging_seconds": "float",
    "connected_seconds": "float",
    "peak_power_watts": "float",
    "phases": "int",
    "end_timestamp_seconds": "float",
    "cost": "float",
    "currency": "string",
    "tariff": "string",
    "anomalies": "string",
    "session_id": "int",
}


def session_line(s: Session, prefix: str = "lektrico", precision: str = "s") -> bytes:
    """One finished session as a line-protocol point (docs/influxdb.md, lektrico_session)."""
    tags = [("device", s.device), ("model", s.model), *sorted(s.labels.items())]
    tagset = "".join(
        f",{influx.escape_key(k)}={influx.escape_key(v)}" for k, v in sorted(tags) if v
    )
    fields: list[tuple[str, str | None]] = [
        ("energy_joules", influx.format_field(s.energy_wh * 3600.0, "float")),
        ("charging_seconds", influx.format_field(s.charging_seconds, "float")),
        ("connected_seconds", influx.format_field(s.connected_seconds, "float")),
        ("peak_power_watts", influx.format_field(s.peak_power_watts, "float")),
        ("phases", influx.format_field(s.phases, "int")),
        ("end_timestamp_seconds", influx.format_field(s.end or s.start, "float")),
        ("cost", influx.format_field(s.cost, "float")),
        ("currency", influx.quote_string(s.currency)),
        ("tariff", influx.quote_string(s.tariff)),
        ("anomalies", influx.quote_string(",".join(sorted(s.anomalies)))),
    ]
    if s.session_id is not None:
        fields.append(("session_id", influx.format_field(s.session_id, "int")))
    body = ",".join(f"{k}={v}" for k, v in fields if v is not None)
    name = f"{prefix}_{SESSION_MEASUREMENT}" if prefix else SESSION_MEASUREMENT
    measurement = influx.escape_measurement(name)
    ts = influx.timestamp(s.start, precision)
    return f"{measurement}{tagset} {body} {ts}\n".encode()


def state_json(state: dict[str, Any]) -> str:
    """json.dumps(state), ten times faster: every device's state is written after each poll.
    orjson refuses integers beyond 64 bits (json takes them: so does this, by json) and would
    write a NaN as null; a ledger's values come from readings, which hold finite values only."""
    try:
        return orjson.dumps(state).decode()
    except TypeError:
        return json.dumps(state)


class SessionsStage:
    def __init__(
        self,
        config: Config,
        emit: Callable[[bytes], None] | None = None,
        prefix: str = "lektrico",
        precision: str = "s",
    ) -> None:
        self.path = store_path(config)
        self.store = Store(self.path)
        self.ledger = Ledger(config.poll.interval, build_tariffs(config.tariffs))
        self.emit = emit
        self.prefix, self.precision = prefix, precision
        self._dirty: set[str] = set()
        self._sessions: dict[tuple[str, float], Session] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="state-store")
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # set when _dirty or _sessions gains something
        self._failing = False
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._own = {d.name: d.tariff for d in config.devices}
        self.ledger.interval = config.poll.interval
        self.ledger.tariffs = build_tariffs(config.tariffs)
        self.ledger.choice.clear()  # chosen again at each device's next reading

    def _choose(self, reading: Reading) -> None:
        if reading.device in self.ledger.choice:
            return
        rules = self.config.tariffs
        own = self._own.get(reading.device)
        name = rules.choose(own, dict(reading.user_labels)) if rules else own
        self.ledger.choice[reading.device] = name

    # ---- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Open the store and restore every device's state; StoreError (one line) if unusable."""
        self.store.open()
        try:
            self.ledger.restore(self.store.states())
        except (ValueError, KeyError, TypeError) as exc:
            self.store.close()
            raise StoreError(
                f"state database {self.path}: unreadable device state: {exc}"
            ) from None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self.open)
        restored = len(self.ledger.devices)
        log.info("state database %s: %d devices restored", self.path, restored)
        self._task = asyncio.create_task(self._flusher(), name="state-store")

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._changed.wait()
            await asyncio.sleep(FLUSH_INTERVAL)  # what changes meanwhile goes in the same write
            self._changed.clear()
            batch = self._take()
            if batch is None:
                continue
            try:
                await loop.run_in_executor(self._pool, self.store.write, batch)
            except Exception as exc:  # a full disk: keep the changes and try again
                self._giveback(batch)
                if not self._failing:
                    log.error("state database %s: write failed, retrying: %s", self.path, exc)
                self._failing = True
            else:
                if self._failing:
                    log.info("state database %s: writing again", self.path)
                self._failing = False

    def _take(self) -> Batch | None:
        if not self._dirty and not self._sessions:
            return None
        states = []
        for name in sorted(self._dirty):
            ledger = self.ledger.devices.get(name)
            if ledger is not None:
                # Made on the event loop, so each device's state is the one after a whole poll.
                states.append((name, state_json(ledger.state())))
        sessions = [session_row(s) for s in self._sessions.values()]
        self._dirty.clear()
        self._sessions.clear()
        return Batch(states, sessions)

    def _giveback(self, batch: Batch) -> None:
        self._dirty.update(name for name, _ in batch.states)
        self._changed.set()
        for row in batch.sessions:
            device, start = row[0], row[1]
            if (device, start) not in self._sessions:
                self._sessions[device, start] = Session.from_dict(json.loads(row[4]))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        batch = self._take()
        loop = asyncio.get_running_loop()
        if batch is not None:
            try:
                await loop.run_in_executor(self._pool, self.store.write, batch)
            except Exception as exc:
                log.error("state database %s: last write failed: %s", self.path, exc)
        await loop.run_in_executor(self._pool, self.store.close)
        self._pool.shutdown(wait=True)

    # ---- the stage -------------------------------------------------------------------------

    def apply(self, reading: Reading) -> Reading:
        self._choose(reading)
        result = self.ledger.feed(reading)
        self._dirty.add(reading.device)
        self._changed.set()
        for s in result.changed:
            self._sessions[s.device, s.start] = s
        if self.emit is not None:
            for s in result.finished:
                self.emit(session_line(s, self.prefix, self.precision))
        if not result.samples:
            return reading
        r = reading  # a new Reading with the derived samples: dataclasses.replace costs twice
        return Reading(
            r.device,
            r.user_labels,
            r.time,
            r.up,
            r.duration,
            r.model,
            r.samples + result.samples,
            r.reason,
            r.error,
        )

    # ---- as an output --------------------------------------------------------------------

    def publish(self, reading: Reading) -> None:
        self.apply(reading)

    def remove(self, device: str) -> None:
        self.ledger.remove(device)

    async def close(self) -> None:
        await self.stop()

    # ---- reading the records ---------------------------------------------------------------

    async def query(self, **filters: Any) -> list[Session]:
        """Sessions from the store, with the open ones as they are now (newer than the store)."""
        loop = asyncio.get_running_loop()
        stored = await loop.run_in_executor(self._pool, lambda: self.store.sessions(**filters))
        live = {(s.device, s.start): s for s in self.ledger.open_sessions()}
        out = []
        for s in stored:
            out.append(live.pop((s.device, s.start), s))
        return out
