"""TLS and basic auth on the exporter's own port, from a Prometheus exporter-toolkit web config.

The file format is the one node_exporter and blackbox_exporter read with `--web.config.file`
(exporter-toolkit's docs/web-configuration.md):

    tls_server_config:
      cert_file: server.crt            # relative paths start at the web config's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # default NoClientCert
      client_ca_file: clients-ca.crt
      min_version: TLS12               # TLS12 (default) or TLS13
    http_server_config:
      headers: {X-Content-Type-Options: nosniff}
    basic_auth_users:
      prometheus: $2y$10$...           # bcrypt hash, e.g. from `htpasswd -nBC 10 prometheus`

When `basic_auth_users` is set, every path needs a valid user, `/-/healthy` included, as with
exporter-toolkit. Keys of the toolkit format that Python's `ssl` module cannot honour exactly
(inline `cert`/`key`, `cipher_suites`, `curve_preferences`, `client_allowed_sans`, `rate_limit`,
client auth types that accept unverified certificates, TLS 1.0/1.1) are refused with an error
naming the key: silently dropping a security setting would be worse than not starting. The file is
read once, at start.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import re
import secrets
import ssl
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from exporter.config.loader import ConfigError, LineMap, Loc, line_of, load_yaml, read_text

log = logging.getLogger("lektrico.webconfig")

REALM = "lektrico-exporter"
CACHE_SIZE = 1024  # good and bad credentials remembered each; more costs one more bcrypt check
# bcrypt checks at once, each in its own thread (bcrypt lets go of the GIL); more are answered 503.
CHECKS = max(1, min(4, os.cpu_count() or 1))

ClientAuth = Literal["NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
_VERIFY_MODES: dict[ClientAuth, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_OBSOLETE_TLS = ("TLS10", "TLS11")

# exporter-toolkit allows these headers only, some with a fixed set of values.
_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
_BCRYPT_HASH = re.compile(r"\$2[abxy]?\$(?P<cost>\d\d)\$[./A-Za-z0-9]{53}")

_SECTIONS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_ca",
    "min_version",
    "max_version",
    "prefer_server_cipher_suites",
)
_HTTP_KEYS = ("http2", "headers")
_UNSUPPORTED: dict[Loc, str] = {
    ("rate_limit",): "is not supported by lektrico-exporter; rate-limit in a reverse proxy",
    ("tls_server_config", "cert"): "inline certificates are not supported, use cert_file",
    ("tls_server_config", "key"): "inline keys are not supported, use key_file",
    ("tls_server_config", "cipher_suites"): (
        "is not supported (Go cipher names have no exact OpenSSL equivalent); set min_version:"
        " TLS13 for modern ciphers only"
    ),
    ("tls_server_config", "curve_preferences"): "is not supported by lektrico-exporter",
    ("tls_server_config", "client_allowed_sans"): (
        "is not supported; issue client certificates from a dedicated client_ca_file instead"
    ),
}


class WebConfigError(ConfigError):
    """A web config problem, one line: `<file>: <key.path>: <what is wrong> (line N)`."""


@dataclass(frozen=True)
class TLSSettings:
    cert_file: Path
    key_file: Path
    client_auth: ClientAuth = "NoClientCert"
    client_ca_file: Path | None = None
    client_ca: str | None = None  # inline PEM
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    prefer_server_cipher_suites: bool = True


@dataclass(frozen=True)
class WebSettings:
    """What a web config asks for; the default (no file, or an empty one) is plain open HTTP."""

    tls: TLSSettings | None = None
    users: Mapping[str, str] = field(default_factory=dict, repr=False)  # user → bcrypt hash
    headers: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the start-up log: what protects the port (never a hash)."""
        if self.tls is None:
            parts = ["plain HTTP"]
        else:
            versions = {v: k for k, v in _TLS_VERSIONS.items()}
            parts = [f"TLS (min {versions[self.tls.min_version]})"]
            if self.tls.client_auth != "NoClientCert":
                parts.append(f"client certificates: {self.tls.client_auth}")
        if self.users:
            count = len(self.users)
            parts.append(f"basic auth ({count} user{'' if count == 1 else 's'})")
            if self.tls is None:
                parts.append("WARNING: passwords cross the network in clear text without TLS")
        return ", ".join(parts)


def load_web_config(path: str | os.PathLike[str] | None) -> WebSettings:
    """Read and check a web config, certificates and keys included; None means no web config.

    Raises WebConfigError (one line, naming the key) for anything wrong.
    """
    if path is None:
        return WebSettings()
    path = Path(path)
    source = str(path)
    try:
        text = read_text(path, display=source)
        if not _has_content(text):
            return WebSettings()
        data, lines = load_yaml(
            text, source=source, base_dir=path.parent, environ=os.environ, file=source
        )
    except ConfigError as exc:
        error = WebConfigError(exc.message, file=exc.file, line=exc.line, column=exc.column)
        error.key = exc.key  # already rendered as users write it
        raise error from None
    parser = _Parser(source, path.parent, lines)
    settings = parser.settings(data)
    if settings.tls is not None:
        parser.check_tls(settings.tls)
    return settings


def ssl_context(settings: WebSettings) -> ssl.SSLContext | None:
    """The server TLS context for `TCPSite(ssl_context=...)`, or None for plain HTTP."""
    tls = settings.tls
    if tls is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = tls.min_version
    ctx.maximum_version = tls.max_version
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
    if tls.client_ca_file is not None or tls.client_ca is not None:
        ctx.load_verify_locations(cafile=tls.client_ca_file, cadata=tls.client_ca)
    ctx.verify_mode = _VERIFY_MODES[tls.client_auth]
    return ctx


def middlewares(settings: WebSettings) -> list[Middleware]:
    """The aiohttp middlewares a web config asks for, outermost first (maybe none)."""
    out: list[Middleware] = []
    if settings.headers:
        out.append(headers_middleware(settings.headers))
    if settings.users:
        out.append(basic_auth_middleware(settings.users))
    return out


def headers_middleware(headers: Mapping[str, str]) -> Middleware:
    """Add `http_server_config.headers` to every response, errors and 401s included."""
    extra = dict(headers)

    @web.middleware
    async def add_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(extra)
            raise
        if not response.prepared:
            response.headers.update(extra)
        return response

    return add_headers


def basic_auth_middleware(users: Mapping[str, str]) -> Middleware:
    """Require `Authorization: Basic` matching one of `users` (name → bcrypt hash) everywhere."""
    checker = _Credentials(users)

    @web.middleware
    async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        ok = await checker.verify(request.headers.get(hdrs.AUTHORIZATION))
        if ok:
            return await handler(request)
        if ok is None:
            return web.Response(
                status=503,
                text="too many password checks in progress, retry\n",
                headers={hdrs.RETRY_AFTER: "1"},
            )
        return web.Response(
            status=401,
            text="Unauthorized\n",
            headers={hdrs.WWW_AUTHENTICATE: f'Basic realm="{REALM}"'},
        )

    return basic_auth


# ---- basic auth ------------------------------------------------------------------------------


class _Credentials:
    """Checks Basic credentials against bcrypt hashes, paying bcrypt once per credential.

    A checked credential is remembered, good or bad, as the SHA-256 of user, hash and password
    (the password itself is never kept), in two bounded caches. Unknown users are checked
    against a decoy hash of the same cost (up to 12), so response times do not tell which user
    names exist. bcrypt runs in its own few threads, at most CHECKS at once: a check asked for
    while they are all busy is answered None (503) at once rather than queued, so a crowd of
    wrong passwords cannot make a good one wait behind them; the same credential asked for
    while it is being checked shares that check.
    """

    def __init__(self, users: Mapping[str, str]) -> None:
        if not users:
            raise ValueError("basic auth needs at least one user")
        self._hashes = {name.encode(): hashed.encode() for name, hashed in users.items()}
        # Capped: a decoy of cost 31 would take days to make, for a user who could never log in.
        cost = min(max(_cost(hashed) for hashed in users.values()), 12)
        import bcrypt  # only with basic auth on: most exporters have none

        self._decoy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._refused: OrderedDict[bytes, None] = OrderedDict()
        self._checking: dict[bytes, asyncio.Future[bool]] = {}
        self._pool: ThreadPoolExecutor | None = None

    async def verify(self, header: str | None) -> bool | None:
        """True for a good credential, False for a bad one, None when every check slot is busy."""
        credentials = _parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        stored = self._hashes.get(user)
        hashed = self._decoy if stored is None else stored
        key = hashlib.sha256(b":".join((user, hashed, password))).digest()
        if key in self._verified:
            self._verified.move_to_end(key)
            return True
        if key in self._refused:
            self._refused.move_to_end(key)
            return False
        check = self._checking.get(key)
        if check is None:
            if len(self._checking) >= CHECKS:
                return None
            if self._pool is None:
                self._pool = ThreadPoolExecutor(CHECKS, thread_name_prefix="bcrypt")
            loop = asyncio.get_running_loop()
            check = loop.run_in_executor(self._pool, _checkpw, password, hashed)
            self._checking[key] = check
            check.add_done_callback(lambda _: self._checking.pop(key, None))
        ok = await asyncio.shield(check) and stored is not None
        cache = self._verified if ok else self._refused
        cache[key] = None
        if len(cache) > CACHE_SIZE:
            cache.popitem(last=False)
        if not ok:
            log.debug("basic auth refused for user %r", user[:64].decode(errors="replace"))
        return ok


def _parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None


def _checkpw(password: bytes, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # longer than bcrypt's 72 bytes, which no stored hash can match
        return False


def _cost(hashed: str) -> int:
    match = _BCRYPT_HASH.fullmatch(hashed)
    return int(match["cost"]) if match else 10


def _no_password() -> bytes:
    # Without a callback, OpenSSL would prompt on the terminal for an encrypted key's passphrase.
    return b""


# ---- parsing ---------------------------------------------------------------------------------


def _has_content(text: str) -> bool:
    """False for a file of blank lines and comments, which the toolkit reads as "no settings"."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and stripped not in ("---", "..."):
            return True
    return False


class _Parser:
    def __init__(self, source: str, base_dir: Path, lines: LineMap) -> None:
        self.source = source
        self.base_dir = base_dir
        self.lines = lines

    def error(self, loc: Loc, message: str) -> WebConfigError:
        return WebConfigError(message, key=loc, file=self.source, line=line_of(self.lines, loc))

    def settings(self, data: dict[str, Any]) -> WebSettings:
        self.known_keys(data, (), _SECTIONS)
        tls = self.tls(self.section(data, "tls_server_config"))
        http = self.section(data, "http_server_config")
        self.known_keys(http, ("http_server_config",), _HTTP_KEYS)
        # HTTP/2 is a preference; aiohttp serves HTTP/1.1, which every Prometheus speaks.
        self.boolean(http, ("http_server_config", "http2"), default=True)
        headers = self.headers(http.get("headers"))
        users = self.users(data.get("basic_auth_users"))
        return WebSettings(tls=tls, users=users, headers=headers)

    def section(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        value = data.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error((name,), f"must be a mapping, got {_kind(value)}")
        return value

    def known_keys(self, data: dict[str, Any], loc: Loc, known: tuple[str, ...]) -> None:
        for key in data:
            where = (*loc, key)
            if where in _UNSUPPORTED:
                raise self.error(where, _UNSUPPORTED[where])
            if key not in known:
                import difflib  # only a web config with mistakes needs it

                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f", did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
                raise self.error(where, f"unknown key{hint}")

    def string(self, data: dict[str, Any], loc: Loc) -> str | None:
        value = data.get(str(loc[-1]))
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.error(loc, f"must be a string, got {_kind(value)}")
        return value

    def boolean(self, data: dict[str, Any], loc: Loc, *, default: bool) -> bool:
        value = data.get(str(loc[-1]))
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(loc, f"must be true or false, got {_kind(value)}")
        return value

    def path(self, data: dict[str, Any], loc: Loc) -> Path | None:
        value = self.string(data, loc)
        return None if value is None else self.base_dir / Path(value).expanduser()

    def tls(self, data: dict[str, Any]) -> TLSSettings | None:
        loc: Loc = ("tls_server_config",)
        self.known_keys(data, loc, _TLS_KEYS)
        cert = self.path(data, (*loc, "cert_file"))
        key = self.path(data, (*loc, "key_file"))
        auth_text = self.string(data, (*loc, "client_auth_type"))
        ca_file = self.path(data, (*loc, "client_ca_file"))
        ca_text = self.string(data, (*loc, "client_ca"))
        min_version = self.version(data, (*loc, "min_version"), ssl.TLSVersion.TLSv1_2)
        max_version = self.version(data, (*loc, "max_version"), ssl.TLSVersion.TLSv1_3)
        prefer = self.boolean(data, (*loc, "prefer_server_cipher_suites"), default=True)
        if not any((cert, key, auth_text, ca_file, ca_text)):
            return None  # an empty tls_server_config means plain HTTP, as in the toolkit
        if cert is None:
            raise self.error((*loc, "cert_file"), "missing: TLS needs cert_file and key_file")
        if key is None:
            raise self.error((*loc, "key_file"), "missing: TLS needs cert_file and key_file")
        auth = self.client_auth((*loc, "client_auth_type"), auth_text or "NoClientCert")
        has_ca = ca_file is not None or ca_text is not None
        if has_ca and auth == "NoClientCert":
            message = "client_ca_file is set but client_auth_type is NoClientCert"
            raise self.error((*loc, "client_auth_type"), message)
        if not has_ca and auth != "NoClientCert":
            raise self.error((*loc, "client_ca_file"), f"missing: {auth} needs client_ca_file")
        if min_version > max_version:
            raise self.error((*loc, "min_version"), "is higher than max_version")
        return TLSSettings(cert, key, auth, ca_file, ca_text, min_version, max_version, prefer)

    def client_auth(self, loc: Loc, text: str) -> ClientAuth:
        for name in _VERIFY_MODES:
            if text == name:
                return name
        if text in _UNVERIFIED_CLIENT_AUTH:
            message = f"{text} accepts unverified certificates; use RequireAndVerifyClientCert"
        else:
            message = f"unknown {text!r}; one of {', '.join(_VERIFY_MODES)}"
        raise self.error(loc, message)

    def version(self, data: dict[str, Any], loc: Loc, default: ssl.TLSVersion) -> ssl.TLSVersion:
        text = self.string(data, loc)
        if text is None:
            return default
        if text in _OBSOLETE_TLS:
            raise self.error(loc, f"{text} is obsolete (RFC 8996); use TLS12 or TLS13")
        if text not in _TLS_VERSIONS:
            raise self.error(loc, f"unknown TLS version {text!r}; one of TLS12, TLS13")
        return _TLS_VERSIONS[text]

    def headers(self, value: Any) -> dict[str, str]:
        loc: Loc = ("http_server_config", "headers")
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(loc, f"must be a mapping, got {_kind(value)}")
        out: dict[str, str] = {}
        for name, text in value.items():
            where = (*loc, name)
            if name not in _HEADERS:
                raise self.error(where, f"header cannot be set; one of {', '.join(_HEADERS)}")
            if not isinstance(text, str):
                raise self.error(where, f"must be a string, got {_kind(text)}")
            allowed = _HEADERS[name]
            if allowed and text not in allowed:
                raise self.error(where, f"{text!r} is not one of {', '.join(allowed)}")
            if text:
                out[name] = text
        return out

    def users(self, value: Any) -> dict[str, str]:
        loc: Loc = ("basic_auth_users",)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(
                loc, f"must be a mapping of user name to bcrypt hash, got {_kind(value)}"
            )
        out: dict[str, str] = {}
        for name, hashed in value.items():
            where = (*loc, str(name))
            if not isinstance(name, str) or not name:
                raise self.error(where, "user names must be non-empty strings")
            if ":" in name:
                raise self.error(where, "user names cannot contain ':' (HTTP basic auth)")
            # The message never repeats the value: it may be a password pasted by mistake.
            if not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed):
                message = "is not a bcrypt hash; make one with `htpasswd -nBC 10 USER`"
                raise self.error(where, message)
            if not 4 <= _cost(hashed) <= 31:
                raise self.error(where, "bcrypt cost must be between 04 and 31")
            out[name] = hashed
        return out

    def check_tls(self, tls: TLSSettings) -> None:
        """Load the certificates and keys now, so a bad file stops the start with its key named."""
        loc: Loc = ("tls_server_config",)
        self.pem_file((*loc, "cert_file"), tls.cert_file)
        if "ENCRYPTED" in self.pem_file((*loc, "key_file"), tls.key_file):
            raise self.error((*loc, "key_file"), "encrypted keys are not supported")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            if reason == "KEY_VALUES_MISMATCH":
                raise self.error((*loc, "key_file"), "does not match cert_file") from None
            message = f"cannot load cert_file and key_file: {reason}"
            raise self.error((*loc, "cert_file"), message) from None
        if tls.client_ca_file is not None:
            self.pem_file((*loc, "client_ca_file"), tls.client_ca_file)
        if tls.client_ca_file is not None or tls.client_ca is not None:
            where = (*loc, "client_ca_file" if tls.client_ca_file else "client_ca")
            try:
                ctx.load_verify_locations(cafile=tls.client_ca_file, cadata=tls.client_ca)
            except ssl.SSLError as exc:
                message = f"no usable CA certificate: {exc.reason or exc}"
                raise self.error(where, message) from None

    def pem_file(self, loc: Loc, path: Path) -> str:
        try:
            text = path.read_text("ascii", errors="replace")
        except FileNotFoundError:
            raise self.error(loc, f"file {path} not found") from None
        except OSError as exc:
            raise self.error(loc, f"cannot read {path}: {exc.strerror}") from None
        if "-----BEGIN " not in text:
            raise self.error(loc, f"{path} is not a PEM file")
        return text


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
