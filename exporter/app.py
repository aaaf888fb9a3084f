"""Wiring: config → poller → outputs → HTTP server. The one place that knows all the parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from exporter.catalogue.selfmetrics import SelfMetrics
from exporter.config.addresses import split_host_port
from exporter.config.loader import expand_pattern
from exporter.config.schema import Config, ConfigError, DeviceConfig, DeviceFileMemory, load_config
from exporter.device import sharding
from exporter.device.discovery import Discovery, DiscoveryError, merge
from exporter.device.poller import Poller, PollSettings, Sink, Target, pool_limit
from exporter.outputs import LineSink, Output, build_outputs
from exporter.outputs.prometheus import Exposition
from exporter.sessions.stage import SessionsStage
from exporter.web.server import BACKLOG, ListenError, ProbePolicy, Web, listen
from exporter.web.status import StatusBoard
from exporter.web.webconfig import load_web_config, middlewares, ssl_context

log = logging.getLogger("lektrico.app")


M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter (malloc.h)
TRIM_THRESHOLD = 128 * 1024  # glibc's default
# A plain /metrics body passes that 128 KiB from about 22 devices (5.8 KB each). A smaller fleet
# never frees a block that large, so it leaves ctypes (0.24 MB) unloaded.
MALLOC_FROM = 32


def fix_malloc_thresholds() -> bool:
    """Keep glibc's malloc thresholds where they start (memory above 128 KiB mapped on its own
    and given back when freed), and say whether it took. By default, freeing a block of more
    than 128 KiB raises the mmap threshold to that block's size, up to 32 MiB: after the first
    scrapes of a large fleet, the blocks each scrape builds and drops (the gzip body, each
    family's text) come from the heap instead, which gives little back. Measured at 4,000
    devices scraped every 3 s: 5 KB a device of RSS for nothing. Setting any threshold turns
    that adjustment off. Not glibc (musl, macOS): nothing to do."""
    import ctypes  # here: only a started exporter needs it

    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, the C library's among them
    except OSError:
        return False
    # gnu_get_libc_version is glibc's own: another C library's mallopt takes other numbers.
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def target_of(device: DeviceConfig) -> Target:
    auth = None
    if device.username is not None:
        password = device.password.get_secret_value() if device.password else ""
        auth = aiohttp.encode_basic_auth(device.username, password)
    return Target(
        name=device.name,
        base_url=device.base_url,
        labels=tuple(sorted(device.labels.items())),
        timeout=device.timeout,
        model=device.model,
        auth=auth,
    )


def settings_of(config: Config) -> PollSettings:
    p = config.poll
    return PollSettings(
        interval=p.interval,
        timeout=p.timeout,
        concurrency=p.concurrency,
        slow_interval=p.slow_interval,
        identity_interval=p.identity_interval,
        max_backoff=p.max_backoff,
    )


def policy_of(config: Config) -> ProbePolicy:
    return ProbePolicy(
        allow=config.probe.networks,
        default_port=config.probe.default_port,
    )


def sessions_stage(config: Config, outputs: list[Output]) -> SessionsStage | None:
    """The ledger stage, sending finished sessions to the InfluxDB writer if there is one."""
    if not config.state.enabled:
        return None
    for output in outputs:
        if isinstance(output, LineSink):
            influx = config.influxdb
            assert influx is not None
            return SessionsStage(
                config, output.publish_lines, influx.measurement_prefix, influx.precision
            )
    return SessionsStage(config)


# Descriptors kept free for everything but client and device connections: the config and
# device files, the spool, logs, the event loop's own, DNS lookups.
FD_RESERVE = 64


def connection_limit(config: Config, soft_limit: int | None = None) -> int:
    """Client connections the HTTP server may hold: web.max_connections, lowered so that the
    device polls' and probes' pools, a loop turn of accepts and FD_RESERVE always fit under the
    file descriptor limit."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    wanted = config.web.max_connections
    if soft_limit == resource.RLIM_INFINITY:
        return wanted
    reserve = pool_limit(config.poll.concurrency) + config.probe.concurrency
    room = soft_limit - reserve - BACKLOG - FD_RESERVE
    return max(8, min(wanted, room))


def device_files_signature(config: Config, base_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """What the watched device files look like now: a change means reload."""
    found = []
    for pattern in config.device_files:
        for path in expand_pattern(pattern, base_dir):
            with contextlib.suppress(OSError):
                st = path.stat()
                found.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(found)


@dataclass
class Exporter:
    """A running exporter: its poller, outputs and web server.

    `config_path` enables reloading (SIGHUP, POST /-/reload, changed device files); `shard`
    (index, count) overrides the config's shard; `enable_lifecycle` (--web.enable-lifecycle)
    accepts reloads over HTTP whatever the config says.
    """

    config: Config
    config_path: str | None = None
    shard: tuple[int, int] | None = None
    metrics: SelfMetrics = field(default_factory=SelfMetrics)
    exposition: Exposition = field(default_factory=Exposition)
    extra_sinks: list[Sink] = field(default_factory=list)
    watch_interval: float = 5.0
    extra_listen: list[str] = field(default_factory=list)  # more addresses than config.listen
    telemetry_path: str = "/metrics"
    enable_lifecycle: bool = False

    def __post_init__(self) -> None:
        self.status = StatusBoard()
        writers = build_outputs(self.config, self.metrics)
        self.outputs: list[Output] = [self.exposition, self.status, *writers]
        sinks = [*(o.publish for o in self.outputs), *self.extra_sinks]
        self.sessions = sessions_stage(self.config, writers)
        # The ledger first: outputs get its derived samples, and a device keeps one reading.
        stage = self.sessions.apply if self.sessions is not None else None
        self.poller = Poller(settings_of(self.config), sinks, self.metrics, stage)
        if self.sessions is not None:
            self.poller.on_remove(self.sessions.remove)
        for output in self.outputs:
            self.poller.on_remove(output.remove)
        self.web = Web(
            self.poller,
            self.exposition,
            self.metrics,
            policy_of(self.config),
            self.config.poll.timeout,
            reload=self.reload,
            status=self.status,
            telemetry_path=self.telemetry_path,
            grafana_url=self.config.grafana.url if self.config.grafana else None,
            probe_concurrency=self.config.probe.concurrency,
            lifecycle=self.config.web.enable_lifecycle or self.enable_lifecycle,
        )
        self.web.sessions = self.sessions
        self._runner: web.AppRunner | None = None
        self._servers: list[asyncio.Server] = []
        self._next_reload: asyncio.Task[str | None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()
        # What each device file last gave: a reload keeps a bad file's devices (see reload).
        self._device_files = DeviceFileMemory()
        self.port = 0
        self.discovery: Discovery | None = None
        self._discovered: list[Target] = []

    def _shard(self, config: Config) -> tuple[int, int] | None:
        if self.shard is not None:
            return self.shard
        return (config.shard.index, config.shard.count) if config.shard else None

    def targets(self, config: Config) -> list[Target]:
        # Merged before sharding: a discovered device configured in another shard is not ours.
        targets = merge([target_of(d) for d in config.devices], self._discovered)
        shard = self._shard(config)
        if shard is not None:
            mine = sharding.select((t.name for t in targets), *shard)
            targets = [t for t in targets if t.name in mine]
        return targets

    def _on_discovered(self, found: list[Target]) -> None:
        self._discovered = found
        self.poller.set_targets(self.targets(self.config))

    async def _start_discovery(self, config: Config) -> None:
        if config.discovery.enabled:
            self.discovery = Discovery(config.discovery, self._on_discovered)
            await self.discovery.start()

    async def _stop_discovery(self) -> None:
        if self.discovery is not None:
            await self.discovery.stop()
            self.discovery = None
            self._discovered = []

    def apply(self, config: Config) -> None:
        """Switch to a new config; devices that did not change keep their state and series."""
        if (config.influxdb, config.line_protocol) != (
            self.config.influxdb,
            self.config.line_protocol,
        ):
            log.warning("influxdb and line_protocol changes take effect after a restart")
        if config.state != self.config.state:
            log.warning("state changes take effect after a restart")
        self.config = config
        self.poller.reconfigure(settings_of(config))
        self.poller.set_targets(self.targets(config))
        self.web.policy = policy_of(config)
        self.web.probe_timeout = config.poll.timeout
        self.web.grafana_url = config.grafana.url if config.grafana else None
        if self.sessions is not None:
            self.sessions.reconfigure(config)
        self.web.probe_concurrency = config.probe.concurrency
        self.web.lifecycle = config.web.enable_lifecycle or self.enable_lifecycle

    async def reload(self) -> str | None:
        """Re-read the config file; None when applied, else the one-line reason it was not.

        Requests that come while a reload runs share the one reload that follows it (which
        reads the file as it is then): twenty clients asking at once cost two reloads.
        """
        if self.config_path is None:
            return "no config file to reload"
        task = self._next_reload
        if task is None:
            task = asyncio.ensure_future(self._reload_next())
            self._next_reload = task
        return await asyncio.shield(task)

    async def _reload_next(self) -> str | None:
        async with self._reload_lock:
            self._next_reload = None  # from now on, a request means one more reload
            return await self._reload_now()

    async def _reload_now(self) -> str | None:
        assert self.config_path is not None
        try:
            # Parsed in a thread: thousands of devices take a noticeable fraction of a
            # second, which on the event loop would hold up every scrape and poll.
            config = await asyncio.to_thread(
                load_config, self.config_path, device_files=self._device_files
            )
        except ConfigError as exc:
            log.error(
                "reload rejected, keeping the running config: %s",
                "; ".join(str(p) for p in exc.problems()),
            )
            self.metrics.reload_successful.set(0)
            return str(exc)
        for problem in self._device_files.problems:
            log.error("bad device file: %s", problem)
        restart_discovery = config.discovery != self.config.discovery
        self.apply(config)
        if restart_discovery:
            await self._stop_discovery()
            try:
                await self._start_discovery(config)
            except DiscoveryError as exc:
                log.error("discovery stopped: %s", exc)
            self.poller.set_targets(self.targets(config))
        self.metrics.reload_successful.set(1)
        self.metrics.reload_success_time.set_to_current_time()
        log.info("config reloaded: %d devices", len(self.poller.devices))
        return None

    async def start(self) -> None:
        if len(self.config.devices) >= MALLOC_FROM or self.config.discovery.enabled:
            fix_malloc_thresholds()
        settings = load_web_config(self.config.web.config_file)
        await self._start_discovery(self.config)  # first: fails before anything else runs
        if self.sessions is not None:
            await self.sessions.start()  # a state database that cannot be used stops us here
        for output in self.outputs:
            await output.start()
        self.poller.set_targets(self.targets(self.config))
        app = self.web.app()
        app.middlewares.extend(middlewares(settings))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        tls = ssl_context(settings)
        limit = connection_limit(self.config)
        if limit < self.config.web.max_connections:
            log.warning(
                "the file descriptor limit leaves room for %d client connections, fewer than"
                " web.max_connections %d: raise LimitNOFILE (ulimit -n)",
                limit,
                self.config.web.max_connections,
            )
        addresses = [split_host_port(a, None) for a in [self.config.listen, *self.extra_listen]]
        try:
            for host, port in addresses:
                server, _ = await listen(self._runner, host or "0.0.0.0", port, tls, limit)
                self._servers.append(server)
        except ListenError:
            await self.stop()
            raise
        host, port = addresses[0][0] or "0.0.0.0", addresses[0][1]
        first = self._servers[0]
        self.port = first.sockets[0].getsockname()[1] if first.sockets else port
        self._tasks.append(asyncio.create_task(self.poller.run()))
        if self.config_path is not None:
            base = Path(self.config_path).parent
            seen = device_files_signature(self.config, base)
            if self.config.device_files:  # what each file gives now, in case it goes bad later
                with contextlib.suppress(ConfigError):
                    load_config(self.config_path, device_files=self._device_files)
            self._tasks.append(asyncio.create_task(self._watch_device_files(base, seen)))
        self.web.ready = True
        log.info(
            "listening on %s:%d with %d devices: %s",
            host,
            self.port,
            len(self.poller.devices),
            settings.describe(),
        )

    async def _watch_device_files(self, base: Path, seen: tuple[object, ...]) -> None:
        while True:
            await asyncio.sleep(self.watch_interval)
            now = device_files_signature(self.config, base)
            if now != seen:
                seen = now
                log.info("device files changed, reloading")
                try:
                    await self.reload()
                except Exception as exc:  # a bad file must not end the watching
                    log.error("reload after a device file change failed: %r", exc)

    async def stop(self) -> None:
        self.web.ready = False
        await self._stop_discovery()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.poller.close()
        await self.web.close()
        for server in self._servers:
            server.close()  # no new connections; the runner ends the open ones
        self._servers.clear()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.sessions is not None:  # before the outputs: its last sessions go out with them
            await self.sessions.stop()
        for output in self.outputs:  # after the last poll, so every reading is flushed
            await output.close()


async def run_until_signal(exporter: Exporter) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pending: set[asyncio.Task[str | None]] = set()

    def on_hup() -> None:
        task = asyncio.ensure_future(exporter.reload())
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await exporter.start()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await exporter.stop()
