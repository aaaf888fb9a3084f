"""`--health-check`: ask the running exporter's `/-/healthy`, for a container HEALTHCHECK.

Standard library only (urllib), so the image needs no curl. The exporter is asked on its
configured listen address (on loopback when it listens on every interface), with TLS and basic
auth when its web config asks for them:

- credentials come from LEKTRICO_HEALTHCHECK_USER and LEKTRICO_HEALTHCHECK_PASSWORD; without
  them, a 401 still proves the exporter answers, and counts as alive;
- the server certificate is not verified: this is the exporter's own host asking it, and its
  certificate rarely names 127.0.0.1;
- when the web config requires client certificates, the check presents the one named by
  LEKTRICO_HEALTHCHECK_CERT_FILE (and LEKTRICO_HEALTHCHECK_KEY_FILE unless the key is in the same
  file); without one, a completed TLS 1.3 handshake counts as alive, for the same reason as a 401.

Exit status 0 when alive, 1 otherwise, with one line on stdout saying why (Docker keeps it in
`docker inspect`). Proxy variables are ignored: the exporter is asked directly.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping

from exporter.config.addresses import Endpoint
from exporter.config.schema import Config
from exporter.web.webconfig import WebConfigError, WebSettings, load_web_config

USER_ENV = "LEKTRICO_HEALTHCHECK_USER"
PASSWORD_ENV = "LEKTRICO_HEALTHCHECK_PASSWORD"
CERT_ENV = "LEKTRICO_HEALTHCHECK_CERT_FILE"
KEY_ENV = "LEKTRICO_HEALTHCHECK_KEY_FILE"
TIMEOUT = 5.0
_PREFIX = "lektrico-exporter health check"


def address(config: Config) -> tuple[str, int]:
    """Where to ask: the listen address, with loopback for "every interface"."""
    host = config.listen_host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, config.listen_port


def health_url(config: Config, settings: WebSettings) -> str:
    host, port = address(config)
    scheme = "https" if settings.tls is not None else "http"
    return f"{Endpoint(scheme, host, port).base_url}/-/healthy"


def check(
    config: Config, environ: Mapping[str, str] | None = None, timeout: float = TIMEOUT
) -> int:
    """Ask the exporter once; 0 when it is alive, 1 otherwise."""
    environ = os.environ if environ is None else environ
    try:
        settings = load_web_config(config.web.config_file)
    except WebConfigError as exc:
        return _report(False, f"web config: {exc}")
    url = health_url(config, settings)
    user = environ.get(USER_ENV)
    headers = {}
    if user:
        pair = f"{user}:{environ.get(PASSWORD_ENV, '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if settings.tls is not None:
        try:
            tls = _client_context(environ)
        except (OSError, ValueError) as exc:
            return _report(False, f"{CERT_ENV}: {exc}")
        if settings.tls.client_auth == "RequireAndVerifyClientCert" and not environ.get(CERT_ENV):
            return _handshake(config, tls, url, timeout)
        handlers.append(urllib.request.HTTPSHandler(context=tls))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            status: int = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
    except (urllib.error.URLError, OSError) as exc:  # refused, timed out, TLS failures
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return _report(False, f"{url}: {reason}")
    if status == 200:
        return _report(True, f"{url}: 200")
    if status == 401 and not user:
        return _report(True, f"{url}: 401 (basic auth on; set {USER_ENV} to check a user)")
    if status == 401:
        return _report(False, f"{url}: 401, the credentials in {USER_ENV} are refused")
    return _report(False, f"{url}: HTTP {status}")


def _client_context(environ: Mapping[str, str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA store to load: nothing is verified
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    cert = environ.get(CERT_ENV)
    if cert:
        ctx.load_cert_chain(cert, environ.get(KEY_ENV) or None)
    return ctx


def _handshake(config: Config, tls: ssl.SSLContext, url: str, timeout: float) -> int:
    """Alive if the TLS handshake completes; in TLS 1.3 the server checks our certificate after."""
    tls.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        with (
            socket.create_connection(address(config), timeout=timeout) as raw,
            tls.wrap_socket(raw) as conn,
        ):
            version = conn.version()
    except OSError as exc:
        return _report(False, f"{url}: {exc}")
    detail = f"{version} handshake done; to ask /-/healthy, give a client certificate in {CERT_ENV}"
    return _report(True, f"{url}: {detail}")


def _report(alive: bool, detail: str) -> int:
    print(f"{_PREFIX}: {'healthy' if alive else 'unhealthy'}: {detail}")
    return 0 if alive else 1
