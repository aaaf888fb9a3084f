"""Command line: run the exporter, check a config, poll one device once, or run the demo."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from exporter import __version__, logs
from exporter.app import Exporter, run_until_signal
from exporter.config.schema import ConfigError, load_config, parse_config
from exporter.device.discovery import DiscoveryError
from exporter.device.sharding import parse_shard
from exporter.outputs.influx.spool import SpoolError
from exporter.web.webconfig import load_web_config

PROG = "lektrico-exporter"
T = TypeVar("T")
log = logging.getLogger("lektrico")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Prometheus and InfluxDB exporter for Lektri.co chargers and energy meters.",
        epilog=f"`{PROG} simulate --help` runs a simulated fleet of devices.",
    )
    p.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file")
    p.add_argument(
        "--check-config",
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
    p.add_argument("--listen", metavar="HOST:PORT", help="override the config's listen address")
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="exporter-toolkit web config (TLS, basic auth); overrides web.config_file",
    )
    p.add_argument(
        "--health-check",
        action="store_true",
        help="ask the running exporter's /-/healthy on the configured listen address;"
        " exit 0 when it answers, 1 when not (for container health checks)",
    )
    p.add_argument("--log.level", dest="log_level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log.format", dest="log_format", choices=["logfmt", "json"])
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return p


# The cyclic garbage collector, tuned for a poller. In flight, a poll holds a few hundred aiohttp
# objects that outlive CPython's default young generation (700 allocations), so they are
# promoted and the full collections that follow walk every device's state: about 70 us a poll
# at 2,000 devices (docs/performance.md). A larger young generation lets them die young.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Freeze what exists before the first poll (modules, catalogue, config: never garbage) and
    raise the young generation; LEKTRICO_DEFAULT_GC=1 keeps CPython's defaults."""
    if os.environ.get("LEKTRICO_DEFAULT_GC"):
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed (a cheaper event loop for a poller that is mostly
    socket work); LEKTRICO_NO_UVLOOP=1 uses the standard loop, which behaves the same."""
    tune_gc()
    if os.environ.get("LEKTRICO_NO_UVLOOP"):
        return asyncio.run(main)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def fail_config(exc: ConfigError) -> int:
    print(f"{PROG}: config error: {exc}", file=sys.stderr)
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
    args = parser().parse_args(args_list)
    try:
        config = load_config(args.config) if args.config else parse_config("{}")
        if args.listen:
            checked = parse_config(json.dumps({"listen": args.listen}), "--listen")
            config = config.model_copy(update={"listen": checked.listen})
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
    logs.setup(args.log_level or config.log.level, args.log_format or config.log.format)
    try:
        shard = parse_shard(args.shard) if args.shard else None
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{PROG}: config OK: {len(config.devices)} devices, {web_settings.describe()}")
        return 0
    try:
        if args.once:
            from exporter.oneshot import poll_once

            return run(poll_once(config, args.once))
        if args.demo is not None:
            from exporter.demo import run_demo

            return run(run_demo(config, args.demo, listen_given=bool(args.listen)))
        run(run_until_signal(Exporter(config, config_path=args.config, shard=shard)))
    except SpoolError as exc:  # a spool directory that is locked or not writable
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
