"""Wiring: config → poller → outputs → HTTP server. The one place that knows all the parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from .config import Config, DeviceConfig
from .poller import Poller, PollSettings, Sink, Target
from .prometheus import Exposition
from .selfmetrics import SelfMetrics
from .web import ProbePolicy, Web

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


@dataclass
class Exporter:
    """A running exporter: its poller, outputs and web server."""

    config: Config
    metrics: SelfMetrics = field(default_factory=SelfMetrics)
    exposition: Exposition = field(default_factory=Exposition)
    extra_sinks: list[Sink] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.poller = Poller(
            settings_of(self.config), [self.exposition.publish, *self.extra_sinks], self.metrics
        )
        self.poller.on_remove(self.exposition.remove)
        self.web = Web(
            self.poller,
            self.exposition,
            self.metrics,
            policy_of(self.config),
            self.config.poll.timeout,
        )
        self._runner: web.AppRunner | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> None:
        self.poller.set_targets(target_of(d) for d in self.config.devices)
        self._runner = web.AppRunner(self.web.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = self.config.listen_host or "0.0.0.0", self.config.listen_port
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1] if self._runner.addresses else port
        self._poll_task = asyncio.create_task(self.poller.run())
        self.web.ready = True
        log.info("listening on %s:%d with %d devices", host, self.port, len(self.poller.devices))

    async def stop(self) -> None:
        self.web.ready = False
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        await self.poller.close()
        if self._runner is not None:
            await self._runner.cleanup()


async def run_until_signal(exporter: Exporter, on_hup: Callable[[], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_hup is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    await exporter.start()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await exporter.stop()
