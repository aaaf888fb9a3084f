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

from . import sharding
from .config import Config, ConfigError, DeviceConfig, load_config
from .config_loader import expand_pattern
from .discovery import Discovery, DiscoveryError, merge
from .outputs import build_outputs
from .poller import Poller, PollSettings, Sink, Target, pool_limit
from .prometheus import Exposition
from .selfmetrics import SelfMetrics
from .web import BACKLOG, ListenError, ProbePolicy, Web, listen
from .webconfig import load_web_config, middlewares, ssl_context

log = logging.getLogger("lektrico.app")


def target_of(device: DeviceConfig) -> Target:
    auth = None
    if device.username is not None:
        password = device.password.get_secret_value() if device.password else ""
        auth = aiohttp.BasicAuth(device.username, password)
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
    enable_lifecycle: bool = False

    def __post_init__(self) -> None:
        self.outputs = build_outputs(self.config, self.metrics)
        sinks = [self.exposition.publish, *(o.publish for o in self.outputs), *self.extra_sinks]
        self.poller = Poller(settings_of(self.config), sinks, self.metrics)
        self.poller.on_remove(self.exposition.remove)
        self.web = Web(
            self.poller,
            self.exposition,
            self.metrics,
            policy_of(self.config),
            self.config.poll.timeout,
            reload=self.reload,
            probe_concurrency=self.config.probe.concurrency,
            lifecycle=self.config.web.enable_lifecycle or self.enable_lifecycle,
        )
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._next_reload: asyncio.Task[str | None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()
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
        self.config = config
        self.poller.reconfigure(settings_of(config))
        self.poller.set_targets(self.targets(config))
        self.web.policy = policy_of(config)
        self.web.probe_timeout = config.poll.timeout
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
            config = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            log.error("reload rejected, keeping the running config: %s", exc)
            return str(exc)
        restart_discovery = config.discovery != self.config.discovery
        self.apply(config)
        if restart_discovery:
            await self._stop_discovery()
            try:
                await self._start_discovery(config)
            except DiscoveryError as exc:
                log.error("discovery stopped: %s", exc)
            self.poller.set_targets(self.targets(config))
        log.info("config reloaded: %d devices", len(self.poller.devices))
        return None

    async def start(self) -> None:
        settings = load_web_config(self.config.web.config_file)
        await self._start_discovery(self.config)  # first: fails before anything else runs
        for output in self.outputs:
            await output.start()
        self.poller.set_targets(self.targets(self.config))
        app = self.web.app()
        app.middlewares.extend(middlewares(settings))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = self.config.listen_host or "0.0.0.0", self.config.listen_port
        tls = ssl_context(settings)
        limit = connection_limit(self.config)
        if limit < self.config.web.max_connections:
            log.warning(
                "the file descriptor limit leaves room for %d client connections, fewer than"
                " web.max_connections %d: raise LimitNOFILE (ulimit -n)",
                limit,
                self.config.web.max_connections,
            )
        try:
            self._server, _ = await listen(self._runner, host, port, tls, limit)
        except ListenError:
            await self.stop()
            raise
        self.port = self._server.sockets[0].getsockname()[1] if self._server.sockets else port
        self._tasks.append(asyncio.create_task(self.poller.run()))
        if self.config_path is not None:
            base = Path(self.config_path).parent
            seen = device_files_signature(self.config, base)
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
                await self.reload()

    async def stop(self) -> None:
        self.web.ready = False
        await self._stop_discovery()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.poller.close()
        await self.web.close()
        if self._server is not None:
            self._server.close()  # no new connections; the runner ends the open ones
        if self._runner is not None:
            await self._runner.cleanup()
        for output in self.outputs:  # after the last poll, so every reading is flushed
            await output.stop()


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
