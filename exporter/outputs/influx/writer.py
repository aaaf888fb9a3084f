"""The InfluxDB output: buffer, spool, batches and retries around influxdb-client's async API.

- Readings are serialised at once (influx.py) and queued; a batch goes out when `batch_size`
  points wait or every `flush_interval`, one request at a time, oldest first.
- Failures that may pass (connection, timeout, 5xx, 429) keep the points and retry with
  exponential backoff up to `max_retry_delay`, or after the server's `Retry-After`: a hint,
  held within [RETRY_BASE, max_retry_delay] so that no header can make it hammer or stall.
- At most ERROR_BODY_BYTES of an error reply are read, and one shortened line is logged.
- Failures retrying cannot fix are counted, logged once per kind, and hold back no other point:
  a partial write (type conflict) loses only what InfluxDB dropped, a batch refused whole (400,
  413) is bisected down to the lines at fault, 401/403/404 drop the batch.
- Without `spool_dir`, beyond `buffer_points` the oldest points are dropped and counted.
- With `spool_dir` the queue is on disk (influx_spool.py), bounded by `spool_max_bytes`; memory
  holds at most `buffer_points` of its head. A crash loses nothing. Points the spool cannot take
  (directory unwritable, disk full) are held in memory within `buffer_points` and sent first;
  what does not fit is dropped and counted.
- `stop()` (SIGTERM) writes what is buffered, for at most `timeout`.

Delivery is at least once; InfluxDB absorbs a repeat (same series and timestamp overwrite).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import random
import re
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import aiohttp
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from exporter.catalogue.selfmetrics import SelfMetrics
from exporter.config.schema import InfluxConfig
from exporter.outputs.influx.lines import Serializer
from exporter.outputs.influx.spool import Chunk, Spool
from exporter.reading import Reading

log = logging.getLogger("lektrico.influx")
RETRY_BASE = 0.5  # first retry delay, seconds; also the shortest wait a Retry-After can ask
ERROR_BODY_BYTES = 4096  # of an error reply: enough for InfluxDB's message, never a flood
MESSAGE_CHARS = 300  # of a failure in the log
PERMANENT = {401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large"}
HINTS = {
    "unauthorized": "check token (or username/password)",
    "forbidden": "the token may not write to this bucket",
    "not_found": "create the bucket (database) or fix org/bucket",
    "type_conflict": "a field already exists with another type; points of it are dropped",
    "bad_request": "InfluxDB refused the lines",
    "too_large": "lower batch_size",
    "buffer_full": "InfluxDB was away too long; raise buffer_points or set spool_dir",
    "spool_full": "InfluxDB was away too long; raise spool_max_bytes",
    "spool_unwritable": "the spool directory cannot be written and memory is full",
    "spool_unreadable": "a spool segment could not be read back",
}


@dataclass(frozen=True)
class Failure:
    """What a failed write means for its points."""

    reason: str
    message: str
    retry: bool = False  # transient: keep the points and back off
    retry_after: float | None = None
    split: bool = False  # refused as a whole: bisect to find the lines at fault
    rejected: int | None = None  # partial write: this many dropped by InfluxDB, the rest stored


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if it does not parse.

    May be 0 or negative (a date in the past) or infinite: the caller clamps it.
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return None if math.isnan(seconds) else seconds


def retry_delay(hint: float | None, failures: int, max_delay: float) -> float:
    """How long to wait before the next attempt, after `failures` failed ones in a row."""
    if hint is not None:
        return min(max(hint, min(RETRY_BASE, max_delay)), max_delay)
    delay = RETRY_BASE * 2.0 ** min(failures - 1, 30)
    return min(max_delay, delay) * random.uniform(0.75, 1.0)


def shortened(text: str, limit: int = MESSAGE_CHARS) -> str:
    """One line of at most about `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class BoundedResponse(aiohttp.ClientResponse):
    """A response that reads at most ERROR_BODY_BYTES of an error body and drops the rest.

    influxdb-client reads every reply whole; a proxy or server answering a 400 with megabytes
    would otherwise be held in memory (several times, while it is decoded) and logged.
    """

    _bounded: bytes | None = None

    async def read(self) -> bytes:
        if self.status < 400:
            return await super().read()
        if self._bounded is None:
            data = b""
            try:
                while len(data) < ERROR_BODY_BYTES:
                    part = await self.content.read(ERROR_BODY_BYTES - len(data))
                    if not part:
                        break
                    data += part
            finally:
                self.close()  # the rest is not read: the connection is not reused
            self._bounded = data
        return self._bounded


def rejected_count(message: str) -> int:
    """Points InfluxDB says it dropped in a partial write (1.x/2.x `dropped=N`, 3.x lines)."""
    found = re.search(r"dropped=(\d+)", message)
    if found:
        return int(found.group(1)) + message.count("unable to parse")
    return max(message.count('"line_number"'), message.count("unable to parse"), 1)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return "" if value is None else str(value).strip()


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, ApiException) and exc.status:
        status = int(exc.status)
        body = _text(exc.body)
        message = f"HTTP {status}: {_text(getattr(exc, 'message', None)) or body or exc.reason}"
        after = retry_after(getattr(exc, "retry_after", None))
        if status == 429:
            return Failure("throttled", message, retry=True, retry_after=after)
        if status >= 500 or status == 408:
            return Failure("server", message, retry=True, retry_after=after)
        if status in (400, 422):
            text = message + body
            reason = "type_conflict" if "type conflict" in text else "bad_request"
            if "partial write" in text:
                return Failure(reason, message, rejected=rejected_count(text))
            return Failure(reason, message, split=True)
        reason = PERMANENT.get(status, "rejected")
        return Failure(reason, message, split=status == 413)
    if isinstance(exc, TimeoutError):
        return Failure("timeout", "no reply in time", retry=True)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return Failure("connect", f"{type(exc).__name__}: {exc}", retry=True)
    return Failure("error", f"{type(exc).__name__}: {exc}", retry=True)


def client_args(config: InfluxConfig) -> tuple[dict[str, Any], str]:
    """InfluxDBClientAsync keyword arguments, and the bucket to write to.

    The 1.x form writes to InfluxDB 1.8+'s /api/v2/write with bucket "database/retention_policy"
    and token "username:password", as influxdb-client documents for InfluxDB 1.8.
    """
    token = config.token.get_secret_value() if config.token else None
    org = config.org
    bucket = config.bucket or ""
    if config.database is not None:
        rp = config.retention_policy
        bucket = f"{config.database}/{rp}" if rp else config.database
        org = "-"
        if config.username is not None:
            password = config.password.get_secret_value() if config.password else ""
            token = f"{config.username}:{password}"
    args: dict[str, Any] = {
        "url": config.url,
        "token": token,
        "org": org,
        "timeout": int(config.timeout * 1000),
        "enable_gzip": config.gzip,
        "verify_ssl": config.verify_tls,
        "ssl_ca_cert": config.ca_file,
        "client_session_kwargs": {"response_class": BoundedResponse},
    }
    return args, bucket


class InfluxWriter:
    """An output: publish() queues a reading's points; start()/stop() run the writer task."""

    def __init__(self, config: InfluxConfig, metrics: SelfMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or SelfMetrics()
        self.serializer = Serializer(config.precision, config.measurement_prefix)
        self._memory = 0  # points held in memory: queued and in flight
        self._queue: deque[Chunk] = deque()  # oldest first; with a spool, chunks on disk too
        self._unspooled: deque[Chunk] = deque()  # chunks the spool could not take, sent first
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: InfluxDBClientAsync | None = None
        self._logged: set[str] = set()
        token = str(client_args(config)[0].get("token") or "")
        self._secrets = sorted(
            {t for t in (token, token.partition(":")[2]) if len(t) >= 4},
            key=len,
            reverse=True,
        )
        self._failures = 0
        self._lock = asyncio.Lock()
        self.spool: Spool | None = None
        if config.spool_dir:
            self.spool = Spool(Path(config.spool_dir), config.spool_max_bytes, on_drop=self._drop)
            waiting = self.spool.open()  # SpoolError: the exporter does not start
            for reason, message in self.spool.damage:
                log.warning("InfluxDB spool damaged, repaired: %s", message)
                self.metrics.influx_spool_damaged.labels(reason=reason).inc()
            if waiting:
                log.info("InfluxDB spool: %d points from before the restart to write", waiting)
            self.metrics.influx_buffered.set(self.points)

    @property
    def points(self) -> int:
        """Points waiting: in memory, in flight and, with a spool, on disk only."""
        return self._memory + (self.spool.unloaded if self.spool is not None else 0)

    # ---- queue -----------------------------------------------------------------------------

    def publish(self, reading: Reading) -> None:
        data = self.serializer.encode(reading)
        self.publish_lines(data)

    def publish_lines(self, data: bytes) -> None:
        """Queue ready-made line-protocol points (newline-terminated), as a reading's are."""
        if not data:
            return
        points = data.count(b"\n")
        if self.spool is None:
            self._enqueue(Chunk(data, points))
        else:
            fits = self._memory + points <= self.config.buffer_points
            chunk = self.spool.append(data, points, cache=fits)
            if chunk is None:
                pass  # on disk only (or dropped and counted): loaded when its turn comes
            elif chunk.segment is None:
                self._hold(chunk)
            else:
                self._queue.append(chunk)
                self._memory += points
        if self.points >= self.config.batch_size:
            self._wake.set()
        self.metrics.influx_buffered.set(self.points)

    def _enqueue(self, chunk: Chunk) -> None:
        """Without a spool: beyond buffer_points the oldest points go."""
        self._queue.append(chunk)
        self._memory += chunk.points
        dropped = 0
        while self._memory > self.config.buffer_points and len(self._queue) > 1:
            oldest = self._queue.popleft()
            self._memory -= oldest.points
            dropped += oldest.points
        self._drop("buffer_full", dropped, "buffer full")

    def _hold(self, chunk: Chunk) -> None:
        """A chunk the spool could not take: in memory, within buffer_points.

        Room is made first by forgetting the newest chunks loaded from the spool (they stay on
        disk), then by dropping the oldest of these chunks, counted.
        """
        assert self.spool is not None
        self._unspooled.append(chunk)
        self._memory += chunk.points
        limit = self.config.buffer_points
        while self._memory > limit and self._queue and self.spool.unload(self._queue[-1]):
            self._memory -= self._queue.pop().points
        dropped = 0
        while self._memory > limit and len(self._unspooled) > 1:
            oldest = self._unspooled.popleft()
            self._memory -= oldest.points
            dropped += oldest.points
        self._drop("spool_unwritable", dropped, "the spool cannot be written and memory is full")

    def _refill(self) -> None:
        """Load the spool's head into memory when little of it is there."""
        spool = self.spool
        if spool is None or not spool.unloaded or self._memory >= self.config.batch_size:
            return
        want = min(2 * self.config.batch_size, self.config.buffer_points) - self._memory
        for chunk in spool.load(max(want, 1)):
            self._queue.append(chunk)
            self._memory += chunk.points

    def _waiting(self) -> bool:
        return bool(self._unspooled or self._queue or (self.spool and self.spool.unloaded))

    def _take(self) -> list[Chunk]:
        self._refill()
        source = self._unspooled or self._queue  # the points at risk of a crash first
        if not source:
            return []
        batch = [source.popleft()]
        size = batch[0].points
        while source and size + source[0].points <= self.config.batch_size:
            size += source[0].points
            batch.append(source.popleft())
        return batch

    def _put_back(self, batch: list[Chunk]) -> None:
        unspooled = self.spool is not None and batch[0].segment is None
        (self._unspooled if unspooled else self._queue).extendleft(reversed(batch))

    def _consumed(self, chunks: list[Chunk]) -> None:
        if self.spool is not None:
            self.spool.consumed(chunks)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        args, self.bucket = client_args(self.config)
        self._client = InfluxDBClientAsync(**args)
        self._write_api = self._client.write_api()
        self._task = asyncio.create_task(self._run(), name="influxdb-writer")

    def remove(self, device: str) -> None:
        """Nothing to forget: a removed device's points already queued are still written."""

    async def close(self) -> None:
        """Write what is buffered (one attempt, at most `timeout`), then close."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.config.timeout + 1.0)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        if self.points:
            where = f"kept in {self.config.spool_dir}" if self.spool else "lost (no spool_dir)"
            log.warning("InfluxDB: %d points not written at shutdown, %s", self.points, where)
            lost = sum(c.points for c in self._unspooled)
            if lost:
                log.warning("InfluxDB: %d of them lost: the spool could not take them", lost)
        if self.spool is not None:
            self.spool.close()
        if self._client is not None:
            await self._client.close()  # type: ignore[no-untyped-call]
            self._client = None

    async def flush(self) -> None:
        """Write everything queued now, retrying as usual (after start()); for tests."""
        await self._drain()

    # ---- writing -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._stopping.is_set():
                # asyncio.timeout, not wait_for: see Poller.run (a lost cancellation on 3.11).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.flush_interval):
                        await self._wake.wait()
            self._wake.clear()
            try:
                await self._drain()  # once stopping, it gives up at the first failure
            except Exception:  # a bug here must not end the writing for good
                log.exception("InfluxDB writer failed; trying again at the next flush")
            if self._stopping.is_set():
                return

    async def _drain(self) -> None:
        async with self._lock:
            while self._waiting():
                if not (self._unspooled or self._queue):
                    self._refill()
                    if not self._queue:
                        return  # the spool could not give back what it holds: counted there
                failure = await self._send_batch()
                if failure is None:
                    continue
                self._failures += 1
                if self._stopping.is_set():
                    return
                if self._failures == 1:
                    log.warning(
                        "InfluxDB write failed (%s: %s); %d points buffered, retrying",
                        failure.reason,
                        failure.message,
                        self.points,
                    )
                delay = retry_delay(
                    failure.retry_after, self._failures, self.config.max_retry_delay
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()

    async def _send_batch(self) -> Failure | None:
        if self.spool is not None:
            self.spool.sync()
        batch = self._take()
        if not batch:
            return None
        points = sum(c.points for c in batch)
        try:
            failure = await self._deliver(b"".join(c.data for c in batch), points)
        except BaseException:  # cancelled at stop: the points stay for the spool
            self._put_back(batch)
            raise
        if failure is not None:
            # Back to the head; points published meanwhile may have pushed out newer ones.
            self._put_back(batch)
            return failure
        self._memory -= points
        self._consumed(batch)
        self.metrics.influx_buffered.set(self.points)
        if self._failures:
            log.info("InfluxDB writes succeed again after %d failed attempts", self._failures)
            self._failures = 0
        return None

    async def _post(self, body: bytes) -> None:
        await self._write_api.write(
            bucket=self.bucket,
            record=body,
            write_precision=cast(WritePrecision, self.config.precision),
        )

    async def _deliver(self, body: bytes, points: int) -> Failure | None:
        """None when the points are done with (written, or rejected and counted)."""
        try:
            await self._post(body)
        except Exception as exc:
            # Out of the except block before bisecting: the exception holds the reply (and
            # what its connection had buffered), which must not live on through the recursion.
            failure = self._redacted(classify(exc))
        else:
            self._written(points)
            return None
        self.metrics.influx_errors.labels(reason=failure.reason).inc()
        if failure.retry:
            return failure
        self._report(failure)
        if failure.split and points > 1:
            lines = body.splitlines(keepends=True)
            half = len(lines) // 2
            for part in (lines[:half], lines[half:]):
                again = await self._deliver(b"".join(part), len(part))
                if again is not None:
                    return again
            return None
        rejected = points if failure.rejected is None else min(failure.rejected, points)
        self._written(points - rejected)
        self._drop(failure.reason, rejected, failure.message)
        return None

    def _written(self, points: int) -> None:
        self.metrics.influx_last_success.set(time.time())
        if points:
            self.metrics.influx_written.inc(points)

    def _redacted(self, failure: Failure) -> Failure:
        """A server or proxy may echo the Authorization header in its error body.

        Shortened after redacting, so that no cut-off secret is left.
        """
        message = failure.message
        for secret in self._secrets:
            message = message.replace(secret, "<redacted>")
        return replace(failure, message=shortened(message))

    def _drop(self, reason: str, points: int, message: str) -> None:
        if points:
            self.metrics.influx_dropped.labels(reason=reason).inc(points)
            self._report(Failure(reason, message))

    def _report(self, failure: Failure) -> None:
        if failure.reason in self._logged:
            return
        self._logged.add(failure.reason)
        hint = HINTS.get(failure.reason, "")
        log.error(
            "InfluxDB points dropped (%s: %s)%s; from now on %s is only counted in "
            "lektrico_influxdb_points_dropped_total",
            failure.reason,
            failure.message,
            f"; {hint}" if hint else "",
            failure.reason,
        )
