"""The ``simulate`` command: serve a fleet of simulated devices from one or more processes.

    lektrico-exporter simulate --devices 1000 --mix 1p7k,3p22k,em,3em \\
        --address-base 127.1.0.1 --port 8080 --processes 4 --fault-share hang=0.05 \\
        --targets-file sim-targets.yaml --control 127.0.0.1:9100

Device ``i`` (from 0) is named ``sim-0001``, ``sim-0002``, ..., gets profile ``mix[i % len(mix)]``
and listens on ``address-base + i`` at ``--port``, or with ``--port-base`` on one address
(127.0.0.1 unless ``--address-base`` is given) at ``port-base + i``. Only 127.0.0.0/8 is bound.
One line is printed on stdout once every device listens; SIGTERM or SIGINT stops cleanly.

``--processes P`` deals the devices round-robin to P worker processes; the control API runs in
the parent and forwards to the workers over pipes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import resource
import signal
import sys
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

import yaml

from .device import PROFILES, UNKNOWN_METHOD_ANSWERS, JSONDict
from .server import (
    COMPRESSIONS,
    SPELLINGS,
    ControlServer,
    DeviceSpec,
    Fault,
    FleetShard,
    SimulatedFleet,
    check_loopback,
    loopback_address,
)

_WORKER_START_TIMEOUT = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--devices",
        type=int,
        default=4,
        metavar="N",
        help="number of simulated devices (default 4)",
    )
    parser.add_argument(
        "--mix",
        default="1p7k,3p22k,em,3em",
        help=f"profiles dealt in turn; known: {', '.join(PROFILES)}",
    )
    parser.add_argument(
        "--address-base",
        metavar="ADDR",
        help="first loopback address, one address per device (default 127.1.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8080,
        help="port every device listens on with one address each (default 8080)",
    )
    parser.add_argument(
        "--port-base",
        type=int,
        metavar="PORT",
        help="one port per device instead, from PORT, on a single address",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="P",
        help="worker processes to spread the devices over (default 1)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME=MODE",
        help="fault of one device, e.g. sim-0003=slow:5 (repeatable)",
    )
    parser.add_argument(
        "--fault-share",
        action="append",
        default=[],
        metavar="MODE=FRACTION",
        help="fault for a seeded random share of devices, e.g. hang=0.1",
    )
    parser.add_argument(
        "--spelling",
        choices=SPELLINGS,
        default="both",
        help="method spellings every device accepts (default both)",
    )
    parser.add_argument(
        "--unknown-method",
        choices=UNKNOWN_METHOD_ANSWERS,
        metavar="ANSWER",
        help="how every device answers a method it lacks (default: as its profile does; "
        f"known: {', '.join(UNKNOWN_METHOD_ANSWERS)})",
    )
    parser.add_argument(
        "--compress",
        choices=COMPRESSIONS,
        default="none",
        help="compress replies for clients that accept it (default none)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--speed", type=float, default=1.0, help="simulated seconds per real second (default 1)"
    )
    parser.add_argument(
        "--frozen", action="store_true", help="pin every device at a deterministic snapshot"
    )
    parser.add_argument("--name-prefix", default="sim-", help="device name prefix")
    parser.add_argument(
        "--targets-file",
        metavar="PATH",
        help="write the devices as exporter targets (YAML) once listening",
    )
    parser.add_argument("--control", metavar="HOST:PORT", help="serve the control API here")
    parser.add_argument(
        "--call-log", metavar="PATH", help="append one JSON line per request received"
    )


def run(args: argparse.Namespace) -> int:
    try:
        specs = plan_fleet(args)
        control = _control_address(args.control) if args.control else None
        if args.speed <= 0 or args.processes < 1:
            raise ValueError("--speed and --processes must be positive")
    except ValueError as exc:
        print(f"simulate: error: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(_serve(args, specs, control))
    except (OSError, RuntimeError) as exc:
        print(f"simulate: error: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simulate", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def plan_fleet(args: argparse.Namespace) -> list[DeviceSpec]:
    """The device specs the arguments describe; ValueError for inconsistent arguments."""
    if args.devices < 1:
        raise ValueError("--devices must be at least 1")
    mix = [name.strip() for name in args.mix.split(",") if name.strip()]
    unknown = [name for name in mix if name not in PROFILES]
    if not mix or unknown:
        raise ValueError(f"--mix: unknown profile(s) {unknown}; known: {', '.join(PROFILES)}")
    width = max(4, len(str(args.devices)))
    names = [f"{args.name_prefix}{i + 1:0{width}d}" for i in range(args.devices)]
    faults = _plan_faults(args, names)
    specs = []
    for i, name in enumerate(names):
        if args.port_base is not None:
            address = check_loopback(args.address_base or "127.0.0.1")
            port = args.port_base + i
        else:
            address = loopback_address(args.address_base or "127.1.0.1", i)
            port = args.port
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} of {name} is out of range")
        specs.append(
            DeviceSpec(
                name,
                mix[i % len(mix)],
                fault=faults.get(name, "none"),
                seed=args.seed,
                spelling=args.spelling,
                address=address,
                port=port,
                unknown_method=getattr(args, "unknown_method", None),
                compress=getattr(args, "compress", "none"),
            )
        )
    return specs


def _plan_faults(args: argparse.Namespace, names: list[str]) -> dict[str, str]:
    plan: dict[str, str] = {}
    order = list(names)
    random.Random(f"{args.seed}:faults").shuffle(order)
    taken = 0
    for item in args.fault_share:
        mode, _, fraction = item.rpartition("=")
        Fault.parse(mode)
        try:
            share = float(fraction)
        except ValueError:
            raise ValueError(f"--fault-share {item!r}: expected MODE=FRACTION") from None
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"--fault-share {item!r}: fraction must be between 0 and 1")
        count = round(share * len(names))
        if taken + count > len(names):
            raise ValueError("--fault-share fractions add up to more than 1")
        plan.update((name, mode) for name in order[taken : taken + count])
        taken += count
    known = set(names)
    for item in args.fault:
        name, _, mode = item.partition("=")
        if name not in known:
            raise ValueError(f"--fault {item!r}: no device named {name!r}")
        Fault.parse(mode)
        plan[name] = mode
    return plan


def _control_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return check_loopback(host), int(port)
    except ValueError as exc:
        raise ValueError(f"--control {text!r}: {exc}") from None


def write_targets(path: str, devices: list[JSONDict]) -> None:
    """Write devices (``describe`` dicts) as a YAML list the exporter config can include."""
    targets = [
        {"name": d["name"], "host": d["host"], "labels": {"profile": d["profile"]}} for d in devices
    ]
    with open(path, "w") as out:
        yaml.safe_dump({"devices": targets}, out, sort_keys=False)


T = TypeVar("T")


@dataclass(frozen=True)
class _FleetOptions:
    speed: float
    frozen: bool
    call_log: str | None


async def _serve(
    args: argparse.Namespace, specs: list[DeviceSpec], control_address: tuple[str, int] | None
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    options = _FleetOptions(args.speed, args.frozen, args.call_log)
    processes = min(args.processes, len(specs))
    _raise_fd_limit(len(specs) // processes)
    fleet: SimulatedFleet | None = None
    workers: list[_Worker] = []
    control: ControlServer | None = None
    try:
        shards: list[FleetShard]
        if processes == 1:
            fleet = _make_fleet(specs, options)
            await fleet.start()
            shards = [fleet]
        else:
            workers = [_Worker(specs[i::processes], options) for i in range(processes)]
            await asyncio.gather(*(worker.ready() for worker in workers))
            shards = list(workers)
        if control_address:
            control = ControlServer(shards, *control_address)
            await control.start()
        if args.targets_file:
            devices = [d for shard in shards for d in await shard.command({"op": "devices"})]
            write_targets(args.targets_file, sorted(devices, key=lambda d: str(d["name"])))
        mix = ", ".join(f"{n} {p}" for p, n in Counter(s.profile for s in specs).items())
        print(
            f"simulating {len(specs)} devices ({mix}) in {processes} process(es)"
            + (f"; control API {control.url}" if control else ""),
            flush=True,
        )
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if any(not worker.alive for worker in workers):
                raise RuntimeError("a worker process died")
        return 0
    finally:
        if control is not None:
            await control.stop()
        await asyncio.gather(*(worker.stop() for worker in workers))
        if fleet is not None:
            await fleet.stop()


def _run(main: Coroutine[Any, Any, T]) -> T:
    """On uvloop where it is installed: serving a fleet is all the simulator does, and
    uvloop does it for half the CPU of the standard loop (0.062 against 0.124 ms a request in
    bench.pollcost). A benchmark's simulator shares the machine with the exporters it
    measures. LEKTRICO_NO_UVLOOP=1 uses the standard loop."""
    if not os.environ.get("LEKTRICO_NO_UVLOOP"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def _make_fleet(specs: list[DeviceSpec], options: _FleetOptions) -> SimulatedFleet:
    # Call records are only counted: a long run at hundreds of requests/s must not grow memory.
    return SimulatedFleet(
        specs,
        speed=options.speed,
        frozen=options.frozen,
        keep_calls=False,
        call_log=options.call_log,
    )


def _raise_fd_limit(devices: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    if devices + 256 > soft:
        raise RuntimeError(
            f"{devices} devices per process need more than the {soft} open "
            "files allowed; use more --processes or raise ulimit -n"
        )


class _Worker:
    """A worker process serving a share of the fleet, driven over a pipe."""

    def __init__(self, specs: list[DeviceSpec], options: _FleetOptions) -> None:
        # spawn, not fork: a forked child would inherit the parent's running event loop.
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process: BaseProcess = context.Process(
            target=_worker_main, args=(specs, options, child), daemon=True
        )
        self._process.start()
        child.close()
        self._lock = asyncio.Lock()

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    async def ready(self) -> None:
        if not await asyncio.to_thread(self._conn.poll, _WORKER_START_TIMEOUT):
            raise RuntimeError("a worker process did not start in time")
        try:
            message = self._conn.recv()
        except EOFError:
            raise RuntimeError("a worker process exited while starting") from None
        if "error" in message:
            raise RuntimeError(message["error"])

    async def command(self, command: JSONDict) -> Any:
        async with self._lock:
            return await asyncio.to_thread(self._roundtrip, command)

    def _roundtrip(self, command: JSONDict) -> Any:
        self._conn.send(command)
        return self._conn.recv()

    async def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send({"op": "stop"})
        await asyncio.to_thread(self._process.join, 10)
        if self._process.is_alive():
            self._process.kill()
            await asyncio.to_thread(self._process.join, 5)
        self._conn.close()


def _worker_main(specs: list[DeviceSpec], options: _FleetOptions, conn: Connection) -> None:
    try:
        _raise_fd_limit(len(specs))
    except RuntimeError as exc:
        conn.send({"error": str(exc)})
        return
    _run(_worker(specs, options, conn))


async def _worker(specs: list[DeviceSpec], options: _FleetOptions, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    fleet = _make_fleet(specs, options)
    try:
        await fleet.start()
    except (OSError, ValueError) as exc:
        conn.send({"error": str(exc)})
        return
    conn.send({"ready": True})

    def on_message() -> None:
        # uvloop makes a watched descriptor non-blocking, and a Connection sends and receives
        # a message larger than the pipe's buffer only on a blocking one.
        os.set_blocking(conn.fileno(), True)
        try:
            message = conn.recv()
        except EOFError:  # the parent is gone
            loop.remove_reader(conn.fileno())
            stop.set()
            return
        if message.get("op") == "stop":
            stop.set()
        else:
            conn.send(fleet.handle_command(message))

    loop.add_reader(conn.fileno(), on_message)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(conn.fileno())
        await fleet.stop()


if __name__ == "__main__":
    raise SystemExit(main())
