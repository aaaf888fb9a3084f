"""TLS and basic auth on the exporter's port from an exporter-toolkit web config, over real sockets.

Certificates are made for each test module with the `openssl` command line: a CA, a server
certificate for 127.0.0.1 signed by it, a client certificate signed by it, and a self-signed
client certificate no one trusts. The clients are real aiohttp/ssl clients.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import bcrypt
import pytest

from exporter.config.schema import Config, parse_config
from exporter.simulator.server import DeviceSpec
from exporter.web.healthcheck import (
    CERT_ENV,
    KEY_ENV,
    PASSWORD_ENV,
    USER_ENV,
    check,
    health_url,
)
from exporter.web.webconfig import (
    REALM,
    WebConfigError,
    WebSettings,
    load_web_config,
    middlewares,
    ssl_context,
)
from harness.processes import free_port

from .conftest import ExporterFactory, FleetFactory, fleet_config

USER = "prometheus"
PASSWORD = "correct horse: battery staple"  # a colon is legal in a password
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()  # cost 4: fast tests


def basic(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


AUTH = basic(USER, PASSWORD)


# ---- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PKI:
    dir: Path
    ca: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path
    rogue_crt: Path
    rogue_key: Path


def _openssl(d: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=20)


def _certificate(d: Path, name: str, *extensions: str, by_ca: bool = True) -> None:
    """`name`.crt and `name`.key: an EC certificate, signed by ca.crt unless self-signed."""
    args = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    args += ["-nodes", "-days", "2", "-config", "min.cnf", "-subj", f"/CN={name}"]
    args += ["-keyout", f"{name}.key", "-out", f"{name}.crt"]
    if by_ca:
        args += ["-CA", "ca.crt", "-CAkey", "ca.key"]
    for extension in extensions:
        args += ["-addext", extension]
    _openssl(d, *args)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    if shutil.which("openssl") is None:
        pytest.fail("the `openssl` command is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    (d / "min.cnf").write_text("[req]\ndistinguished_name = dn\n[dn]\n")
    _certificate(d, "ca", "basicConstraints=critical,CA:TRUE", "keyUsage=keyCertSign", by_ca=False)
    _certificate(d, "server", "subjectAltName=IP:127.0.0.1", "extendedKeyUsage=serverAuth")
    _certificate(d, "client", "extendedKeyUsage=clientAuth")
    _certificate(d, "rogue", "extendedKeyUsage=clientAuth", by_ca=False)
    _openssl(d, "pkey", "-in", "server.key", "-aes256", "-passout", "pass:x", "-out", "enc.key")
    return PKI(
        d,
        d / "ca.crt",
        d / "server.crt",
        d / "server.key",
        d / "client.crt",
        d / "client.key",
        d / "rogue.crt",
        d / "rogue.key",
    )


def tls_config(pki: PKI, extra: str = "") -> str:
    return (
        f"tls_server_config:\n  cert_file: {pki.server_crt}\n  key_file: {pki.server_key}\n{extra}"
    )


def auth_config(hashed: str = HASH) -> str:
    return f"basic_auth_users:\n  {USER}: '{hashed}'\n"


def client_ssl(pki: PKI, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


# ---- a real exporter behind its web config ---------------------------------------------------


@dataclass(frozen=True)
class Served:
    url: str  # scheme://127.0.0.1:port of the protected site
    config: Config  # listen and web.config_file pointing at it, as the health check reads them


Serve = Callable[[str], Awaitable[Served]]


@pytest.fixture
async def serve(
    make_fleet: FleetFactory, make_exporter: ExporterFactory, tmp_path: Path
) -> AsyncIterator[Serve]:
    """Start a real exporter over a simulated charger, its port protected by a web config."""
    count = 0

    async def start(body: str) -> Served:
        nonlocal count
        count += 1
        fleet = await make_fleet([DeviceSpec("garage", "3p22k")], frozen=True)
        path = tmp_path / f"web-{count}.yml"
        path.write_text(body)
        config = fleet_config(fleet, extra=f"web: {{config_file: '{path}'}}")
        exp = await make_exporter(config)
        scheme = "https" if load_web_config(path).tls else "http"
        return Served(f"{scheme}://127.0.0.1:{exp.port}", config)

    yield start


async def get(
    url: str,
    *,
    tls: ssl.SSLContext | None = None,
    auth: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    timeout = aiohttp.ClientTimeout(total=5)
    sent = {**(auth or {}), **(headers or {})}
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, ssl=tls if tls is not None else True, headers=sent) as r,
    ):
        return r.status, dict(r.headers), await r.text()


async def metrics_with_device(url: str, tls: ssl.SSLContext) -> str:
    deadline = time.monotonic() + 5
    while True:
        status, _, text = await get(f"{url}/metrics", tls=tls, auth=AUTH)
        assert status == 200
        if 'lektrico_up{device="garage"' in text:
            return text
        assert time.monotonic() < deadline, "the charger never showed up in /metrics"
        await asyncio.sleep(0.1)


# ---- TLS and basic auth ----------------------------------------------------------------------


async def test_right_password_over_tls_gets_the_fleet_metrics(serve: Serve, pki: PKI) -> None:
    served = await serve(tls_config(pki) + auth_config())

    text = await metrics_with_device(served.url, client_ssl(pki))

    assert served.url.startswith("https://")
    assert "lektrico_exporter_build_info" in text


async def test_wrong_password_gets_401_asking_for_basic_auth(serve: Serve, pki: PKI) -> None:
    served = await serve(tls_config(pki) + auth_config())

    status, headers, body = await get(
        f"{served.url}/metrics", tls=client_ssl(pki), auth=basic(USER, "wrong")
    )

    assert status == 401
    assert headers["WWW-Authenticate"] == f'Basic realm="{REALM}"'
    assert "lektrico_" not in body


@pytest.mark.parametrize(
    "path", ["/", "/metrics", "/probe?target=garage", "/-/healthy", "/-/ready", "/no-such-page"]
)
async def test_no_password_gets_401_on_every_path(serve: Serve, pki: PKI, path: str) -> None:
    served = await serve(tls_config(pki) + auth_config())

    status, headers, _ = await get(f"{served.url}{path}", tls=client_ssl(pki))

    assert status == 401
    assert headers["WWW-Authenticate"] == f'Basic realm="{REALM}"'


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode(),  # unknown user
        "Basic " + base64.b64encode(f"{USER}{PASSWORD}".encode()).decode(),  # no colon
        "Basic not-base64!",
        "Bearer " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
        "",
    ],
    ids=["unknown-user", "no-colon", "not-base64", "bearer", "empty"],
)
async def test_malformed_or_unknown_credentials_get_401(
    serve: Serve, pki: PKI, authorization: str
) -> None:
    served = await serve(tls_config(pki) + auth_config())

    status, _, _ = await get(
        f"{served.url}/metrics", tls=client_ssl(pki), headers={"Authorization": authorization}
    )

    assert status == 401


async def test_plain_http_to_the_tls_port_fails(serve: Serve, pki: PKI) -> None:
    served = await serve(tls_config(pki) + auth_config())
    plain = served.url.replace("https://", "http://")

    with pytest.raises(aiohttp.ClientError):
        await get(f"{plain}/metrics", auth=AUTH)


async def test_client_that_does_not_trust_the_server_certificate_fails(
    serve: Serve, pki: PKI
) -> None:
    served = await serve(tls_config(pki) + auth_config())

    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get(f"{served.url}/metrics", tls=ssl.create_default_context(), auth=AUTH)


async def test_basic_auth_without_tls_works_over_plain_http(serve: Serve) -> None:
    served = await serve(auth_config())

    ok, _, _ = await get(f"{served.url}/-/healthy", auth=AUTH)
    refused, _, _ = await get(f"{served.url}/-/healthy")

    assert served.url.startswith("http://")
    assert (ok, refused) == (200, 401)


async def test_required_client_certificate_from_the_ca_is_let_in(serve: Serve, pki: PKI) -> None:
    served = await serve(
        tls_config(
            pki,
            f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca}\n",
        )
    )
    with_cert = client_ssl(pki, pki.client_crt, pki.client_key)
    rogue = client_ssl(pki, pki.rogue_crt, pki.rogue_key)

    status, _, _ = await get(f"{served.url}/-/healthy", tls=with_cert)
    with pytest.raises(aiohttp.ClientError):
        await get(f"{served.url}/-/healthy", tls=client_ssl(pki))
    with pytest.raises(aiohttp.ClientError):
        await get(f"{served.url}/-/healthy", tls=rogue)

    assert status == 200


async def test_min_version_tls13_refuses_tls12_clients(serve: Serve, pki: PKI) -> None:
    served = await serve(tls_config(pki, "  min_version: TLS13\n"))
    old = client_ssl(pki)
    old.maximum_version = ssl.TLSVersion.TLSv1_2

    status, _, _ = await get(f"{served.url}/-/healthy", tls=client_ssl(pki))
    with pytest.raises(aiohttp.ClientError):
        await get(f"{served.url}/-/healthy", tls=old)

    assert status == 200


async def test_htpasswd_2y_hashes_are_accepted(serve: Serve, pki: PKI) -> None:
    served = await serve(tls_config(pki) + auth_config(HASH.replace("$2b$", "$2y$", 1)))

    status, _, _ = await get(f"{served.url}/-/healthy", tls=client_ssl(pki), auth=AUTH)

    assert status == 200


async def test_bcrypt_is_paid_once_per_credential_good_or_bad(
    serve: Serve, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = await serve(tls_config(pki) + auth_config())
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    tls = client_ssl(pki)
    wrong = basic(USER, "wrong")

    good = [await get(f"{served.url}/-/healthy", tls=tls, auth=AUTH) for _ in range(3)]
    bad = [await get(f"{served.url}/-/healthy", tls=tls, auth=wrong) for _ in range(2)]

    assert [s for s, _, _ in good] == [200, 200, 200]
    assert [s for s, _, _ in bad] == [401, 401]
    assert len(calls) == 2  # a refused credential is remembered too


async def test_configured_headers_are_on_every_response_401_included(
    serve: Serve, pki: PKI
) -> None:
    headers = "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    headers += "    X-Content-Type-Options: nosniff\n"
    served = await serve(tls_config(pki) + auth_config() + headers)
    tls = client_ssl(pki)

    responses = [
        await get(f"{served.url}/-/healthy", tls=tls, auth=AUTH),
        await get(f"{served.url}/-/healthy", tls=tls),
        await get(f"{served.url}/no-such-page", tls=tls, auth=AUTH),
    ]

    assert [status for status, _, _ in responses] == [200, 401, 404]
    for _, got, _ in responses:
        assert got["X-Frame-Options"] == "deny"
        assert got["X-Content-Type-Options"] == "nosniff"


async def test_passwords_and_hashes_never_reach_the_logs(
    serve: Serve, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    served = await serve(tls_config(pki) + auth_config())
    tls = client_ssl(pki)

    await get(f"{served.url}/metrics", tls=tls, auth=AUTH)
    await get(f"{served.url}/metrics", tls=tls, auth=basic(USER, "wrong-secret"))
    settings = load_web_config(served.config.web.config_file)

    shown = caplog.text + repr(settings) + settings.describe()
    for secret in (PASSWORD, "wrong-secret", HASH):
        assert secret not in shown


# ---- loading the file ------------------------------------------------------------------------


def test_no_web_config_or_an_empty_one_means_plain_open_http(tmp_path: Path) -> None:
    empty = tmp_path / "web.yml"
    empty.write_text("# nothing configured yet\n")

    for settings in (load_web_config(None), load_web_config(empty)):
        assert settings.tls is None
        assert not settings.users
        assert ssl_context(settings) is None
        assert middlewares(settings) == []


def test_relative_paths_start_at_the_web_config_directory(
    pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = pki.dir / "web-relative.yml"
    path.write_text("tls_server_config: {cert_file: server.crt, key_file: server.key}\n")
    monkeypatch.chdir(tmp_path)

    settings = load_web_config(path)

    assert settings.tls is not None
    assert settings.tls.cert_file == pki.server_crt
    assert isinstance(ssl_context(settings), ssl.SSLContext)


def test_describe_says_what_protects_the_port(pki: PKI, tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(auth_config())

    assert load_web_config(path).describe() == (
        "plain HTTP, basic auth (1 user),"
        " WARNING: passwords cross the network in clear text without TLS"
    )
    path.write_text(tls_config(pki, "  min_version: TLS13\n") + auth_config())
    assert load_web_config(path).describe() == "TLS (min TLS13), basic auth (1 user)"


BAD_CONFIGS = [
    ("basic_auth_user: {}", "basic_auth_user: unknown key, did you mean 'basic_auth_users'?"),
    ("- a list", "top level must be a mapping"),
    ("tls_server_config: [a]", "tls_server_config: must be a mapping, got a list"),
    ("tls_server_config: {cert_file: {server_crt}}", "tls_server_config.key_file: missing"),
    ("tls_server_config: {key_file: {server_key}}", "tls_server_config.cert_file: missing"),
    (
        "tls_server_config: {cert_file: nope.crt, key_file: {server_key}}",
        "tls_server_config.cert_file: file {dir}/nope.crt not found",
    ),
    (
        "tls_server_config: {cert_file: {server_crt}, key_file: {client_key}}",
        "tls_server_config.key_file: does not match cert_file",
    ),
    (
        "tls_server_config: {cert_file: min.cnf, key_file: {server_key}}",
        "tls_server_config.cert_file: {dir}/min.cnf is not a PEM file",
    ),
    (
        "tls_server_config: {cert_file: {server_crt}, key_file: enc.key}",
        "tls_server_config.key_file: encrypted keys are not supported",
    ),
    (
        "tls_server_config: {cert_file: {server_crt}, key_file: {server_key},"
        " client_auth_type: Always}",
        "tls_server_config.client_auth_type: unknown 'Always'",
    ),
    (
        "tls_server_config: {cert_file: {server_crt}, key_file: {server_key},"
        " client_auth_type: RequireAnyClientCert, client_ca_file: {ca}}",
        "tls_server_config.client_auth_type: RequireAnyClientCert accepts unverified",
    ),
    (
        "tls_server_config: {cert_file: {server_crt}, key_file: {server_key},"
        " client_auth_type: RequireAndVerifyClientCert}",
        "tls_server_config.client_ca_file: missing: RequireAndVerifyClientCert needs",
    ),
    (
        "tls_server_config: {cert_file: {server_crt}, key_file: {server_key},"
        " client_ca_file: {ca}}",
        "tls_server_config.client_auth_type: client_ca_file is set but client_auth_type is",
    ),
    (
        "tls_server_config: {cert_file: {server_crt}, key_file: {server_key}, min_version: TLS11}",
        "tls_server_config.min_version: TLS11 is obsolete",
    ),
    (
        "tls_server_config: {cert_file: {server_crt}, key_file: {server_key}, min_version: TLS14}",
        "tls_server_config.min_version: unknown TLS version 'TLS14'",
    ),
    (
        "tls_server_config: {cert_file: {server_crt}, key_file: {server_key},"
        " min_version: TLS13, max_version: TLS12}",
        "tls_server_config.min_version: is higher than max_version",
    ),
    (
        "tls_server_config: {cert_file: {server_crt}, key_file: {server_key},"
        " cipher_suites: [TLS_AES_128_GCM_SHA256]}",
        "tls_server_config.cipher_suites: is not supported",
    ),
    ("tls_server_config: {cert: PEM, key_file: {server_key}}", "tls_server_config.cert: inline"),
    ("rate_limit: {interval: 1s, burst: 20}", "rate_limit: is not supported"),
    ("basic_auth_users: {alice: hunter2}", "basic_auth_users.alice: is not a bcrypt hash"),
    ("basic_auth_users: [alice]", "basic_auth_users: must be a mapping"),
    ("basic_auth_users: {'a:b': '{hash}'}", 'basic_auth_users["a:b"]: user names cannot contain'),
    (
        "basic_auth_users: {alice: '{hash}', alice: '{hash}'}",
        "basic_auth_users.alice: duplicate key",
    ),
    (
        "http_server_config: {headers: {X-Powered-By: me}}",
        "http_server_config.headers.X-Powered-By: header cannot be set",
    ),
    (
        "http_server_config: {headers: {X-Frame-Options: allow}}",
        "http_server_config.headers.X-Frame-Options: 'allow' is not one of deny, sameorigin",
    ),
    ("http_server_config: {http2: maybe}", "http_server_config.http2: must be true or false"),
    ("tls_server_config: {cert_file: [x", "invalid YAML"),
]


@pytest.mark.parametrize(("body", "expected"), BAD_CONFIGS, ids=[e for _, e in BAD_CONFIGS])
def test_bad_web_config_is_one_line_naming_the_key(pki: PKI, body: str, expected: str) -> None:
    names = {
        "server_crt": str(pki.server_crt),
        "server_key": str(pki.server_key),
        "client_key": str(pki.client_key),
        "ca": str(pki.ca),
        "hash": HASH,
        "dir": str(pki.dir),
    }
    for name, value in names.items():
        body, expected = body.replace(f"{{{name}}}", value), expected.replace(f"{{{name}}}", value)
    path = pki.dir / "web-bad.yml"
    path.write_text(body + "\n")

    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "hunter2" not in message
    assert "(line " in message


def test_missing_web_config_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match=r"^.*web\.yml: file not found$"):
        load_web_config(tmp_path / "web.yml")


# ---- the health check ------------------------------------------------------------------------


async def run_check(config: Config, **environ: str) -> int:
    # The check is synchronous (urllib); the exporter it asks runs on this test's event loop.
    return await asyncio.to_thread(check, config, environ, 3.0)


async def test_health_check_passes_over_tls_with_credentials(
    serve: Serve, pki: PKI, capsys: pytest.CaptureFixture[str]
) -> None:
    served = await serve(tls_config(pki) + auth_config())

    status = await run_check(served.config, **{USER_ENV: USER, PASSWORD_ENV: PASSWORD})

    assert status == 0
    assert capsys.readouterr().out.strip().endswith(f"healthy: {served.url}/-/healthy: 200")


async def test_health_check_counts_401_as_alive_without_credentials(serve: Serve, pki: PKI) -> None:
    served = await serve(tls_config(pki) + auth_config())

    assert await run_check(served.config) == 0


async def test_health_check_fails_when_its_credentials_are_refused(
    serve: Serve, pki: PKI, capsys: pytest.CaptureFixture[str]
) -> None:
    served = await serve(tls_config(pki) + auth_config())

    status = await run_check(served.config, **{USER_ENV: USER, PASSWORD_ENV: "wrong"})

    assert status == 1
    assert "unhealthy" in capsys.readouterr().out


async def test_health_check_with_required_client_certificates_presents_the_given_one(
    serve: Serve, pki: PKI, capsys: pytest.CaptureFixture[str]
) -> None:
    client_auth = f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca}\n"
    served = await serve(tls_config(pki, client_auth))

    with_cert = await run_check(
        served.config, **{CERT_ENV: str(pki.client_crt), KEY_ENV: str(pki.client_key)}
    )
    with_rogue = await run_check(
        served.config, **{CERT_ENV: str(pki.rogue_crt), KEY_ENV: str(pki.rogue_key)}
    )

    assert (with_cert, with_rogue) == (0, 1)
    assert capsys.readouterr().out.splitlines()[0].endswith("/-/healthy: 200")


async def test_health_check_with_required_client_certificates_settles_for_a_handshake(
    serve: Serve, pki: PKI, capsys: pytest.CaptureFixture[str]
) -> None:
    client_auth = f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca}\n"
    served = await serve(tls_config(pki, client_auth))

    status = await run_check(served.config)

    assert status == 0
    assert "TLSv1.3 handshake done" in capsys.readouterr().out


async def test_health_check_passes_over_plain_http(serve: Serve) -> None:
    served = await serve("")

    assert await run_check(served.config) == 0


async def test_health_check_fails_when_nothing_listens(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = parse_config(f"listen: 127.0.0.1:{free_port()}")

    started = time.monotonic()
    status = await run_check(config)

    assert status == 1
    assert time.monotonic() - started < 3
    assert "unhealthy" in capsys.readouterr().out


async def test_health_check_fails_when_a_tls_exporter_is_asked_in_plain_http(
    serve: Serve, pki: PKI, tmp_path: Path
) -> None:
    served = await serve(tls_config(pki))
    plain = tmp_path / "plain.yml"
    plain.write_text("")
    wrong = served.config.model_copy(update={"web": served.config.web.model_copy(
        update={"config_file": str(plain)})})  # fmt: skip

    assert await run_check(wrong) == 1


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("0.0.0.0:9654", "http://127.0.0.1:9654/-/healthy"),
        ("[::]:9654", "http://[::1]:9654/-/healthy"),
        (":9654", "http://127.0.0.1:9654/-/healthy"),
        ("10.1.2.3:9100", "http://10.1.2.3:9100/-/healthy"),
        ("[fd00::5]:9100", "http://[fd00::5]:9100/-/healthy"),
    ],
)
def test_health_check_asks_loopback_when_listening_everywhere(listen: str, url: str) -> None:
    config = parse_config(f"listen: '{listen}'")

    assert health_url(config, WebSettings()) == url


async def test_health_check_flag_of_the_command_line(serve: Serve, pki: PKI) -> None:
    served = await serve(tls_config(pki) + auth_config())
    web_config = served.config.web.config_file
    config_file = Path(str(web_config)).parent / "config.yml"
    config_file.write_text(
        f"listen: '{served.config.listen}'\nweb: {{config_file: '{web_config}'}}\n"
    )
    command = [sys.executable, "-m", "exporter", "--config", str(config_file), "--health-check"]

    alive = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    out, _ = await alive.communicate()

    assert alive.returncode == 0, out
