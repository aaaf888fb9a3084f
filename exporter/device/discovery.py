"""mDNS/DNS-SD discovery of chargers and meters announcing themselves on the local network.

A Lektri.co device announces an `_http._tcp` service named `Lektrico-<model>-<serial>` with a TXT
record `id=<model id>_<serial>` (tests/captures/1p7k-zeroconf-record.json). Each announced
instance whose name starts with `name_prefix` is resolved and becomes a poller Target:

    Lektrico-1p7k-500006._http._tcp.local.  id=1p7k_500006  192.168.1.20:80
    → Target(name="lektrico-500006", base_url="http://192.168.1.20:80", model="1p7k")

Devices are named by serial, so a device that moves to another address keeps its name and
series. One that says goodbye (or whose record expires) is kept for `grace_period` first:
chargers on Wi-Fi drop off and come back, and a device that returns in time is never removed.
Other services of the same type (printers, routers) are never resolved.

The `zeroconf` package is an optional extra, imported only when discovery starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from exporter.catalogue.table import MODELS, model_from_device_id
from exporter.config.addresses import Endpoint, check_hostname, parse_endpoint
from exporter.config.schema import DiscoveryConfig
from exporter.device.poller import Target

if TYPE_CHECKING:
    from zeroconf import ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

log = logging.getLogger("lektrico.discovery")

INSTALL_HINT = "discovery needs the zeroconf package: pip install 'lektrico-exporter[discovery]'"
RESOLVE_TIMEOUT_MS = 3000


class DiscoveryError(RuntimeError):
    """Discovery cannot start: no zeroconf package, or an interface that is not this host's."""


def device_name(serial: str) -> str:
    """The device name a discovered device gets: its serial, made recognisable."""
    return f"lektrico-{serial}"


def parse_identity(instance: str, device_id: str | None) -> tuple[str, str | None] | None:
    """(serial, model or None) from the TXT `id`, else from the instance name; None if neither.

    The serial is what follows the first "_" of the id, as in Lektri.co's own Home Assistant
    integration: "1p7k_500006" → ("500006", "1p7k"), "m2w_810006" → ("810006", "em"). The
    instance name `Lektrico-<model>-<serial>` is the fallback for a record without a usable id.
    """
    _, underscore, serial = (device_id or "").strip().partition("_")
    if underscore and serial.isalnum():
        model = model_from_device_id(device_id)
        return serial.lower(), None if model == "unknown" else model
    parts = instance.split("-")
    if len(parts) >= 3 and parts[-1].isalnum():
        model = parts[-2].lower()
        return parts[-1].lower(), model if model in MODELS and model != "unknown" else None
    return None


def _address(base_url: str) -> str:
    """Host and port of a target URL, for comparing a discovered device with configured ones."""
    return parse_endpoint(base_url).address


def merge(static: Sequence[Target], discovered: Iterable[Target]) -> list[Target]:
    """Configured targets, then the discovered ones that are not already among them.

    A discovered device is left out when a configured device has the same address (host and
    port) or the same name: what the config says always wins.
    """
    names = {t.name for t in static}
    addresses = {_address(t.base_url) for t in static}
    extra = [t for t in discovered if t.name not in names and _address(t.base_url) not in addresses]
    return [*static, *extra]


class Discovery:
    """Browses for devices and tells `on_change` the full list whenever it changes.

    `on_change` is called from the event loop with every discovered target (configured devices
    are not known here; see `merge`). `stop()` does not call it.
    """

    def __init__(self, config: DiscoveryConfig, on_change: Callable[[list[Target]], None]) -> None:
        self.config = config
        self.on_change = on_change
        self._found: dict[str, Target] = {}  # instance name → target
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._leaving: dict[str, asyncio.TimerHandle] = {}
        self._published: list[Target] = []
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None

    @property
    def targets(self) -> list[Target]:
        """The discovered devices sorted by name, one per name and per address.

        When two announcements share a name or an address (a device that changed its instance
        name, an address handed to another device), the one resolved last wins.
        """
        names: set[str] = set()
        addresses: set[str] = set()
        unique = []
        for target in reversed(self._found.values()):
            address = _address(target.base_url)
            if target.name not in names and address not in addresses:
                names.add(target.name)
                addresses.add(address)
                unique.append(target)
        return sorted(unique, key=lambda t: t.name)

    async def start(self) -> None:
        try:
            from zeroconf import InterfaceChoice
            from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf
        except ImportError:
            raise DiscoveryError(INSTALL_HINT) from None
        where = ", ".join(self.config.interfaces or ["all interfaces"])
        try:
            self._aiozc = AsyncZeroconf(interfaces=self.config.interfaces or InterfaceChoice.All)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise DiscoveryError(f"discovery cannot listen on {where}: {reason}") from None
        self._browser = AsyncServiceBrowser(
            self._aiozc.zeroconf, self.config.service, handlers=[self._on_service]
        )
        prefix = self.config.name_prefix
        log.info("browsing %s for instances named %s* on %s", self.config.service, prefix, where)

    async def stop(self) -> None:
        for handle in self._leaving.values():
            handle.cancel()
        self._leaving.clear()
        tasks = list(self._resolving.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._aiozc is not None:
            await self._aiozc.async_close()
            self._aiozc = None

    def _instance(self, name: str) -> str:
        """ "Lektrico-1p7k-500006._http._tcp.local." → "Lektrico-1p7k-500006"."""
        suffix = f".{self.config.service}"
        return name[: -len(suffix)] if name.lower().endswith(suffix.lower()) else name

    def _on_service(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
        **_: Any,
    ) -> None:
        from zeroconf import ServiceStateChange

        if not self._instance(name).lower().startswith(self.config.name_prefix.lower()):
            return
        if state_change is ServiceStateChange.Removed:
            self._goodbye(name)
            return
        leaving = self._leaving.pop(name, None)
        if leaving is not None:
            leaving.cancel()
            log.info("%s is back", self._instance(name))
        previous = self._resolving.pop(name, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.create_task(self._resolve(zeroconf, service_type, name))
        self._resolving[name] = task
        task.add_done_callback(lambda done: self._resolved(name, done))

    def _resolved(self, name: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(name) is task:
            del self._resolving[name]

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo

        instance = self._instance(name)
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS):
            log.warning(
                "%s did not answer its address within %ss", instance, RESOLVE_TIMEOUT_MS // 1000
            )
            return
        raw_id = info.properties.get(b"id")
        device_id = raw_id.decode("utf-8", "replace") if raw_id else None
        identity = parse_identity(instance, device_id)
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if identity is None:
            log.warning("%s announces no serial (TXT id=%s); ignored", instance, device_id)
            return
        if not addresses or info.port is None:
            log.warning("%s announces no IPv4 address and port; ignored", instance)
            return
        serial, model = identity
        port = self.config.port_override or info.port
        target = Target(
            name=device_name(serial),
            base_url=Endpoint("http", check_hostname(addresses[0]), port).base_url,
            labels=tuple(sorted(self.config.labels.items())),
            model=model,
        )
        if self._found.get(name) != target:
            self._found.pop(name, None)  # re-inserted last: most recently resolved
            self._found[name] = target
            log.info(
                "discovered %s (%s) at %s:%d as %s",
                instance,
                model or "unknown model",
                addresses[0],
                port,
                target.name,
            )
            self._publish()

    def _goodbye(self, name: str) -> None:
        resolving = self._resolving.pop(name, None)
        if resolving is not None:
            resolving.cancel()
        if name not in self._found or name in self._leaving:
            return
        grace = self.config.grace_period
        log.info(
            "%s said goodbye; dropping it in %gs unless it returns", self._instance(name), grace
        )
        loop = asyncio.get_running_loop()
        self._leaving[name] = loop.call_later(grace, self._drop, name)

    def _drop(self, name: str) -> None:
        self._leaving.pop(name, None)
        target = self._found.pop(name, None)
        if target is not None:
            log.info("%s is gone; no longer polling %s", self._instance(name), target.name)
            self._publish()

    def _publish(self) -> None:
        targets = self.targets
        if targets != self._published:
            self._published = targets
            try:
                self.on_change(targets)
            except Exception:  # a faulty consumer must not stop discovery
                log.exception("applying the discovered devices failed")
