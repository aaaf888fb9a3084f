"""Configuration: one frozen section (`config.model`) per key, and `load_config()`.

Every section forbids unknown keys, so a misspelt key is an error naming it instead of a setting
silently ignored. Durations are stored as float seconds. Relative paths (`device_files`,
`token_file`, `ca_file`, `spool_dir`, `web.config_file`, `line_protocol.path`, `!file`) are
relative to the directory of the file that mentions them, as in Prometheus, and are stored
resolved. Every problem is raised as a `ConfigError` whose text is one line:
`<key path>: <what is wrong> (line N)`; reading the YAML is config_loader's job.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from exporter.catalogue.table import RESERVED_LABELS
from exporter.config.addresses import (
    HOSTNAME,
    Endpoint,
    check_hostname,
    parse_endpoint,
    parse_url,
    split_host_port,
)
from exporter.config.loader import (
    MAX_SECRET_BYTES,
    ConfigError,
    ConfigFileError,
    ConfigSyntaxError,
    ConfigValueError,
    DeviceFileMemory,
    FieldProblem,
    FileTooLargeError,
    Loc,
    NotRegularFileError,
    check_regular,
    describe_kind,
    parse_settings,
    read_bounded,
    read_text,
)
from exporter.config.model import (
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    Section,
    ValidationInfo,
    field_validator,
    model_validator,
)
from exporter.outputs.influx.lines import escape_key
from exporter.sessions.tariffs import TariffsConfig

__all__ = [
    "Config",
    "ConfigError",
    "ConfigFileError",
    "ConfigSyntaxError",
    "ConfigValueError",
    "DeviceConfig",
    "DeviceFileMemory",
    "DiscoveryConfig",
    "InfluxConfig",
    "LineProtocolConfig",
    "LogConfig",
    "PollConfig",
    "ProbeConfig",
    "ShardConfig",
    "StateConfig",
    "WebConfig",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
]

# ---- durations -------------------------------------------------------------------------------

_NUM = r"\d+(?:\.\d+)?"
_DURATION = re.compile(
    rf"(?:(?P<d>{_NUM})d)?(?:(?P<h>{_NUM})h)?(?:(?P<m>{_NUM})m(?!s))?"
    rf"(?:(?P<s>{_NUM})s)?(?:(?P<ms>{_NUM})ms)?"
)
_SECONDS = re.compile(_NUM)
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION_HINT = "must be a duration like 15s, 5m or 30"


def parse_duration(value: str | int | float) -> float:
    """Seconds in `value`: "500ms", "15s", "5m", "1h30m", "2d", or plain seconds (30, "2.5").

    Units go from largest to smallest, each at most once. Zero, negative and non-finite
    durations are rejected: every duration in the configuration must be positive.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{_DURATION_HINT}, got {describe_kind(value)}")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"must be a positive duration, got {value!r}")
        match = _DURATION.fullmatch(text)
        if _SECONDS.fullmatch(text):
            seconds = float(text)
        elif text and match:
            seconds = sum(float(n) * _UNIT_SECONDS[u] for u, n in match.groupdict().items() if n)
        else:
            raise ValueError(f"{_DURATION_HINT}, got {value!r}")
    else:
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds):
            raise ValueError(f"{_DURATION_HINT}, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"must be longer than zero, got {value!r}")
    return seconds


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS |= {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def parse_size(value: str) -> int:
    """Bytes from `1073741824`, `1GiB`, `500MB` (KiB/MiB/GiB/TiB are powers of 1024)."""
    found = _SIZE.fullmatch(value.strip())
    if not found:
        raise ValueError(f"must be a size like 1GiB, 500MiB or 1073741824, got {value!r}")
    return int(float(found[1]) * _SIZE_UNITS[(found[2] or "").upper()])


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration for messages: 90 → "1m30s", 0.25 → "250ms"."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    parts = []
    rest = seconds
    for unit in ("d", "h", "m"):
        count = int(rest // _UNIT_SECONDS[unit])
        if count:
            parts.append(f"{count}{unit}")
            rest -= count * _UNIT_SECONDS[unit]
    if rest or not parts:
        parts.append(f"{round(rest, 3):g}s")
    return "".join(parts)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Precision = Literal["s", "ms", "us", "ns"]
Port = Annotated[int, Field(ge=1, le=65535)]
NonEmpty = Annotated[str, Field(min_length=1)]

# ---- validation helpers ----------------------------------------------------------------------


# Unicode's control characters (category Cc) are exactly these two ranges.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def _resolve(path: str, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir", Path())
    return Path(base) / Path(path).expanduser()


def _existing_file(path: str | None, info: ValidationInfo) -> str | None:
    if path is None:
        return None
    resolved = _resolve(path, info)
    try:
        check_regular(resolved.stat().st_mode)
    except NotRegularFileError as exc:  # a FIFO would block whoever reads it later
        raise ValueError(f"{path} is {exc.kind}, not a file") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a file") from None
    except OSError:
        raise ValueError(f"file {path} not found") from None
    return str(resolved)


_Section = Section


# ---- sections --------------------------------------------------------------------------------

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _null_is_empty(labels: Any) -> Any:
    return {} if labels is None else labels


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for name, value in labels.items():
        if not _LABEL_NAME.fullmatch(name):
            problem = "must be letters, digits and _, not starting with a digit"
            raise FieldProblem((name,), f"label name {name!r} {problem}")
        if name.startswith("__"):
            raise FieldProblem((name,), "label names starting with __ are reserved")
        if name in RESERVED_LABELS:
            raise FieldProblem((name,), f"label name {name!r} is reserved by the exporter")
        if _has_control(value):
            raise FieldProblem((name,), "label value must not contain control characters")
    return labels


class DeviceConfig(_Section):
    name: str
    host: str
    labels: dict[str, str] = {}
    timeout: Duration | None = None
    model: Literal["1p7k", "3p22k", "em", "3em"] | None = None
    username: NonEmpty | None = None
    password: SecretStr | None = None
    # Two names at one address are one charger polled twice, unless both entries say so (a
    # gateway that forwards to several units by credentials, say).
    shared_host: bool = False
    tariff: NonEmpty | None = None  # a name in tariffs.table; else chosen by label or default
    _endpoint: Endpoint = PrivateAttr()

    @property
    def base_url(self) -> str:
        """URL of the device with the port spelt out: "http://[fd00::7]:80"."""
        return self._endpoint.base_url

    @property
    def address(self) -> str:
        """Host and port of the device: "192.168.1.20:80", "[fd00::7]:80"."""
        return self._endpoint.address

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("must not be empty")
        if len(name) > 128:
            raise ValueError(f"must be at most 128 characters, got {len(name)}")
        if _has_control(name):
            raise ValueError("must not contain control characters")
        return name

    @field_validator("host")
    @classmethod
    def _check_host(cls, host: str) -> str:
        parse_endpoint(host)
        return host.strip()

    @field_validator("labels", mode="before")
    @classmethod
    def _null_labels(cls, labels: Any) -> Any:
        return _null_is_empty(labels)

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        return _check_labels(labels)

    @model_validator(mode="after")
    def _check_credentials(self) -> DeviceConfig:
        if (self.username is None) != (self.password is None):
            key = "password" if self.password is None else "username"
            raise FieldProblem((key,), "username and password must be given together")
        if self.username is not None and self.password is not None:
            # HTTP Basic authentication sends Latin-1; anything else fails every poll. The
            # message names neither the value nor the character: either may be a secret.
            secrets = {"username": self.username, "password": self.password.get_secret_value()}
            for key, value in secrets.items():
                try:
                    value.encode("latin-1")
                except UnicodeEncodeError:
                    problem = "has a character that HTTP Basic authentication cannot send"
                    message = f"{key} of device {self.name!r} {problem} (only Latin-1 text)"
                    raise FieldProblem((key,), message) from None
            if ":" in self.username:
                message = f"username of device {self.name!r} must not contain ':'"
                raise FieldProblem(("username",), f"{message} (HTTP Basic authentication)")
        self._endpoint = parse_endpoint(self.host)
        return self


# Under this, a typo such as `15ms` for `15s` would poll each device as fast as it answers.
MIN_POLL_INTERVAL = 0.1


class PollConfig(_Section):
    interval: Duration = 15.0
    timeout: Duration = 5.0
    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 64
    slow_interval: Duration = 600.0
    identity_interval: Duration = 3600.0
    max_backoff: Duration = 300.0

    @model_validator(mode="after")
    def _check_order(self) -> PollConfig:
        interval = format_duration(self.interval)
        if self.interval < MIN_POLL_INTERVAL:
            floor = format_duration(MIN_POLL_INTERVAL)
            raise FieldProblem(("interval",), f"must be at least {floor}, got {interval}")
        if self.timeout >= self.interval:
            message = f"timeout {format_duration(self.timeout)} must be shorter than interval"
            raise FieldProblem(("timeout",), f"{message} {interval}")
        for key in ("slow_interval", "identity_interval", "max_backoff"):
            value: float = getattr(self, key)
            if value < self.interval:
                message = f"{key} {format_duration(value)} must not be shorter than interval"
                raise FieldProblem((key,), f"{message} {interval}")
        return self


class ProbeConfig(_Section):
    allow: list[str] = []
    default_port: Port = 80
    # Probes of unconfigured targets in flight at once, on their own connection pool; the
    # excess is answered 503 at once, so probes cannot take the background polls' sockets.
    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 20

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in self.allow)

    @field_validator("allow")
    @classmethod
    def _check_networks(cls, allow: list[str]) -> list[str]:
        for i, cidr in enumerate(allow):
            if "%" in cidr:
                raise FieldProblem((i,), f"{cidr!r}: IPv6 zone ids are not supported here")
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                hint = "use IP networks like 192.168.1.0/24 or fd00::/64"
                if HOSTNAME.fullmatch(cidr.strip()) and re.search(r"[A-Za-z]", cidr):
                    raise FieldProblem((i,), f"{cidr!r} is a hostname; {hint}") from None
                raise FieldProblem((i,), f"{cidr!r} is not an IP network; {hint}") from None
        return allow


class InfluxConfig(_Section):
    url: str
    token: SecretStr | None = None
    token_file: str | None = None
    org: NonEmpty | None = None
    bucket: NonEmpty | None = None
    database: NonEmpty | None = None
    retention_policy: NonEmpty | None = None
    username: NonEmpty | None = None
    password: SecretStr | None = None
    precision: Precision = "s"
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000
    flush_interval: Duration = 10.0
    timeout: Duration = 10.0
    gzip: bool = True
    verify_tls: bool = True
    ca_file: str | None = None
    # A 100-device fleet polled every 15 s makes ~108,000 points an hour (4.5 a reading): the
    # default holds ~4.6 hours of it in ~290 MB; the spool holds more on disk.
    buffer_points: Annotated[int, Field(ge=1)] = 500_000
    spool_dir: str | None = None
    # With spool_dir, the bound on what waits: the spool's size on disk (buffer_points then
    # bounds only the part held in memory). About 4 million points, 40 hours of that fleet.
    spool_max_bytes: Annotated[int, Field(ge=1 << 20)] = 1 << 30
    max_retry_delay: Duration = 300.0
    measurement_prefix: str = "lektrico"

    @model_validator(mode="before")
    @classmethod
    def _read_token_file(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("token_file"), str):
            return data
        name = data["token_file"]
        if data.get("token") is not None:
            raise FieldProblem(("token_file",), "set either token or token_file, not both")
        path = _resolve(name, info)
        try:
            token = read_bounded(path, MAX_SECRET_BYTES).decode("utf-8").strip()
        except FileTooLargeError:
            message = f"{name} is larger than the limit of {MAX_SECRET_BYTES // 1024} KiB"
            raise FieldProblem(("token_file",), message) from None
        except NotRegularFileError as exc:
            raise FieldProblem(("token_file",), f"{name} is {exc.kind}, not a file") from None
        except IsADirectoryError:
            raise FieldProblem(("token_file",), f"{name} is a directory, not a file") from None
        except OSError as exc:
            reason = "not found" if isinstance(exc, FileNotFoundError) else exc.strerror
            raise FieldProblem(("token_file",), f"cannot read {name}: {reason}") from None
        except UnicodeDecodeError:
            raise FieldProblem(("token_file",), f"{name} is not UTF-8 text") from None
        if not token:
            raise FieldProblem(("token_file",), f"{name} is empty")
        return {**data, "token": token, "token_file": str(path)}

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parse_url(url.strip(), what="url")
        return url.strip()

    @field_validator("measurement_prefix")
    @classmethod
    def _check_prefix(cls, prefix: str) -> str:
        if prefix and not _LABEL_NAME.fullmatch(prefix):
            raise ValueError("must be letters, digits and _, not starting with a digit")
        return prefix

    @field_validator("ca_file")
    @classmethod
    def _check_ca_file(cls, path: str | None, info: ValidationInfo) -> str | None:
        return _existing_file(path, info)

    @field_validator("spool_max_bytes", mode="before")
    @classmethod
    def _parse_size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("spool_dir")
    @classmethod
    def _resolve_spool_dir(cls, path: str | None, info: ValidationInfo) -> str | None:
        return None if path is None else str(_resolve(path, info))

    @model_validator(mode="after")
    def _check_form(self) -> InfluxConfig:
        if self.bucket is None and self.database is None:
            raise ValueError("set bucket (InfluxDB 2.x/3.x) or database (InfluxDB 1.x)")
        if self.bucket is not None and self.database is not None:
            message = "set bucket (InfluxDB 2.x/3.x) or database (InfluxDB 1.x), not both"
            raise FieldProblem(("database",), message)
        if self.retention_policy is not None and self.database is None:
            raise FieldProblem(("retention_policy",), "only applies with database (InfluxDB 1.x)")
        if self.org is not None and self.bucket is None:
            raise FieldProblem(("org",), "only applies with bucket (InfluxDB 2.x/3.x)")
        if (self.username is None) != (self.password is None):
            key = "password" if self.password is None else "username"
            raise FieldProblem((key,), "username and password must be given together")
        if self.ca_file is not None and not self.verify_tls:
            raise FieldProblem(("ca_file",), "has no effect with verify_tls: false")
        if self.buffer_points < self.batch_size:
            message = f"must be at least batch_size ({self.batch_size})"
            raise FieldProblem(("buffer_points",), message)
        return self


class LineProtocolConfig(_Section):
    path: NonEmpty
    precision: Precision = "s"

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, path: str, info: ValidationInfo) -> str:
        return path if path == "-" else str(_resolve(path, info))


class WebConfig(_Section):
    config_file: str | None = None
    # Client connections the HTTP server keeps open at once (lowered at start to fit the file
    # descriptor limit, with a reserve for device polls); the excess is closed at once.
    max_connections: Annotated[int, Field(ge=8, le=1_000_000)] = 512
    # POST/PUT /-/reload, as Prometheus's --web.enable-lifecycle; SIGHUP always reloads.
    enable_lifecycle: bool = False

    @field_validator("config_file")
    @classmethod
    def _check_config_file(cls, path: str | None, info: ValidationInfo) -> str | None:
        return _existing_file(path, info)


class ShardConfig(_Section):
    index: Annotated[int, Field(ge=0)]
    count: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _check_index(self) -> ShardConfig:
        if self.index >= self.count:
            message = f"index {self.index} must be less than count {self.count} (counted from 0)"
            raise FieldProblem(("index",), message)
        return self


_SERVICE_TYPE = re.compile(r"_[A-Za-z0-9-]{1,15}\._(?:tcp|udp)\.local\.?")


class DiscoveryConfig(_Section):
    enabled: bool = False
    service: str = "_http._tcp.local."
    name_prefix: str = "Lektrico-"
    labels: dict[str, str] = {}
    interfaces: list[str] | None = None
    port_override: Port | None = None
    grace_period: Duration = 300.0

    @field_validator("service")
    @classmethod
    def _check_service(cls, service: str) -> str:
        service = service.strip()
        if not _SERVICE_TYPE.fullmatch(service):
            raise ValueError(
                f"must be a DNS-SD service type like _http._tcp.local., got {service!r}"
            )
        return service if service.endswith(".") else f"{service}."

    @field_validator("labels", mode="before")
    @classmethod
    def _null_labels(cls, labels: Any) -> Any:
        return _null_is_empty(labels)

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        return _check_labels(labels)

    @field_validator("interfaces")
    @classmethod
    def _check_interfaces(cls, interfaces: list[str] | None) -> list[str] | None:
        if interfaces is None:
            return None
        checked = []
        for i, address in enumerate(interfaces):
            try:
                checked.append(str(ipaddress.ip_address(address.strip())))
            except ValueError:
                hint = "give the IP address of the interface, like 192.168.1.5"
                raise FieldProblem((i,), f"{address!r} is not an IP address; {hint}") from None
        return checked

    @model_validator(mode="after")
    def _check_zeroconf_installed(self) -> DiscoveryConfig:
        # Checked here so that --check-config and a reload report it like any other config error.
        if self.enabled and importlib.util.find_spec("zeroconf") is None:
            message = "needs the zeroconf package: pip install 'lektrico-exporter[discovery]'"
            raise FieldProblem(("enabled",), message)
        return self


class StateConfig(_Section):
    """The state store (sessions, derived counters); see exporter/sessions/store.py."""

    enabled: bool = True
    path: NonEmpty | None = None  # None: $STATE_DIRECTORY, /var/lib/lektrico-exporter, ~/.local

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, path: str | None, info: ValidationInfo) -> str | None:
        return None if path is None else str(_resolve(path, info))


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["logfmt", "json"] = "logfmt"


_DEFAULTED_SECTIONS = (
    *("devices", "device_files", "poll", "probe", "web", "discovery", "log", "state"),
)


class GrafanaConfig(_Section):
    url: str

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parse_url(url.strip(), what="url")
        return url.strip()


class Config(_Section):
    listen: str = "0.0.0.0:9654"
    devices: list[DeviceConfig] = []
    device_files: list[NonEmpty] = []
    poll: PollConfig = Field(default_factory=PollConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    influxdb: InfluxConfig | None = None
    line_protocol: LineProtocolConfig | None = None
    web: WebConfig = Field(default_factory=WebConfig)
    shard: ShardConfig | None = None
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    grafana: GrafanaConfig | None = None
    state: StateConfig = Field(default_factory=StateConfig)
    tariffs: TariffsConfig | None = None

    @property
    def listen_host(self) -> str:
        """Host part of `listen`; "" means every interface."""
        return split_host_port(self.listen, None)[0]

    @property
    def listen_port(self) -> int:
        return split_host_port(self.listen, None)[1]

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_are_defaults(cls, data: Any) -> Any:
        # `poll:` with every child commented out is null in YAML; it means "the defaults".
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None and k in _DEFAULTED_SECTIONS)}
        return data

    @field_validator("listen", mode="before")
    @classmethod
    def _listen_is_text(cls, listen: Any) -> Any:
        if isinstance(listen, int):
            raise ValueError(f"write host:port, like 0.0.0.0:{listen} or [::]:{listen}")
        return listen

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, listen: str) -> str:
        host, _ = split_host_port(listen.strip(), None)
        if host:
            check_hostname(host)
        return listen.strip()

    @model_validator(mode="after")
    def _check_tariff_names(self) -> Config:
        known = self.tariffs.table if self.tariffs else {}
        for i, device in enumerate(self.devices):
            if device.tariff is not None and device.tariff not in known:
                names = ", ".join(known) or "none: add a tariffs section"
                message = f"unknown tariff {device.tariff!r}; known: {names}"
                raise FieldProblem(("devices", i, "tariff"), message)
        return self

    @model_validator(mode="after")
    def _check_fleet(self) -> Config:
        first: dict[str, int] = {}
        at: dict[str, int] = {}
        for i, device in enumerate(self.devices):
            if device.name in first:
                message = f"duplicate device name {device.name!r}, first used by"
                other: Loc = ("devices", first[device.name])
                raise FieldProblem(("devices", i, "name"), message, other=other)
            first[device.name] = i
            j = at.setdefault(device.address, i)
            if j != i and not (device.shared_host and self.devices[j].shared_host):
                message = (
                    f"{device.address} is also the host of {self.devices[j].name!r}: one"
                    " device under two names is polled twice (set shared_host: true on both"
                    " if that is meant); first given by"
                )
                raise FieldProblem(("devices", i, "host"), message, other=("devices", j))
            if device.timeout is not None and device.timeout >= self.poll.interval:
                message = (
                    f"timeout {format_duration(device.timeout)} must be shorter than"
                    f" poll.interval {format_duration(self.poll.interval)}"
                )
                raise FieldProblem(("devices", i, "timeout"), message)
        self._check_influx_tags()
        return self

    def _check_influx_tags(self) -> None:
        """Refuse names and label values that InfluxDB would not tell apart.

        Tag escaping writes an ambiguous backslash as `/`, so `a\\ b` and `a/ b` become one tag:
        two devices would share a series, or a query by label would match both values.
        """
        names: dict[str, int] = {}
        values: dict[tuple[str, str], tuple[Loc, str]] = {}
        sources: list[tuple[Loc, dict[str, str]]] = [
            (("devices", i), d.labels) for i, d in enumerate(self.devices)
        ]
        sources.append((("discovery",), self.discovery.labels))
        for i, device in enumerate(self.devices):
            j = names.setdefault(escape_key(device.name), i)
            if j != i:
                other = self.devices[j].name
                message = f'"{device.name}" is the same InfluxDB tag as "{other}", the name of'
                raise FieldProblem(("devices", i, "name"), message, other=("devices", j))
        for loc, labels in sources:
            for label, value in labels.items():
                here: Loc = (*loc, "labels", label)
                first, first_value = values.setdefault((label, escape_key(value)), (here, value))
                if first_value != value:
                    message = f'"{value}" is the same InfluxDB tag as "{first_value}" of'
                    raise FieldProblem(here, message, other=first)


def load_config(
    path: str | Path,
    environ: Mapping[str, str] | None = None,
    *,
    device_files: DeviceFileMemory | None = None,
) -> Config:
    """Read, parse and validate a configuration file; raises ConfigError (one line).

    With `device_files`, a bad device file keeps the devices it last gave (see
    DeviceFileMemory) and its error is left in `device_files.problems`.
    """
    path = Path(path)
    text = read_text(path, display=str(path))
    return parse_config(text, str(path), environ, base_dir=path.parent, device_files=device_files)


def parse_config(
    text: str,
    source: str = "<string>",
    environ: Mapping[str, str] | None = None,
    *,
    base_dir: Path | None = None,
    device_files: DeviceFileMemory | None = None,
) -> Config:
    """Parse configuration YAML; relative paths are taken from `base_dir` (default: cwd)."""
    return parse_settings(
        Config,
        text,
        source=source,
        base_dir=Path() if base_dir is None else base_dir,
        environ=os.environ if environ is None else environ,
        memory=device_files,
    )
