"""The InfluxDB output: buffer, spool, batches and retries around influxdb-client's async API.

- Readings are serialised at once (influx.py) and queued; a batch goes out when `batch_size`
  points wait or every `flush_interval`, one request at a time, oldest first.
- Failures that may pass (connection, timeout, 5xx, 429) keep the points and retry with
  exponential backoff up to `max_retry_delay`, or after the server's `Retry-After`.
- Failures retrying cannot fix are counted, logged once per kind, and hold back no other point:
  a partial write (type conflict) loses only what InfluxDB dropped, a batch refused whole (400,
  413) is bisected down to the lines at fault, 401/403/404 drop the batch.
- Beyond `buffer_points` the oldest points are dropped and counted.
- With `spool_dir` the queue is also on disk (influx_spool.py): a crash loses nothing.
- `stop()` (SIGTERM) writes what is buffered, for at most `timeout`.

Delivery is at least once; InfluxDB absorbs a repeat (same series and timestamp overwrite).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
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
RETRY_BASE = 0.5  # first retry delay, seconds
MAX_RETRY_AFTER = 3600.0
PERMANENT = {401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large"}
HINTS = {
    "unauthorized": "check token (or username/password)",
    "forbidden": "the token may not write to this bucket",
    "not_found": "create the bucket (database) or fix org/bucket",
    "type_conflict": "a field already exists with another type; points of it are dropped",
    "bad_request": "InfluxDB refused the lines",
    "too_large": "lower batch_size",
    "buffer_full": "InfluxDB was away too long; raise buffer_points or set spool_dir",
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
    """Seconds from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


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
    }
    return args, bucket


class InfluxWriter:
    """An output: publish() queues a reading's points; start()/stop() run the writer task."""

    def __init__(self, config: InfluxConfig, metrics: SelfMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or SelfMetrics()
        self.serializer = Serializer(config.precision, config.measurement_prefix)
        self.points = 0  # queued and in flight
        self._queue: deque[Chunk] = deque()
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
        self.spool = Spool(Path(config.spool_dir)) if config.spool_dir else None
        if self.spool is not None:
            replayed = self.spool.open()
            for chunk in replayed:
                self._enqueue(chunk)
            if replayed:
                log.info("InfluxDB spool: %d points from before the restart to write", self.points)

    # ---- queue -----------------------------------------------------------------------------

    def publish(self, reading: Reading) -> None:
        data = self.serializer.encode(reading)
        if data:
            points = data.count(b"\n")
            chunk = self.spool.append(data, points) if self.spool else Chunk(data, points)
            self._enqueue(chunk)

    def publish_lines(self, data: bytes) -> None:
        """Queue ready-made line-protocol points (newline-terminated) like a reading's."""
        if data:
            points = data.count(b"\n")
            chunk = self.spool.append(data, points) if self.spool else Chunk(data, points)
            self._enqueue(chunk)

    def _enqueue(self, chunk: Chunk) -> None:
        self._queue.append(chunk)
        self.points += chunk.points
        dropped: list[Chunk] = []
        while self.points > self.config.buffer_points and len(self._queue) > 1:
            oldest = self._queue.popleft()
            self.points -= oldest.points
            dropped.append(oldest)
        if dropped:
            self._drop("buffer_full", sum(c.points for c in dropped), "buffer full")
            self._consumed(dropped)
        if self.points >= self.config.batch_size:
            self._wake.set()
        self.metrics.influx_buffered.set(self.points)

    def _take(self) -> list[Chunk]:
        batch = [self._queue.popleft()]
        size = batch[0].points
        while self._queue and size + self._queue[0].points <= self.config.batch_size:
            size += self._queue[0].points
            batch.append(self._queue.popleft())
        return batch

    def _consumed(self, chunks: list[Chunk]) -> None:
        if self.spool is not None:
            self.spool.consumed(chunks)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        args, self.bucket = client_args(self.config)
        self._client = InfluxDBClientAsync(**args)
        self._write_api = self._client.write_api()
        self._task = asyncio.create_task(self._run(), name="influxdb-writer")

    async def stop(self) -> None:
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
            while self._queue:
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
                delay = failure.retry_after
                if delay is None:
                    delay = RETRY_BASE * 2 ** min(self._failures - 1, 30)
                    delay = min(self.config.max_retry_delay, delay) * random.uniform(0.75, 1.0)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()

    async def _send_batch(self) -> Failure | None:
        if self.spool is not None:
            self.spool.sync()
        batch = self._take()
        points = sum(c.points for c in batch)
        try:
            failure = await self._deliver(b"".join(c.data for c in batch), points)
        except BaseException:  # cancelled at stop: the points stay for the spool
            self._queue.extendleft(reversed(batch))
            raise
        if failure is not None:
            # Back to the head; points published meanwhile may have pushed out newer ones.
            self._queue.extendleft(reversed(batch))
            return failure
        self.points -= points
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
            failure = self._redacted(classify(exc))
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
        self._written(points)
        return None

    def _written(self, points: int) -> None:
        self.metrics.influx_last_success.set(time.time())
        if points:
            self.metrics.influx_written.inc(points)

    def _redacted(self, failure: Failure) -> Failure:
        """A server or proxy may echo the Authorization header in its error body."""
        message = failure.message
        for secret in self._secrets:
            message = message.replace(secret, "<redacted>")
        return replace(failure, message=message)

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
