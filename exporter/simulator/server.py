"""Serve simulated devices over real sockets, with faults, a call log and a control API.

In-process use (tests)::

    fleet = SimulatedFleet([DeviceSpec("c1", "1p7k", seed=1), DeviceSpec("m1", "em")],
                           speed=60.0)
    await fleet.start()          # each device on its own ephemeral port of 127.0.0.1
    fleet.url("c1")              # "http://127.0.0.1:PORT"
    fleet.host("c1")             # "127.0.0.1:PORT", the exporter's target syntax
    fleet.set_fault("c1", "hang")
    fleet.set_alias("c1", "<script>alert(1)</script>")
    fleet.calls                  # [CallRecord(device, http_method, rpc_method, time), ...]
    await fleet.stop()           # or: ``async with SimulatedFleet(...) as fleet:``

``DeviceSpec(address="127.1.0.7", port=8080)`` binds that exact socket: Linux routes all of
127.0.0.0/8 to lo, so thousands of devices can share one port number. Only loopback addresses
are ever bound.

Faults (``Fault.parse``), per device and changeable at runtime: ``none``, ``hang`` (never
answer), ``slow:<s>``, ``reset`` (TCP RST), ``http500``, ``nonjson`` (HTML page), ``rpcerror``
(error frame -1), ``truncated`` (body shorter than Content-Length), ``garbage`` (wrong value
types), ``flap:<s>`` (healthy and ``reset`` alternating every <s> seconds), ``refuse`` (not
listening). Spelling modes (``SPELLINGS``): ``both``, ``canonical``, ``lower``. A method the
device does not have is answered as its profile says, or as ``DeviceSpec.unknown_method``
(``UNKNOWN_METHOD_ANSWERS``: ``http404``, ``http500``, ``html``, ``rpc-1``, ``rpc-6``,
``rpc-32601``). ``DeviceSpec.compress`` (``gzip`` or ``deflate``) compresses replies for
clients that accept it. ``DeviceSpec.lacks`` takes methods away from a profile (firmware
without them); ``DeviceSpec.method_faults`` gives single methods a fault of their own.

Reads are ``GET /rpc/<Method>``, or JSON-RPC frames ``POST /rpc`` ``{"id": 1, "method":
"Charger_info.Get"}`` answered ``{"id": 1, "src": <device_id>, "dst": ..., "result": {...}}``.
Every request is counted; non-read methods (anything but ``*.Get``) are answered with error
frame -7 and never change a device. HTTP is spoken by a small asyncio protocol rather than
aiohttp.web so faults can break the exchange at any byte and thousands of listeners stay cheap.

``ControlServer`` serves the control API for one or more shards (a fleet, or a worker process
holding one): ``GET /devices``, ``GET /calls``, ``POST /devices/{name}/fault`` ``{"mode": ...}``,
``POST /devices/{name}/alias`` ``{"alias": ...}``, ``POST /devices/{name}/spelling``
``{"mode": ...}``, ``POST /devices/{name}/unknown`` ``{"mode": ...}``, ``GET
/devices/{name}/sessions`` (a charger's generated sessions with the anomalies injected).

While a charger reboots in its script (``DeviceSpec.anomalies``), every connection to it is
reset, whatever its fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import socket
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import IO, Any, Protocol, cast
from urllib.parse import unquote

from aiohttp import web

from .device import (
    UNKNOWN_METHOD_ANSWERS,
    Anomalies,
    Charger,
    Device,
    JSONDict,
    SimClock,
    default_serial,
    encode,
    make_device,
)

FAULT_MODES = (
    "none",
    "hang",
    "slow",
    "reset",
    "http500",
    "nonjson",
    "rpcerror",
    "truncated",
    "garbage",
    "flap",
    "refuse",
)
_TIMED_MODES = frozenset({"slow", "flap"})
SPELLINGS = ("both", "canonical", "lower")
COMPRESSIONS = ("none", "gzip", "deflate")

_JSON = "application/json"
_TEXT = "text/plain"
_HTML = "text/html"
_HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>Lektrico</title></head>"
    b"<body><h1>Lektrico charger</h1><p>Configuration portal</p></body></html>"
)
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}
_UNKNOWN_CODES = {"rpc-1": -1, "rpc-6": -6, "rpc-32601": -32601}
_UNKNOWN_MESSAGES = {-1: "General fail.", -6: "Error uknown key.", -32601: "Method not found"}
_MAX_HEAD = 16384
_MAX_BODY = 65536
_RST_LINGER = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class Fault:
    mode: str
    seconds: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Fault:
        mode, sep, arg = text.strip().partition(":")
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault {text!r}; known: {', '.join(FAULT_MODES)}")
        if mode not in _TIMED_MODES:
            if sep:
                raise ValueError(f"fault {mode!r} takes no argument")
            return cls(mode)
        try:
            seconds = float(arg)
        except ValueError:
            raise ValueError(f"fault {mode!r} needs seconds, e.g. {mode}:5") from None
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"fault {mode!r} needs a positive number of seconds")
        return cls(mode, seconds)

    def __str__(self) -> str:
        return f"{self.mode}:{self.seconds:g}" if self.mode in _TIMED_MODES else self.mode


@dataclass
class DeviceSpec:
    name: str
    profile: str = "1p7k"
    fault: str = "none"
    seed: int = 0
    spelling: str = "both"
    serial: int | None = None  # None: derived from seed and name, unique within the fleet
    alias: str | None = None  # None: the name
    ssid: str = "HomeNet"
    address: str | None = None  # None: the fleet's host
    port: int = 0  # 0: an ephemeral port
    unknown_method: str | None = None  # None: as the profile answers (UNKNOWN_METHOD_ANSWERS)
    compress: str = "none"  # COMPRESSIONS: replies compressed for clients that accept it
    lacks: tuple[str, ...] = ()  # canonical read methods this firmware does not have
    method_faults: dict[str, str] | None = None  # canonical method → fault, for it alone
    anomalies: Anomalies | None = None  # chargers: chances of irregular sessions (None: rare)


@dataclass(frozen=True, slots=True)
class CallRecord:
    device: str
    http_method: str
    rpc_method: str  # as spelled in the URL; the raw path for requests outside /rpc/
    time: float


def check_loopback(address: str) -> str:
    """The address normalised; ValueError unless it is IPv4 loopback (127.0.0.0/8)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address") from None
    if ip.version != 4 or not ip.is_loopback:
        raise ValueError(f"refusing to bind {address}: the simulator binds only 127.0.0.0/8")
    return str(ip)


def loopback_address(base: str, index: int) -> str:
    """The ``index``-th address after ``base``, still inside 127.0.0.0/8."""
    try:
        ip = ipaddress.IPv4Address(check_loopback(base)) + index
    except ipaddress.AddressValueError:
        raise ValueError(f"{base} + {index} leaves the IPv4 range") from None
    return check_loopback(str(ip))


def _response(
    status: int,
    content_type: str,
    body: bytes,
    keep_alive: bool,
    length: int | None = None,
    encoding: str | None = None,
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        + (f"Content-Encoding: {encoding}\r\n" if encoding else "")
        + f"Content-Length: {len(body) if length is None else length}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + body


def _compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    else:
        compressor = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()


class _BadRequest(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    target: str
    keep_alive: bool
    body: bytes = b""
    accept_encoding: str = ""


def _parse(buffer: bytearray) -> _Request | None:
    """Take one complete request off the front of ``buffer``; None while incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > _MAX_HEAD:
            raise _BadRequest
        return None
    lines = buffer[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _BadRequest
    method, target, version = parts
    length = 0
    connection = ""
    accept = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            try:
                length = int(value)
            except ValueError:
                raise _BadRequest from None
            if not 0 <= length <= _MAX_BODY:
                raise _BadRequest
        elif name == "connection":
            connection = value.strip().lower()
        elif name == "accept-encoding":
            accept = value.strip().lower()
        elif name == "transfer-encoding":
            raise _BadRequest  # the devices' tiny HTTP servers do not take chunked bodies either
    total = end + 4 + length
    if len(buffer) < total:
        return None
    body = bytes(buffer[end + 4 : total])
    del buffer[:total]
    http11 = version == "HTTP/1.1"
    keep_alive = "close" not in connection if http11 else "keep-alive" in connection
    return _Request(method, target, keep_alive, body, accept)


class _Connection(asyncio.Protocol):
    """One client connection to one device; answers requests strictly in order."""

    def __init__(self, endpoint: _Endpoint) -> None:
        self._endpoint = endpoint
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._busy = False  # a hanging or delayed answer holds back later requests
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._endpoint.connections.add(self)
        if self._endpoint.rebooting():
            self.reset()

    def connection_lost(self, exc: Exception | None) -> None:
        self._endpoint.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._process()

    def _process(self) -> None:
        while not self._busy and self._transport is not None:
            try:
                request = _parse(self._buffer)
            except _BadRequest:
                self.send(_response(400, _TEXT, b"Bad Request", False), False)
                return
            if request is None:
                return
            self._endpoint.handle(self, request)

    def send(self, data: bytes, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if not keep_alive:
            self._busy = True
            transport.close()

    def send_later(self, delay: float, data: bytes, keep_alive: bool) -> None:
        self._busy = True
        self._timer = asyncio.get_running_loop().call_later(delay, self._send_now, data, keep_alive)

    def _send_now(self, data: bytes, keep_alive: bool) -> None:
        self._timer = None
        self._busy = False
        self.send(data, keep_alive)
        self._process()

    def send_truncated(self, data: bytes, missing: int) -> None:
        """Send all but ``missing`` bytes of a response, then close the connection."""
        self.send(data[: len(data) - missing], keep_alive=False)

    def hang(self) -> None:
        self._busy = True

    def reset(self) -> None:
        """Abort with a TCP RST: linger 0 makes close() discard the connection at once."""
        transport = self._transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
        self._busy = True
        transport.abort()


class _Endpoint:
    """One device's socket, fault, spelling and open connections."""

    def __init__(
        self, fleet: SimulatedFleet, spec: DeviceSpec, device: Device, address: str
    ) -> None:
        self.fleet = fleet
        self.name = spec.name
        self.profile = spec.profile
        self.device = device
        self.address = address
        self.port = spec.port
        self.fault = Fault.parse(spec.fault)
        self.fault_since = time.monotonic()
        self.spelling = _check_spelling(spec.spelling)
        self.unknown_method = _check_unknown(spec.unknown_method or device.profile.unknown_method)
        self.compress = _check_compress(spec.compress)
        self.server: asyncio.Server | None = None
        self.connections: set[_Connection] = set()
        for method in spec.lacks:
            if method not in device.methods:
                raise ValueError(f"device {spec.name}: {method} is not a method of {spec.profile}")
        self._methods = {m.lower(): m for m in device.methods if m not in spec.lacks}
        self.method_faults = {
            method: Fault.parse(fault) for method, fault in (spec.method_faults or {}).items()
        }

    def bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.address, self.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno,
                f"device {self.name}: cannot listen on {self.address}:{self.port}: {exc.strerror}",
            ) from exc
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        return sock

    async def serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Connection(self), sock=sock)

    def rebooting(self) -> bool:
        """A charger in a reboot of its script: every connection is reset at once, which a
        client sees much as a refused one (the listening socket stays, so no rebinding)."""
        return isinstance(self.device, Charger) and self.device.offline

    def close(self) -> None:
        if self.server is not None:
            self.server.close()  # closes the listening socket synchronously
            self.server = None
        for connection in list(self.connections):
            connection.reset()

    def handle(self, connection: _Connection, request: _Request) -> None:
        path = request.target.partition("?")[0]
        frame = _frame(request) if path in ("/rpc", "/rpc/") else None
        if frame is not None:
            rpc = str(frame.get("method", ""))
        else:
            rpc = unquote(path[5:]) if path.startswith("/rpc/") else path
        self.fleet.record(self.name, request.method, rpc)
        if self.rebooting():
            connection.reset()  # a connection kept alive from before the reboot is gone too
            return
        fault = self.fault
        if self.method_faults:
            fault = self.method_faults.get(self._methods.get(rpc.lower(), ""), fault)
        mode = fault.mode
        if mode == "flap":
            elapsed = time.monotonic() - self.fault_since
            mode = "reset" if int(elapsed / fault.seconds) % 2 else "none"
        if mode == "reset":
            connection.reset()
            return
        if mode == "hang":
            connection.hang()
            return
        if frame is not None:
            status, content_type, body = self._answer_frame(frame, rpc, mode)
        else:
            status, content_type, body = self._answer(path, rpc, mode)
        encoding = None
        if self.compress != "none" and self.compress in request.accept_encoding:
            body, encoding = _compress(body, self.compress), self.compress
        if encoding is not None and mode not in ("truncated", "slow"):
            connection.send(
                _response(status, content_type, body, request.keep_alive, encoding=encoding),
                request.keep_alive,
            )
            return
        if mode == "truncated":
            connection.send_truncated(
                _response(status, content_type, body, False), missing=max(1, len(body) // 2)
            )
        elif mode == "slow":
            connection.send_later(
                fault.seconds,
                _response(status, content_type, body, request.keep_alive),
                request.keep_alive,
            )
        else:
            connection.send(
                _response(status, content_type, body, request.keep_alive), request.keep_alive
            )

    def _answer(self, path: str, rpc: str, mode: str) -> tuple[int, str, bytes]:
        if mode == "http500":
            return 500, _TEXT, b"Internal Server Error"
        if mode == "nonjson":
            return 200, _HTML, _HTML_PAGE
        if mode == "rpcerror":
            return 200, _JSON, self._error(-1, "General fail.")
        if not path.startswith("/rpc/"):
            return 404, _TEXT, b"Not Found"
        if not rpc.lower().endswith(".get"):
            return 200, _JSON, self._error(-7, "Prohibited action error.")
        method = self._resolve(rpc)
        if method is None:
            return self._unknown()
        if mode == "garbage":
            return 200, _JSON, self.device.garbled(method)
        return 200, _JSON, self.device.reply(method)

    def _unknown(self) -> tuple[int, str, bytes]:
        """A method the device does not have, answered as this firmware does."""
        answer = self.unknown_method
        if answer == "http404":
            return 404, _JSON, self._error(-6, "Error unknown method.")
        if answer == "http500":
            return 500, _TEXT, b"Internal Server Error"
        if answer == "html":
            return 200, _HTML, _HTML_PAGE
        code = _UNKNOWN_CODES[answer]
        return 200, _JSON, self._error(code, _UNKNOWN_MESSAGES[code])

    def _answer_frame(self, frame: JSONDict, rpc: str, mode: str) -> tuple[int, str, bytes]:
        """A JSON-RPC frame posted to /rpc: the reply, or the error, in a frame."""
        request_id = frame.get("id", 0)
        if mode in ("http500", "nonjson"):
            return self._answer("/rpc/" + rpc, rpc, mode)
        if mode == "rpcerror":
            return 200, _JSON, self._error(-1, "General fail.", request_id)
        if not rpc.lower().endswith(".get"):
            return 200, _JSON, self._error(-7, "Prohibited action error.", request_id)
        method = self._resolve(rpc)
        if method is None:
            return 200, _JSON, self._error(-6, "Error uknown key.", request_id)
        result = self.device.read(method)
        src = frame.get("src", "user")
        reply = {"id": request_id, "src": self.device.device_id, "dst": src, "result": result}
        return 200, _JSON, encode(reply)

    def _resolve(self, rpc: str) -> str | None:
        method = self._methods.get(rpc.lower())
        if method is None:
            return None
        if self.spelling == "canonical" and rpc != method:
            return None
        if self.spelling == "lower" and rpc != method.lower():
            return None
        return method

    def _error(self, code: int, message: str, request_id: Any = 0) -> bytes:
        return encode(
            {
                "id": request_id,
                "src": self.device.device_id,
                "dst": "user",
                "error": {"code": code, "message": message},
            }
        )


def _frame(request: _Request) -> JSONDict | None:
    """The JSON-RPC frame of a POST to /rpc, or None."""
    if request.method != "POST":
        return None
    try:
        frame = json.loads(request.body or b"null")
    except ValueError:
        return None
    return frame if isinstance(frame, dict) else None


def _open_log(path: str) -> IO[str]:
    # Line-buffered so several worker processes appending to one file never split a line.
    return open(path, "a", buffering=1)


def _check_spelling(spelling: str) -> str:
    if spelling not in SPELLINGS:
        raise ValueError(f"unknown spelling {spelling!r}; known: {', '.join(SPELLINGS)}")
    return spelling


def _check_unknown(answer: str) -> str:
    if answer not in UNKNOWN_METHOD_ANSWERS:
        known = ", ".join(UNKNOWN_METHOD_ANSWERS)
        raise ValueError(f"unknown unknown-method answer {answer!r}; known: {known}")
    return answer


def _check_compress(compress: str) -> str:
    if compress not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compress!r}; known: {', '.join(COMPRESSIONS)}")
    return compress


class SimulatedFleet:
    """A set of simulated devices, each listening on its own address and port."""

    def __init__(
        self,
        specs: Iterable[DeviceSpec],
        *,
        host: str = "127.0.0.1",
        speed: float = 1.0,
        frozen: bool = False,
        keep_calls: bool = True,
        call_log: str | None = None,
    ) -> None:
        self.clock = SimClock(speed=speed, frozen=frozen)
        self.calls: list[CallRecord] = []
        self._keep_calls = keep_calls
        self._call_log_path = call_log
        self._log: IO[str] | None = None
        self._counts: Counter[tuple[str, str]] = Counter()
        self._endpoints: dict[str, _Endpoint] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        default_address = check_loopback(host)
        serials: set[int] = set()
        sockets: set[tuple[str, int]] = set()
        for spec in specs:
            if spec.name in self._endpoints:
                raise ValueError(f"duplicate device name {spec.name!r}")
            address = check_loopback(spec.address or default_address)
            if spec.port:
                if (address, spec.port) in sockets:
                    raise ValueError(f"two devices on {address}:{spec.port}")
                sockets.add((address, spec.port))
            device = make_device(
                spec.name,
                spec.profile,
                seed=spec.seed,
                serial=self._unique_serial(spec, serials),
                alias=spec.alias,
                ssid=spec.ssid,
                clock=self.clock,
                frozen=frozen,
                anomalies=spec.anomalies,
            )
            self._endpoints[spec.name] = _Endpoint(self, spec, device, address)

    @staticmethod
    def _unique_serial(spec: DeviceSpec, taken: set[int]) -> int:
        if spec.serial is not None:
            return spec.serial
        serial = default_serial(spec.seed, spec.name)
        while serial in taken:  # device ids must stay unique across a fleet of thousands
            serial = 100000 + (serial - 100000 + 1) % 900000
        taken.add(serial)
        return serial

    async def __aenter__(self) -> SimulatedFleet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._call_log_path:
            self._log = _open_log(self._call_log_path)
        try:
            for endpoint in self._endpoints.values():
                sock = endpoint.bind()
                if endpoint.fault.mode == "refuse":
                    sock.close()  # the port number stays reserved in endpoint.port
                else:
                    await endpoint.serve(sock)
        except BaseException:
            await self.stop()
            raise
        self._started = True

    async def stop(self) -> None:
        self._started = False
        for task in self._tasks:
            task.cancel()
        for endpoint in self._endpoints.values():
            endpoint.close()
        await asyncio.sleep(0)  # let aborted connections run connection_lost
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def names(self) -> list[str]:
        return list(self._endpoints)

    def device(self, name: str) -> Device:
        return self._endpoint(name).device

    def host(self, name: str) -> str:
        endpoint = self._endpoint(name)
        return f"{endpoint.address}:{endpoint.port}"

    def url(self, name: str) -> str:
        return f"http://{self.host(name)}"

    def describe(self, name: str) -> JSONDict:
        endpoint = self._endpoint(name)
        return {
            "name": name,
            "profile": endpoint.profile,
            "device_id": endpoint.device.device_id,
            "host": self.host(name),
            "fault": str(endpoint.fault),
            "spelling": endpoint.spelling,
            "alias": endpoint.device.alias,
            "unknown": endpoint.unknown_method,
            "compress": endpoint.compress,
        }

    def set_fault(self, name: str, fault: str) -> None:
        """Change a device's fault; takes effect for the next request (or connection)."""
        endpoint = self._endpoint(name)
        new = Fault.parse(fault)
        was_refusing = endpoint.fault.mode == "refuse"
        endpoint.fault = new
        endpoint.fault_since = time.monotonic()
        if not self._started or was_refusing == (new.mode == "refuse"):
            return
        if new.mode == "refuse":
            endpoint.close()
            return
        # Binding now (synchronously) means a client connecting right after set_fault
        # queues in the backlog instead of being refused.
        task = asyncio.get_running_loop().create_task(endpoint.serve(endpoint.bind()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def set_alias(self, name: str, alias: str) -> None:
        self._endpoint(name).device.set_alias(alias)

    def set_spelling(self, name: str, spelling: str) -> None:
        self._endpoint(name).spelling = _check_spelling(spelling)

    def set_unknown_method(self, name: str, answer: str) -> None:
        """How the device answers methods it does not have, from the next request on."""
        self._endpoint(name).unknown_method = _check_unknown(answer)

    def set_compress(self, name: str, compress: str) -> None:
        self._endpoint(name).compress = _check_compress(compress)

    def call_counts(self) -> Counter[tuple[str, str]]:
        """Requests so far by (device, rpc method), kept even when ``keep_calls`` is off."""
        return Counter(self._counts)

    def record(self, device: str, http_method: str, rpc_method: str) -> None:
        self._counts[device, rpc_method] += 1
        if self._keep_calls or self._log is not None:
            call = CallRecord(device, http_method, rpc_method, time.time())
            if self._keep_calls:
                self.calls.append(call)
            if self._log is not None:
                self._log.write(json.dumps(asdict(call)) + "\n")

    def handle_command(self, command: JSONDict) -> Any:
        """Answer a control command (see ``ControlServer``); errors carry an HTTP status."""
        op = command.get("op")
        if op == "devices":
            return [self.describe(name) for name in self._endpoints]
        if op == "calls":
            return [[device, method, n] for (device, method), n in self._counts.items()]
        if op == "set":
            name = str(command.get("device"))
            setter = {
                "fault": self.set_fault,
                "alias": self.set_alias,
                "spelling": self.set_spelling,
                "unknown": self.set_unknown_method,
                "compress": self.set_compress,
            }.get(str(command.get("field")))
            if name not in self._endpoints:
                return {"error": f"unknown device {name!r}", "status": 404}
            if setter is None:
                return {"error": "unknown field", "status": 400}
            try:
                setter(name, str(command.get("value")))
            except ValueError as exc:
                return {"error": str(exc), "status": 400}
            return self.describe(name)
        if op == "sessions":
            return self.generated_sessions(str(command.get("device")))
        return {"error": f"unknown op {op!r}", "status": 400}

    def generated_sessions(self, name: str) -> Any:
        """A charger's generated sessions (ground truth), times as unix seconds."""
        if name not in self._endpoints:
            return {"error": f"unknown device {name!r}", "status": 404}
        device = self.device(name)
        if not isinstance(device, Charger):
            return {"error": f"{name} is not a charger", "status": 400}
        unix = self.clock.unix
        return [
            {
                **s,
                "start": unix(s["start"]),
                "end": None if s["end"] is None else unix(s["end"]),
                "anomalies": dict(s["anomalies"]),
            }
            for s in device.generated
        ]

    async def command(self, command: JSONDict) -> Any:
        return self.handle_command(command)

    def _endpoint(self, name: str) -> _Endpoint:
        try:
            return self._endpoints[name]
        except KeyError:
            raise KeyError(f"unknown device {name!r}") from None


class FleetShard(Protocol):
    """Anything that answers control commands: a fleet, or a link to a worker process."""

    async def command(self, command: JSONDict) -> Any: ...


class ControlServer:
    """HTTP control API over one or more shards of a simulated fleet."""

    def __init__(
        self, shards: Sequence[FleetShard], host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._shards = shards
        self._host = check_loopback(host)
        self._port = port
        self._owner: dict[str, FleetShard] = {}
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        for shard in self._shards:
            for device in await shard.command({"op": "devices"}):
                self._owner[device["name"]] = shard
        app = web.Application()
        app.router.add_get("/devices", self._devices)
        app.router.add_get("/calls", self._calls)
        app.router.add_get("/devices/{name}/sessions", self._sessions)
        app.router.add_post(
            "/devices/{name}/{field:fault|alias|spelling|unknown|compress}", self._set
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _devices(self, request: web.Request) -> web.Response:
        devices: list[JSONDict] = []
        for shard in self._shards:
            devices.extend(await shard.command({"op": "devices"}))
        devices.sort(key=lambda device: str(device["name"]))
        return web.json_response({"devices": devices})

    async def _calls(self, request: web.Request) -> web.Response:
        by_device: dict[str, dict[str, int]] = {}
        by_method: Counter[str] = Counter()
        for shard in self._shards:
            for device, method, n in await shard.command({"op": "calls"}):
                by_device.setdefault(device, {})[method] = n
                by_method[method] += n
        return web.json_response(
            {"total": sum(by_method.values()), "by_device": by_device, "by_method": dict(by_method)}
        )

    async def _sessions(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        shard = self._owner.get(name)
        if shard is None:
            return web.json_response({"error": f"unknown device {name!r}"}, status=404)
        reply = await shard.command({"op": "sessions", "device": name})
        if isinstance(reply, dict) and "error" in reply:
            return web.json_response({"error": reply["error"]}, status=reply["status"])
        return web.json_response({"sessions": reply})

    async def _set(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        field = request.match_info["field"]
        shard = self._owner.get(name)
        if shard is None:
            return web.json_response({"error": f"unknown device {name!r}"}, status=404)
        try:
            body = await request.json()
            value = body["alias" if field == "alias" else "mode"]
        except (ValueError, KeyError, TypeError):
            key = "alias" if field == "alias" else "mode"
            return web.json_response(
                {"error": f'body must be JSON like {{"{key}": ...}}'}, status=400
            )
        reply = await shard.command(
            {"op": "set", "device": name, "field": field, "value": str(value)}
        )
        if "error" in reply:
            return web.json_response({"error": reply["error"]}, status=reply["status"])
        return web.json_response(reply)
