"""The container image, built and run for real: scripts/build-image.sh builds it with Debian's
podman on a Debian bookworm + python3 base that it makes with mmdebstrap (no registry needed),
then these tests run it with --demo, read /metrics from the host, run its health check, check
its user and that no pip index or CA setting was left in it, and bring up the compose file's
exporter service with podman-compose. The build time and the image size are printed."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from harness.processes import free_port
from harness.servers import unavailable

ROOT = Path(__file__).resolve().parent.parent
TAG = "localhost/lektrico-exporter:dev"  # the name deploy/docker-compose.yml runs
CONFIG_DIR = "/etc/lektrico-exporter"
ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "scripts" / "containers.conf")}
TOOLS = ("podman", "buildah", "runc", "mmdebstrap", "podman-compose")

# A cold build (CI) makes the base with mmdebstrap, then the image: about 2.5 minutes here.
pytestmark = pytest.mark.timeout(900)


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run(
        ["podman", *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr[-2000:]}"
    return result.stdout


def report(config: pytest.Config, text: str) -> None:
    """Print past pytest's capture, so the build figures show in every run's log."""
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(text)


@pytest.fixture(scope="module")
def image(pytestconfig: pytest.Config) -> str:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        unavailable(f"{', '.join(missing)} missing: scripts/install-system-deps.sh installs them")
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh"), TAG],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    figures = [line for line in result.stdout.splitlines() if line.startswith("build-image:")]
    report(pytestconfig, "\n" + "\n".join(figures))
    report(pytestconfig, f"build-image: the build took {time.monotonic() - started:.0f} s")
    return TAG


def inspect(image: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = json.loads(podman("image", "inspect", image))
    return found[0]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: bytes = resp.read()
        return body.decode()


def wait_metrics(port: int, devices: list[str], seconds: float, container: str) -> str:
    """/metrics once every named device is up; fails with the container's log otherwise."""
    deadline = time.monotonic() + seconds
    text = ""
    while time.monotonic() < deadline:
        try:
            text = get(f"http://127.0.0.1:{port}/metrics")
        except OSError:
            text = ""
        if all(f'lektrico_up{{device="{d}",' in text for d in devices) and all(
            re.search(rf'^lektrico_up\{{device="{d}",[^}}]*\}} 1$', text, re.MULTILINE)
            for d in devices
        ):
            return text
        time.sleep(1)
    logs = podman("logs", container, check=False)
    raise AssertionError(f"devices {devices} not up in {seconds}s\n{text[:1500]}\n{logs[-3000:]}")


def test_image_has_its_health_check_a_numeric_user_and_a_modest_size(
    image: str, pytestconfig: pytest.Config
) -> None:
    info = inspect(image)
    config = info["Config"]
    size = int(info["Size"])
    report(pytestconfig, f"image size: {size / 1e6:.0f} MB")

    assert config["User"] == "10001:10001"
    # Kept only with --format docker: OCI images have no HEALTHCHECK.
    assert info["Healthcheck"]["Test"] == [
        "CMD",
        "lektrico-exporter",
        "--config",
        f"{CONFIG_DIR}/config.yml",
        "--health-check",
    ]
    assert config["Entrypoint"] == ["lektrico-exporter"]
    assert size < 350e6, size


def host_pip_ca() -> Path | None:
    """The CA bundle scripts/build-image.sh passes to the build, found the same way."""
    named = (
        os.environ.get("PIP_CERT")
        or subprocess.run(
            ["python3", "-m", "pip", "config", "get", "global.cert"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
    )
    return Path(named) if named and Path(named).is_file() else None


def test_image_keeps_no_pip_index_ca_or_build_tools(image: str, tmp_path: Path) -> None:
    info = inspect(image)
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image)
    ca = host_pip_ca()
    ca_bytes = ca.read_bytes() if ca else b""
    ca_digest = hashlib.sha256(ca_bytes).hexdigest()
    container = podman("create", image).strip()
    try:
        export = tmp_path / "rootfs.tar"
        podman("export", "-o", str(export), container, timeout=300)
    finally:
        podman("rm", "-f", container)
    pip_confs, same_as_ca, names = [], [], set()
    with tarfile.open(export) as tar:
        for member in tar:
            name = member.name.lstrip("./")
            names.add(name.split("/")[0] + "/" + name.split("/")[1] if "/" in name else name)
            if name.endswith("pip.conf") or name.endswith("pip.ini"):
                pip_confs.append(name)
            if ca and member.isfile() and member.size == len(ca_bytes):
                data = tar.extractfile(member)
                if data and hashlib.sha256(data.read()).hexdigest() == ca_digest:
                    same_as_ca.append(name)

    assert not [e for e in info["Config"]["Env"] if e.startswith(("PIP_", "REQUESTS_", "SSL_"))]
    assert "PIP_INDEX_URL" not in history and "pip-ca" not in history
    assert pip_confs == []
    assert same_as_ca == [], "the build's CA bundle was left in the image"
    assert "opt/venv" in names and "opt/build" not in names and "wheels" not in names


def test_image_runs_the_demo_on_the_configs_listen_address_and_is_healthy(
    image: str, tmp_path: Path
) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    # Only the config says 0.0.0.0: the demo must honour it for the published port to work.
    (config_dir / "config.yml").write_text("listen: 0.0.0.0:9654\ndevices: []\n")
    config_dir.chmod(0o755)
    (config_dir / "config.yml").chmod(0o644)
    port = free_port()
    name = f"lektrico-image-test-{os.getpid()}"
    podman("rm", "-f", name, check=False)
    podman(
        "run", "-d", "--name", name,
        "-p", f"127.0.0.1:{port}:9654",
        "-v", f"{config_dir}:{CONFIG_DIR}:ro",
        image, "--config", f"{CONFIG_DIR}/config.yml", "--demo", "3",
    )  # fmt: skip
    try:
        text = wait_metrics(port, ["demo-000", "demo-001", "demo-002"], 60, name)
        health = subprocess.run(
            ["podman", "healthcheck", "run", name],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
        uid = podman("exec", name, "id", "-u").strip()
        processes = podman("top", name, "user", "args")
    finally:
        podman("rm", "-f", "-t", "3", name, check=False)

    assert 'lektrico_up{device="demo-unreachable"' in text
    assert (health.returncode, health.stderr.strip()) == (0, ""), health.stdout
    assert uid == "10001"
    assert "root" not in processes and "lektrico-exporter" in processes, processes


def test_compose_brings_up_the_exporter_service(image: str, tmp_path: Path) -> None:
    port = free_port()
    project = f"lektrico-test-{os.getpid()}"
    # The exporter alone: its InfluxDB peer would come from a registry. Its name is pointed at
    # loopback so the exporter's writes fail fast instead of going to a DNS server.
    override = tmp_path / "override.yml"
    override.write_text("services:\n  exporter:\n    extra_hosts: ['influxdb:127.0.0.1']\n")
    compose = [
        "podman-compose", "-p", project,
        "-f", str(ROOT / "deploy" / "docker-compose.yml"), "-f", str(override),
    ]  # fmt: skip
    env = {**ENV, "LEKTRICO_PUBLISH": f"127.0.0.1:{port}"}
    container = f"{project}_exporter_1"
    try:
        up = subprocess.run(
            [*compose, "up", "-d", "--no-build", "--no-deps", "exporter"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert up.returncode == 0, (up.stdout + up.stderr)[-3000:]
        text = wait_metrics(port, [f"demo-{i:03d}" for i in range(12)], 60, container)
    finally:
        subprocess.run(
            [*compose, "down", "-t", "3"], env=env, capture_output=True, timeout=120, check=False
        )
        podman("rm", "-f", container, check=False)
        podman("network", "rm", "-f", f"{project}_default", check=False)

    # The twelve of `--demo 12` (and the demo's faulty devices as their first polls end).
    assert text.count("lektrico_up{") >= 12
    assert "lektrico_influxdb" in text  # the compose config's InfluxDB output is on
