"""Command line: run the exporter, check a config, poll one device once, or run the demo."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import resource
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from exporter import __version__, logs
from exporter.app import Exporter, run_until_signal
from exporter.config.addresses import parse_endpoint, written_address
from exporter.config.schema import Config, ConfigError, load_config, parse_config
from exporter.device.discovery import DiscoveryError
from exporter.device.sharding import parse_shard
from exporter.errors import StartupError
from exporter.sessions.stage import store_path
from exporter.sessions.store import StoreError
from exporter.sessions.store import check as check_store
from exporter.web.server import ListenError
from exporter.web.webconfig import load_web_config

PROG = "lektrico-exporter"
T = TypeVar("T")
log = logging.getLogger("lektrico")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Prometheus and InfluxDB exporter for Lektri.co chargers and energy meters.",
        epilog=f"`{PROG} simulate --help` runs a simulated fleet of devices; `{PROG} sessions"
        " --help` prints the monthly charging statement from the state store.",
    )
    p.add_argument(
        "hosts",
        nargs="*",
        metavar="HOST",
        help="devices to poll (ip[:port] or URL), named by their address; for a start without a"
        " config file",
    )
    p.add_argument(
        "--config.file", "--config", "-c", dest="config", metavar="FILE", help="YAML config file"
    )
    p.add_argument(
        "--config.check",
        "--check-config",
        dest="check_config",
        action="store_true",
        help="validate the configuration and exit (status 2 when invalid)",
    )
    p.add_argument(
        "--once",
        metavar="TARGET",
        help="poll one device (configured name, or HOST[:PORT]) and print its metrics",
    )
    p.add_argument(
        "--demo",
        metavar="N",
        type=int,
        help="start N simulated devices (and 3 faulty ones) on 127.0.0.1 and export them",
    )
    p.add_argument(
        "--shard", metavar="I/N", help="poll only this replica's share of the devices (0 <= I < N)"
    )
    p.add_argument(
        "--web.listen-address",
        "--listen",
        dest="listen",
        action="append",
        metavar="HOST:PORT",
        help="address to listen on, instead of the config's listen; repeat for several",
    )
    p.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        metavar="PATH",
        default="/metrics",
        help="path of the whole fleet's metrics (default: /metrics)",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="exporter-toolkit web config (TLS, basic auth); overrides web.config_file",
    )
    p.add_argument(
        "--web.enable-lifecycle",
        dest="web_enable_lifecycle",
        action="store_true",
        help="accept POST/PUT /-/reload (as web.enable_lifecycle: true); SIGHUP always reloads",
    )
    p.add_argument(
        "--health-check",
        action="store_true",
        help="ask the running exporter's /-/healthy on the configured listen address;"
        " exit 0 when it answers, 1 when not (for container health checks)",
    )
    p.add_argument(
        "--log.level",
        dest="log_level",
        choices=["debug", "info", "warn", "warning", "error"],
        help="least severe level logged (default: the config's log.level, info)",
    )
    p.add_argument(
        "--log.format",
        dest="log_format",
        choices=["logfmt", "json"],
        help="log line format (default: the config's log.format, logfmt)",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return p


# The cyclic garbage collector, tuned for a poller. In flight, a poll holds a few hundred aiohttp
# objects that outlive CPython's default young generation (700 allocations), so they are
# promoted and the full collections that follow walk every device's state: about 70 us a poll
# at 2,000 devices (docs/performance.md). A larger young generation lets them die young.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Freeze what exists before the first poll (modules, catalogue, config: never garbage) and
    raise the young generation; LEKTRICO_DEFAULT_GC=1 keeps CPython's defaults.

    No collection first: it would walk the ~50,000 objects of the start for the hundred or so
    (about 60 KB) of garbage the imports leave, 25-50 ms before the first /metrics can be
    answered. That garbage stays, once, frozen with the rest."""
    if os.environ.get("LEKTRICO_DEFAULT_GC"):
        return
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# From this many devices uvloop runs the loop: a few per cent less CPU a poll, which counts at
# thousands of devices. Below it the standard loop does: running uvloop touches 1.5 MiB of its
# library and imports 1.2 MiB more, a twentieth of a one-charger exporter on a small board, for
# a poll every few seconds. A fleet that reloads into a larger one keeps the loop it started on.
UVLOOP_FROM = 32


def run(main: Coroutine[Any, Any, T], devices: int = UVLOOP_FROM) -> T:
    """Run on uvloop for a fleet of `devices` from UVLOOP_FROM on where uvloop is installed,
    else on the standard loop, which behaves the same; LEKTRICO_NO_UVLOOP=1 always uses the
    standard loop."""
    tune_gc()
    if os.environ.get("LEKTRICO_NO_UVLOOP") or devices < UVLOOP_FROM:
        return asyncio.run(main)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def fleet_size(config: Config) -> int:
    """Devices the configuration asks for; discovery may find any number, so it counts as many."""
    return UVLOOP_FROM if config.discovery.enabled else len(config.devices)


RESERVED_PATHS = frozenset({"/", "/probe", "/sd", "/api/devices", "/-/healthy", "/-/ready"})


def with_hosts(config: Config, hosts: Sequence[str]) -> Config:
    """Devices given as arguments, named by their address, added to the config's."""
    for host in hosts:
        try:
            parse_endpoint(host)
        except ValueError as exc:
            raise ConfigError(f"command line: device address {host[:80]!r}: {exc}") from None
    given = [{"name": written_address(host), "host": host} for host in hosts]
    extra = parse_config(json.dumps({"devices": given}), "command line").devices
    taken = {d.name for d in config.devices}
    for device in extra:
        if device.name in taken:
            raise ConfigError(f"command line: device {device.name} is also in the config file")
    return config.model_copy(update={"devices": [*config.devices, *extra]})


def raise_fd_limit() -> None:
    """Raise the soft limit on open files to the hard one: the common soft default of 1024 is
    less than a large fleet and its scrapers need, and the hard limit is the operator's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit (not on Linux, where nr_open bounds it) gets a generous number.
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:  # a sandbox that forbids it: the limit stays
        log.warning("cannot raise the open files limit from %d to %d: %s", soft, wanted, exc)


def fail_config(exc: ConfigError) -> int:
    for problem in exc.problems():
        print(f"{PROG}: config error: {problem}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["simulate"]:
        from exporter.simulator import cli as sim

        sim_parser = argparse.ArgumentParser(
            prog=f"{PROG} simulate", description="Serve a simulated fleet on loopback."
        )
        sim.add_arguments(sim_parser)
        return sim.run(sim_parser.parse_args(args_list[1:]))
    if args_list[:1] == ["sessions"]:
        from exporter.sessions.cli import main as sessions_main

        return sessions_main(args_list[1:], PROG)
    args = parser().parse_args(args_list)
    try:
        config = load_config(args.config) if args.config else parse_config("{}")
        if args.hosts:
            config = with_hosts(config, args.hosts)
        extra_listen: list[str] = []
        for i, listen in enumerate(args.listen or ()):
            checked = parse_config(json.dumps({"listen": listen}), "--web.listen-address")
            if i == 0:
                config = config.model_copy(update={"listen": checked.listen})
            else:
                extra_listen.append(checked.listen)
        if not args.telemetry_path.startswith("/") or args.telemetry_path in RESERVED_PATHS:
            raise ConfigError(
                f"--web.telemetry-path: {args.telemetry_path!r} must start with / and not be"
                " one of the exporter's other paths"
            )
        if args.web_config_file:
            web = config.web.model_copy(update={"config_file": args.web_config_file})
            config = config.model_copy(update={"web": web})
        web_settings = load_web_config(config.web.config_file)
    except ConfigError as exc:
        if args.health_check:  # Docker reserves exit status 2 of a health check
            print(f"{PROG}: config error: {exc}")
            return 1
        return fail_config(exc)
    if args.health_check:
        from exporter.web.healthcheck import check

        return check(config)
    level = "warning" if args.log_level == "warn" else args.log_level
    logs.setup(level or config.log.level, args.log_format or config.log.format)
    try:
        shard = parse_shard(args.shard) if args.shard else None
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        if config.state.enabled:
            try:
                check_store(store_path(config))
            except StoreError as exc:
                print(f"{PROG}: {exc}", file=sys.stderr)
                return 2
        from exporter.outputs import writable_problem

        problem = writable_problem(config)
        if problem:
            print(f"{PROG}: config error: {problem}", file=sys.stderr)
            return 2
        print(f"{PROG}: config OK: {len(config.devices)} devices, {web_settings.describe()}")
        return 0
    raise_fd_limit()
    try:
        if args.once:
            from exporter.oneshot import poll_once

            return run(poll_once(config, args.once), fleet_size(config))
        if args.demo is not None:
            from exporter.demo import run_demo

            fleet = len(config.devices) + (args.demo or 0)
            return run(run_demo(config, args.demo, listen_given=bool(args.listen)), fleet)
        exporter = Exporter(
            config,
            config_path=args.config,
            shard=shard,
            extra_listen=extra_listen,
            telemetry_path=args.telemetry_path,
            enable_lifecycle=args.web_enable_lifecycle,
        )
        run(run_until_signal(exporter), fleet_size(config))
    except StartupError as exc:  # an output that cannot be used: spool_dir, line_protocol.path
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:  # a state database that is damaged or not writable
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except ListenError as exc:  # the listen address is taken, or not this host's
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except DiscoveryError as exc:  # an interface address this host does not have
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
