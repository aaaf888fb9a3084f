"""The fleet poller: when to ask which device what, and what a poll produced.

- Each device is polled every `interval`, start times spread over the interval (by a hash of the
  name, stable across reloads), at most `concurrency` polls in flight, each bounded by `timeout`
  (a poll waiting for a slot waits outside its timeout). The scheduler wakes at most every TICK.
- A poll never overlaps the previous poll of the same device; /probe shares the poll in flight.
- Up means the main method (Charger_info.Get, Meter_info.Get) answered. Any other method that
  fails, in any way, costs only its own values and counts in lektrico_method_errors_total; one
  the device does not have (lektrico_method_supported 0) is not asked again before the next
  identity refresh.
- Identification as the vendor's client does it: Device_id.Get, then Charger_config.Get or
  M2w_config.Get, then Sw_version.Get (Device_info.Get where Device_id.Get is missing). Again
  every `identity_interval`, and at once when the main reply's fw_version or device_id changes
  or the main method fails in a way that suggests another kind of unit; a new unit at the
  address starts afresh, so a reading never mixes two units.
- Request economy: the main method every poll; Active_errors only when the charger says it has
  active errors; counters, currents, Wi-Fi and configuration every `slow_interval` (at most two
  a poll), and those that matter only when a switch is on (schedule, energy management) or that
  the main reply already carries, once per identity interval. A device's first poll sends at
  most FIRST_POLL_REQUESTS (8 for a charger, 5 for a meter), the slow methods left over
  following two a poll (two a poll from the start if the poller is busy or the poll follows a
  failure); all again, two a poll, when a device is back after failures; counters again when
  the session changes. While the scheduler is behind (polls start more than LAG_LIMIT late:
  the exporter is short of CPU or poll slots, as when thousands of devices start at once on a
  slow machine) slow methods wait, so the main readings stay on time; a device whose slow
  methods waited a whole `slow_interval` asks one anyway.
- One connection a poll, closed at its end: nothing idle is kept on the devices.
- A device that keeps failing is polled less often (exponential backoff up to `max_backoff`),
  and its `lektrico_up 0` is republished at every attempt.
Every poll ends in one Reading, handed to the output sinks; outputs never call devices. A
configured device's reading passes the stage first (the session ledger, adding its derived
samples), and what the stage returns is what the sinks get and the device keeps as its last.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import math
import time
import zlib
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.catalogue import table as cat
from exporter.catalogue.selfmetrics import SelfMetrics
from exporter.catalogue.table import Cadence, Model
from exporter.config.addresses import parse_endpoint
from exporter.device.client import DeviceClient, MethodUnknown, PollError
from exporter.device.http import HttpClient
from exporter.device.normalise import DeviceReplies
from exporter.reading import Labels, Reading, Sample, label_pair, shared_sample

log = logging.getLogger("lektrico.poller")
Sink = Callable[[Reading], None]
Stage = Callable[[Reading], Reading]
MAX_SLOW_PER_POLL = 2
# Requests a device's first poll may send, identification included (the vendor's client
# sends 5 or 6 for a first reading); the slow methods left over follow, MAX_SLOW_PER_POLL a poll.
FIRST_POLL_REQUESTS = {cat.CHARGER: 8, cat.METER: 5}
# The scheduler wakes at most this often (s), and starts every poll due by then together. A
# tenth of a second: at 667 polls a second (10,000 devices at 15 s) a tick starts about 67
# polls at once, and their connections, requests and replies share the loop's passes and the
# kernel's event batches, where 20 ms ticks of 13 polls each cost 30 % more CPU a poll
# (bench.pollcost, 2,000 devices at 3 s: 0.375-0.386 against 0.250-0.291 ms). Longer ticks
# saved no more. A poll then starts up to 0.1 s late, nothing against an interval of seconds.
TICK = 0.1
LAG_LIMIT = 1.0  # s: a poll starting later than this after it was due means the poller is behind
HEALTH_ONLY = frozenset({cat.Group.HEALTH})
HEALTH_AND_LIVE = frozenset({cat.Group.HEALTH, cat.Group.LIVE})


@dataclass(frozen=True)
class Target:
    """A device to poll, as the poller needs it (built from the config)."""

    name: str
    base_url: str
    labels: Labels = ()
    timeout: float | None = None
    model: str | None = None
    # The Authorization header's value (HTTP basic auth); never shown in a repr or a log.
    auth: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class PollSettings:
    interval: float = 15.0
    timeout: float = 5.0
    concurrency: int = 64
    slow_interval: float = 600.0
    identity_interval: float = 3600.0
    max_backoff: float = 300.0


@dataclass
class DeviceState:
    target: Target
    client: DeviceClient
    model: Model | None = None
    replies: DeviceReplies = field(default_factory=DeviceReplies)
    fetched: dict[str, float] = field(default_factory=dict)
    unsupported: set[str] = field(default_factory=set)  # not asked until the identity refresh
    supported: dict[str, bool] = field(default_factory=dict)  # lektrico_method_supported
    method_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    method_samples: tuple[tuple[Sample, ...], tuple[Sample, ...]] | None = None
    device_id: str | None = None  # as last identified
    reidentified: bool = False  # identified again after a main failure, in this run of them
    last_success: float | None = None
    failures: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    error_samples: tuple[Sample, ...] | None = None  # lektrico_poll_errors_total, as of `errors`
    reading: Reading | None = None
    inflight: asyncio.Task[Reading] | None = None
    current_method: str | None = None
    queued: bool = False  # a scheduled poll waits for a free slot
    deferred_since: float | None = None  # slow methods due, waiting while the poller is behind

    @property
    def name(self) -> str:
        return self.target.name


def spread(name: str, interval: float) -> float:
    """A stable offset in [0, interval) so a fleet's polls are not all in the same millisecond."""
    return (zlib.crc32(name.encode()) / 2**32) * interval


def pool_limit(concurrency: int) -> int:
    """Connections a poller with this many polls in flight may open at once."""
    return max(concurrency * 2, 100)


def new_http(concurrency: int, limit: int | None = None) -> HttpClient:
    # One connection a request, closed when its reply is in: a charger's small HTTP server
    # keeps no idle socket for us, and the exporter keeps no idle connection per device.
    return HttpClient(pool_limit(concurrency) if limit is None else limit)


@dataclass
class _Poll:
    """What one poll gathered so far."""

    now: float  # monotonic time the poll started
    fresh: dict[str, dict[str, Any]] = field(default_factory=dict)
    # When each method was asked; kept only if the poll succeeds, because a failed poll's
    # replies are thrown away and must be asked for again next time.
    fetched: dict[str, float] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)  # non-main methods that failed this poll
    main_ok: bool = False
    identified: bool = False


class DevicePoller:
    """Polls one device at a time: the request logic, without any scheduling."""

    def __init__(self, settings: PollSettings, metrics: SelfMetrics) -> None:
        self.settings = settings
        self.metrics = metrics

    async def poll(
        self,
        st: DeviceState,
        timeout: float | None = None,
        busy: bool = False,
        behind: bool = False,
    ) -> Reading:
        """Poll one device; never raises (a failure is a Reading with up 0). `busy` (the fleet
        is short of poll slots) makes a first poll leave the slow methods to later polls;
        `behind` (polls start late) makes every poll leave them, up to a slow interval."""
        budget = timeout if timeout is not None else (st.target.timeout or self.settings.timeout)
        wall, t0 = time.time(), time.monotonic()
        requests_before = st.client.requests
        ctx = _Poll(t0)
        st.current_method = None
        failure: PollError | None = None
        try:
            async with asyncio.timeout(budget):
                await self._collect(st, ctx, busy, behind)
        except PollError as exc:
            failure = exc
        except TimeoutError:
            if ctx.main_ok and st.current_method is not None:
                # The main method answered: a method after it that runs out of time costs
                # only its own values, and is not asked again before it is due.
                self._method_failed(st, ctx, st.current_method, "timeout")
            else:
                failure = PollError("timeout", f"no reply within {budget:g}s", st.current_method)
        except Exception as exc:  # a device must never take the poller down
            log.exception("unexpected error polling %s", st.name)
            failure = PollError("schema", f"unexpected {type(exc).__name__}", st.current_method)
        duration = time.monotonic() - t0
        self.metrics.requests.inc(st.client.requests - requests_before)
        if failure is None:
            st.fetched.update(ctx.fetched)
            self._succeeded(st, ctx, wall)
        else:
            if ctx.identified:
                # What an identification in a failing poll learnt (every method "unknown" on
                # a device answering nothing right) is checked again at the next good poll.
                st.fetched.pop("identity", None)
            self._failed(st, failure)
        reading = self.reading_of(st, wall, duration, failure)
        st.reading = reading
        return reading

    async def _get(self, st: DeviceState, method: str) -> dict[str, Any]:
        st.current_method = method
        return st.replies.clean(await st.client.get(method), method)

    async def _collect(self, st: DeviceState, ctx: _Poll, busy: bool, behind: bool) -> None:
        # A device's first poll fetches slow methods up to its request budget, so a new device
        # shows most of its values at once; not when the fleet is busy (an exporter starting
        # on thousands of devices must not send them all a burst), and not after a failed
        # poll: a recovering fleet must not bring a burst of requests back with it, and a
        # device too slow to answer many requests within the timeout still comes up (its
        # slow methods follow, MAX_SLOW_PER_POLL a poll).
        first = st.last_success is None and st.failures == 0 and not busy and not behind
        requests_before = st.client.requests
        if st.model is None:
            await self._identify(st, ctx)
        reply = await self._main(st, ctx)
        assert st.model is not None
        main = cat.MAIN_METHOD[st.model.kind]
        previous = st.replies.get(main)
        new_firmware = _changed(previous, reply, "fw_version")
        if not ctx.identified and (
            ctx.now - st.fetched.get("identity", -math.inf) >= self.settings.identity_interval
            or new_firmware
            or _changed({"device_id": st.device_id}, reply, "device_id")
        ):
            kind = st.model.kind
            await self._identify(st, ctx)
            if new_firmware:  # what it has may have changed: every slow method is due again
                self._slow_due_again(st)
            if st.model.kind != kind:  # another kind of unit answered the old main method
                reply = await self._main(st, ctx)
                main = cat.MAIN_METHOD[st.model.kind]
        if st.model.kind == cat.CHARGER:
            await self._errors(st, ctx, reply)
            session = st.replies.get(main).get("session_id")
            if session is not None and session != reply.get("session_id"):
                st.fetched.pop(cat.COUNTERS_CONFIG, None)
        if st.failures > 0 and st.last_success is not None:
            # Back after failures (a reboot, a firmware update, a settings change on the app):
            # every slow method is due again, and comes MAX_SLOW_PER_POLL a poll.
            self._slow_due_again(st)
        due = self._slow_due(st, ctx)
        if first:
            spent = st.client.requests - requests_before
            due = due[: max(0, FIRST_POLL_REQUESTS[st.model.kind] - spent)]
        elif behind and due:
            # Extra requests now would make every poll later still: they wait until the
            # poller keeps up, but no longer than a slow interval (an exporter that is always
            # behind still reads its devices' settings, one method a poll).
            if st.deferred_since is None:
                st.deferred_since = ctx.now
            if ctx.now - st.deferred_since < self.settings.slow_interval:
                due = []
            else:
                due, st.deferred_since = due[:1], None
        else:
            st.deferred_since = None
            due = due[:MAX_SLOW_PER_POLL]
        for method in due:
            await self._optional(st, ctx, method)

    async def _main(self, st: DeviceState, ctx: _Poll) -> dict[str, Any]:
        assert st.model is not None
        main = cat.MAIN_METHOD[st.model.kind]
        try:
            reply = await self._get(st, main)
            st.replies.check_main(main, reply)
        except PollError as exc:
            # An unknown method or a reply without the main values may mean another kind of
            # unit at this address: identify it at once (once in a run of failures).
            other_kind = isinstance(exc, MethodUnknown) or exc.reason == "schema"
            if not other_kind or ctx.identified or st.reidentified:
                raise
            st.reidentified = True
            kind = st.model.kind
            await self._identify(st, ctx)
            if st.model.kind == kind:
                raise
            return await self._main(st, ctx)
        if st.supported.get(main) is not True:  # else the method samples stay as they are
            st.supported[main] = True
            st.method_samples = None
        ctx.fresh[main] = reply
        ctx.main_ok = True
        return reply

    async def _identify(self, st: DeviceState, ctx: _Poll) -> None:
        """Identify as the vendor's client does: Device_id.Get (Device_info.Get on firmware
        without it), then the kind's config method (serial, board revision), Sw_version.Get.
        A device_id or kind other than before is another unit: nothing of the old one stays."""
        ctx.identified = True
        ctx.fetched["identity"] = ctx.now
        st.unsupported.clear()  # asked again once per identity refresh: firmware may be new
        device_id = None
        for method in (cat.DEVICE_ID_METHOD, cat.DEVICE_INFO_METHOD):
            reply = await self._optional(st, ctx, method)
            found = reply.get("device_id") if reply is not None else None
            if isinstance(found, str) and found.strip():
                device_id = found.strip()
                break
        name = cat.model_from_device_id(device_id)
        if name == "unknown" and st.target.model:
            name = st.target.model
        if device_id is None and st.model is not None:
            name = st.model.name  # nothing learned: keep what was known
        model = cat.MODELS[name]
        swapped = device_id is not None and st.device_id not in (None, device_id)
        if swapped or (st.model is not None and model.kind != st.model.kind):
            log.info(
                "device %s is another unit now (%s, %s): identity and replies read afresh",
                st.name,
                device_id,
                model.name,
            )
            self._forget(st, ctx)
        if device_id is not None:
            st.device_id = device_id
        st.model = model
        for method in cat.IDENTITY_METHODS[model.kind]:
            await self._optional(st, ctx, method)

    def _forget(self, st: DeviceState, ctx: _Poll) -> None:
        """Drop everything read from the unit that was at this address before."""
        keep = {cat.DEVICE_ID_METHOD, cat.DEVICE_INFO_METHOD}
        ctx.fresh = {m: r for m, r in ctx.fresh.items() if m in keep}
        ctx.main_ok = False
        st.replies.forget()
        st.fetched = {}
        st.supported = {m: v for m, v in st.supported.items() if m in keep}
        st.method_samples = None

    async def _optional(self, st: DeviceState, ctx: _Poll, method: str) -> dict[str, Any] | None:
        """Ask a method other than the main one: any failure costs only its values. A method
        the device does not have is remembered and not asked until the next identity refresh;
        a device that cannot be reached fails the poll while the main method has not answered."""
        ctx.fetched[method] = ctx.now
        try:
            reply = await self._get(st, method)
        except MethodUnknown:
            st.unsupported.add(method)
            if st.supported.get(method) is not False:
                st.supported[method] = False
            self._method_failed(st, ctx, method, "unsupported")
            return None
        except PollError as exc:
            if exc.reason == "connect" and not ctx.main_ok:
                raise
            self._method_failed(st, ctx, method, exc.reason)
            return None
        if st.supported.get(method) is not True:
            st.supported[method] = True
            st.method_samples = None
        ctx.fresh[method] = reply
        ctx.failed.discard(method)
        return reply

    def _method_failed(self, st: DeviceState, ctx: _Poll, method: str, reason: str) -> None:
        st.method_errors[method, reason] += 1
        st.method_samples = None
        ctx.fetched[method] = ctx.now
        ctx.fresh.pop(method, None)
        ctx.failed.add(method)

    async def _errors(self, st: DeviceState, ctx: _Poll, info: dict[str, Any]) -> None:
        if st.replies.switch(info, "has_active_errors") is False:
            ctx.fresh[cat.ACTIVE_ERRORS] = st.replies.errors_inactive()
        elif cat.ACTIVE_ERRORS not in st.unsupported:
            await self._optional(st, ctx, cat.ACTIVE_ERRORS)

    def _slow_due_again(self, st: DeviceState) -> None:
        assert st.model is not None
        for m in cat.methods_for(st.model.kind):
            if m.cadence is Cadence.SLOW:
                st.fetched.pop(m.name, None)

    def _slow_due(self, st: DeviceState, ctx: _Poll) -> list[str]:
        """The slow methods due, longest waiting first (then in catalogue order)."""
        assert st.model is not None
        slow, unsupported = _SLOW_METHODS[st.model.kind], st.unsupported
        shortest, fetched = self.settings.slow_interval, st.fetched
        # None is due sooner than slow_interval after it was asked (_matters only makes that
        # longer): most polls find nothing due without reading a reply.
        if all(
            ctx.now - fetched.get(m.name, -math.inf) < shortest
            for _, m in slow
            if m.name not in unsupported
        ):
            return []
        known = st.replies.known(ctx.fresh)
        due = []
        for index, m in slow:
            if m.name in unsupported:
                continue
            every = shortest
            if not _matters(m, known):
                every = max(every, self.settings.identity_interval)
            last = st.fetched.get(m.name, -math.inf)
            if ctx.now - last >= every:
                due.append((last, index, m.name))
        due.sort()
        return [name for _, _, name in due]

    def _succeeded(self, st: DeviceState, ctx: _Poll, wall: float) -> None:
        if st.failures and st.reading is not None:
            log.info(
                "device %s is up again after %d failed polls",
                st.name,
                st.failures,
                extra={"device": st.name, "failures": st.failures},
            )
        st.replies.merge(ctx.fresh, drop=st.unsupported | ctx.failed)
        st.failures = 0
        st.reidentified = False
        st.last_success = wall

    def _failed(self, st: DeviceState, failure: PollError) -> None:
        st.errors[failure.reason] += 1
        st.error_samples = None
        if st.failures == 0:
            log.warning(
                "device %s is down: %s: %s",
                st.name,
                failure.reason,
                failure,
                extra={"device": st.name, "method": failure.method, "reason": failure.reason},
            )
        st.failures += 1

    def reading_of(
        self, st: DeviceState, wall: float, duration: float, failure: PollError | None
    ) -> Reading:
        model = st.model or cat.MODELS["unknown"]
        samples: list[Sample] = [
            shared_sample("lektrico_up", (), 0.0 if failure else 1.0),
            Sample("lektrico_poll_duration_seconds", (), duration),
        ]
        if st.last_success is not None:
            samples.append(
                Sample("lektrico_last_poll_success_timestamp_seconds", (), st.last_success)
            )
        if st.replies:
            groups = HEALTH_ONLY if failure else HEALTH_AND_LIVE
            before = sum(st.dropped.values()) if log.isEnabledFor(logging.DEBUG) else None
            samples.extend(st.replies.samples(model, st.dropped, groups, wall))
            if before is not None and sum(st.dropped.values()) > before:
                log.debug(
                    "device %s: values dropped, by reason so far: %s",
                    st.name,
                    dict(st.dropped),
                    extra={"device": st.name},
                )
        if st.method_samples is None:  # made again only when what is known of methods changed
            st.method_samples = method_samples(st)
        supported, errors = st.method_samples
        samples.extend(supported)
        if st.error_samples is None:  # made again only after a failure
            st.error_samples = tuple(
                shared_sample(
                    "lektrico_poll_errors_total", label_pair("reason", r), float(st.errors[r])
                )
                for r in cat.POLL_ERROR_REASONS
            )
        samples.extend(st.error_samples)
        samples.extend(errors)
        samples.extend(
            shared_sample("lektrico_values_dropped_total", label_pair("reason", r), float(n))
            for r, n in sorted(st.dropped.items())
        )
        return Reading(
            device=st.name,
            user_labels=st.target.labels,
            time=wall,
            up=failure is None,
            duration=duration,
            model=model.name,
            samples=tuple(samples),
            reason=failure.reason if failure else None,
            error=str(failure) if failure else None,
        )


_METHOD_ORDER = {m.name: i for i, m in enumerate(cat.METHODS)}
# Per device kind, the slow methods with their index among the kind's methods.
_SLOW_METHODS = {
    kind: tuple((i, m) for i, m in enumerate(cat.methods_for(kind)) if m.cadence is Cadence.SLOW)
    for kind in (cat.CHARGER, cat.METER)
}


def method_samples(st: DeviceState) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """lektrico_method_supported and lektrico_method_errors_total of a device, in catalogue
    order of the methods."""
    order = _METHOD_ORDER.get
    supported = tuple(
        shared_sample("lektrico_method_supported", label_pair("method", m), 1.0 if ok else 0.0)
        for m, ok in sorted(st.supported.items(), key=lambda item: order(item[0], 99))
    )
    errors = tuple(
        shared_sample(
            "lektrico_method_errors_total",
            (("method", m), ("reason", r)),
            float(st.method_errors[m, r]),
        )
        for m, r in sorted(st.method_errors, key=lambda key: (order(key[0], 99), key[1]))
    )
    return supported, errors


def _changed(before: Mapping[str, Any], after: Mapping[str, Any], key: str) -> bool:
    """Both replies carry the key, with other values."""
    old, new = before.get(key), after.get(key)
    return old is not None and new is not None and old != new


def _matters(method: cat.Method, known: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether a slow method is worth its slow cadence given what is known (unknown: yes)."""
    if method.slow_if is not None:
        reply = known.get(method.slow_if.method)
        if reply is not None and DeviceReplies.switch(reply, method.slow_if.key) is False:
            return False
    if method.slow_unless:
        return not all(src.key in known.get(src.method, {}) for src in method.slow_unless)
    return True


class Poller:
    """Schedules polls of the whole fleet and hands every Reading to the sinks."""

    PROBE_CACHE = 256

    def __init__(
        self,
        settings: PollSettings,
        sinks: Iterable[Sink],
        metrics: SelfMetrics | None = None,
        stage: Stage | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or SelfMetrics()
        self.sinks = list(sinks)
        self.stage = stage
        self.devices: dict[str, DeviceState] = {}
        self._probes: OrderedDict[str, DeviceState] = OrderedDict()
        self._worker = DevicePoller(settings, self.metrics)
        self._http: HttpClient | None = None
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = 0  # scheduled polls in flight, at most settings.concurrency
        self._waiting: deque[tuple[DeviceState, float]] = deque()
        self._lag = 0.0  # how late the last scheduled poll started after it was due (s)
        self._on_remove: list[Callable[[str], None]] = []
        self._up: set[str] = set()
        self._addresses: dict[str, str] = {}  # see _index_addresses

    @property
    def http(self) -> HttpClient:
        if self._http is None:
            self._http = new_http(self.settings.concurrency)
        return self._http

    def reconfigure(self, settings: PollSettings) -> None:
        """New poll settings; polls in flight finish under the old ones."""
        self.settings = settings
        self._worker.settings = settings

    def on_remove(self, callback: Callable[[str], None]) -> None:
        self._on_remove.append(callback)

    def _state(self, target: Target, http: HttpClient | None = None) -> DeviceState:
        client = DeviceClient(
            http or self.http, target.base_url, auth=target.auth, name=target.name
        )
        return DeviceState(target, client)

    def set_targets(self, targets: Iterable[Target]) -> None:
        """Add, change and remove devices; unchanged devices keep their state and series."""
        wanted = {t.name: t for t in targets}
        for name in list(self.devices):
            if name not in wanted or self.devices[name].target != wanted[name]:
                self._remove(name)
        now = time.monotonic()
        # A fleet that fits in the poll slots is polled at once (a home owner's first reading
        # should not wait up to an interval); a larger one starts spread over an interval.
        spread_out = len(wanted) > self.settings.concurrency
        for name, target in wanted.items():
            if name not in self.devices:
                self.devices[name] = self._state(target)
                start = spread(name, self.settings.interval) if spread_out else 0.0
                self._push(now + start, name)
        self.metrics.devices_configured.set(len(self.devices))
        self._index_addresses()
        self._wake.set()

    def _remove(self, name: str) -> None:
        st = self.devices.pop(name)
        self._up.discard(name)
        self.metrics.devices_up.set(len(self._up))
        if st.inflight is not None:
            st.inflight.cancel()
        for callback in self._on_remove:
            callback(name)

    def _push(self, due: float, name: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, name))

    async def run(self) -> None:
        """The scheduling loop; runs until cancelled.

        It wakes at most once a `TICK` and starts every poll due by then: a poll starts up to a
        tick late, and the loop costs the same whether 10 or 10,000 devices are due a second.
        Between polls it sleeps until the next one is due, however far off: only `set_targets`
        changes the schedule from outside, and it wakes the loop. An idle small board then
        wakes once a poll, not once a second.
        """
        interval = self.settings.interval
        try:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    due, _, name = heapq.heappop(self._heap)
                    st = self.devices.get(name)
                    if st is None:
                        continue
                    self._push(self._next_due(st, due, now), name)
                    if st.inflight is not None or st.queued:
                        self.metrics.polls_late.inc()  # the previous poll has not finished
                        continue
                    self._schedule(st, due)
                delay = self._heap[0][0] - now if self._heap else interval
                self._wake.clear()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that arrives as the event is set, and stop() would then hang.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(delay, TICK)):
                        await self._wake.wait()
        finally:
            self._drop_waiting()
            for task in list(self._tasks):
                task.cancel()

    def _drop_waiting(self) -> None:
        for st, _ in self._waiting:
            st.queued = False
        self._waiting.clear()

    def _next_due(self, st: DeviceState, due: float, now: float) -> float:
        s = self.settings
        factor = min(2.0 ** max(0, st.failures - 2), s.max_backoff / s.interval)
        nxt = due + s.interval * max(factor, 1.0)
        return nxt if nxt > now - s.interval else now + s.interval  # after a stall, do not burst

    @property
    def busy(self) -> bool:
        """More than a quarter of the poll slots are taken, or polls wait for one: first polls
        then leave their slow methods to later polls (see DevicePoller._slow_due)."""
        return bool(self._waiting) or self._running * 4 > self.settings.concurrency

    @property
    def behind(self) -> bool:
        """The last scheduled poll started more than LAG_LIMIT after it was due: the exporter
        is short of CPU or poll slots, and polls leave their slow methods for later."""
        return self._lag > LAG_LIMIT

    def _schedule(self, st: DeviceState, due: float) -> None:
        """Start a scheduled poll now, or queue it until one of the `concurrency` slots frees."""
        if self._running < self.settings.concurrency:
            self._launch(st, due)
        else:
            st.queued = True
            self._waiting.append((st, due))

    def _launch(self, st: DeviceState, due: float) -> None:
        # One task a poll: the poll itself. Its completion publishes and frees the slot.
        self._running += 1
        self._lag = time.monotonic() - due
        task = self._begin(st, None)
        task.add_done_callback(functools.partial(self._finished, st, due))

    def _finished(self, st: DeviceState, due: float, task: asyncio.Task[Reading]) -> None:
        self._running -= 1
        if task.cancelled():
            pass
        elif task.exception() is not None:  # a bug: DevicePoller.poll makes failures Readings
            log.error("poll of %s ended without a reading", st.name, exc_info=task.exception())
        elif self.devices.get(st.name) is st:
            if time.monotonic() - due > self.settings.interval:
                self.metrics.polls_late.inc()
            self.publish(task.result())
        while self._waiting and self._running < self.settings.concurrency:
            waiting, waiting_due = self._waiting.popleft()
            waiting.queued = False
            if self.devices.get(waiting.name) is waiting and waiting.inflight is None:
                self._launch(waiting, waiting_due)

    def _begin(self, st: DeviceState, timeout: float | None) -> asyncio.Task[Reading]:
        self.metrics.polls.inc()
        task = asyncio.get_running_loop().create_task(
            self._worker.poll(st, timeout, self.busy, self.behind)
        )
        st.inflight = task
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._ended, st))
        return task

    def _ended(self, st: DeviceState, task: asyncio.Task[Reading]) -> None:
        self._tasks.discard(task)
        if st.inflight is task:
            st.inflight = None

    def publish(self, reading: Reading) -> Reading:
        """Pass a configured device's reading through the stage to every sink; the staged
        reading is the device's last (one reading a device, not one before and one after the
        stage) and is returned."""
        if self.stage is not None:
            try:
                reading = self.stage(reading)
            except Exception:  # a broken stage must not keep the reading from the outputs
                log.exception("stage failed for device %s", reading.device)
        st = self.devices.get(reading.device)
        if st is not None and st.reading is not None and st.reading.time == reading.time:
            st.reading = reading
        for sink in self.sinks:
            try:
                sink(reading)
            except Exception:  # one broken output must not stop the others
                log.exception("output failed for device %s", reading.device)
        # A set, not a walk over the fleet: that walk after every poll cost O(N^2) a round.
        if reading.up and reading.device in self.devices:
            self._up.add(reading.device)
        else:
            self._up.discard(reading.device)
        self.metrics.devices_up.set(len(self._up))
        return reading

    async def poll(self, st: DeviceState, timeout: float | None = None) -> Reading:
        """Poll now, or join the poll already in flight for this device. A caller with a
        budget (a scrape's timeout) waits for a joined poll no longer than that: it gets a
        down reading for the wait, and the poll goes on for the others."""
        if st.inflight is None:
            return await asyncio.shield(self._begin(st, timeout))
        task = st.inflight
        if timeout is None:
            return await asyncio.shield(task)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(task)
        except TimeoutError:
            failure = PollError("timeout", f"no reply within {timeout:g}s", st.current_method)
            return self._worker.reading_of(st, time.time() - timeout, timeout, failure)

    def find(self, target: str) -> DeviceState | None:
        """A configured device by name, address (host:port) or host."""
        if target in self.devices:
            return self.devices[target]
        name = self._addresses.get(target)
        return self.devices.get(name) if name is not None else None

    def _index_addresses(self) -> None:
        """Address → device name for find(): a lookup per probe, not a walk over the fleet
        (a fleet probed through /probe is probed N times an interval). The first device
        configured at an address wins, as the walk did."""
        index: dict[str, str] = {}
        for st in self.devices.values():
            url = st.target.base_url
            for key in (*parse_endpoint(url).names, url):
                index.setdefault(key, st.name)
        self._addresses = index

    def adhoc(self, name: str, base_url: str, http: HttpClient | None = None) -> DeviceState:
        """State for a probed device that is not configured (kept in a small LRU cache);
        `http` is the probes' own, so they never take the background polls' connections."""
        st = self._probes.get(base_url)
        if st is None:
            st = self._state(Target(name=name, base_url=base_url), http)
            self._probes[base_url] = st
            while len(self._probes) > self.PROBE_CACHE:
                self._probes.popitem(last=False)
        self._probes.move_to_end(base_url)
        return st

    async def close(self) -> None:
        self._drop_waiting()  # or a cancelled poll's slot would go to a waiting one
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
