"""Configuration loading: what a user's file turns into, and the one-line errors it can give.

The bad-config corpus lives in tests/configs/bad/, one case per file. Each file starts with
`# expect: <text the error must contain>` and `# line: <N or none>`, the line the error must
point at (in the file the error names).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest

from exporter.app import Exporter
from exporter.cli import main
from exporter.config.model import Section
from exporter.config.schema import (
    Config,
    ConfigError,
    ConfigFileError,
    ConfigSyntaxError,
    ConfigValueError,
    DeviceConfig,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
)
from exporter.simulator.server import DeviceSpec
from harness.processes import free_port

from .conftest import FleetFactory

ROOT = Path(__file__).parent.parent
CONFIGS = Path(__file__).parent / "configs"
EXAMPLE = ROOT / "config.example.yaml"
SECRETS = {"INFLUX_TOKEN": "tok-env-5f1d2c", "INFLUX_PASSWORD": "pw-env-77a1b9"}
FILE_SECRETS = ("tok-from-file-0123456789", "proxy-pass-9876")

BAD_CONFIGS = sorted((CONFIGS / "bad").glob("*.yaml"))
GOOD_CONFIGS = sorted((CONFIGS / "good").glob("*.yaml"))


def error_of(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ=environ or {})
    return str(caught.value)


# ---- the example ----------------------------------------------------------------------------


def test_example_config_loads_with_three_devices() -> None:
    config = load_config(EXAMPLE, environ={})

    assert [(d.name, d.model) for d in config.devices] == [
        ("garage-wallbox", "1p7k"),
        ("office-charger-1", "3p22k"),
        ("house-meter", "em"),
    ]
    assert all("site" in d.labels for d in config.devices)
    assert config.influxdb is None


def _commented_block(text: str, start: str, occurrence: int) -> str:
    """The `occurrence`-th commented-out block starting with `start`, uncommented."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line == start]
    i = starts[occurrence]
    block = []
    while i < len(lines) and (lines[i] == start or lines[i].startswith("#  ")):
        block.append(lines[i][1:])
        i += 1
    return "\n".join(block) + "\n"


@pytest.mark.parametrize(("occurrence", "form"), [(0, "bucket"), (1, "database")])
def test_example_influxdb_sections_load_once_uncommented(occurrence: int, form: str) -> None:
    text = EXAMPLE.read_text()
    block = _commented_block(text, "#influxdb:", occurrence)
    # The ca_file in the example is a system path; this test only checks the keys and values.
    block = "\n".join(line for line in block.splitlines() if "ca_file:" not in line) + "\n"

    config = parse_config(text + block, environ=SECRETS)

    assert config.influxdb is not None
    assert getattr(config.influxdb, form) == "lektrico"


def test_example_line_protocol_and_shard_sections_load_once_uncommented() -> None:
    text = EXAMPLE.read_text()
    extra = _commented_block(text, "#line_protocol:", 0) + _commented_block(text, "#shard:", 0)

    config = parse_config(text + extra, environ={})

    assert config.line_protocol is not None and config.line_protocol.path == "-"
    assert config.shard is not None and (config.shard.index, config.shard.count) == (0, 2)


def _keys(model: type[Section]) -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        for arg in (field.annotation, *get_args(field.annotation)):
            if isinstance(arg, type) and issubclass(arg, Section) and get_origin(arg) is None:
                keys |= _keys(arg)
    return keys


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()

    undocumented = {
        key for key in _keys(Config) if not re.search(rf"^[#\s]*{key}:", text, re.MULTILINE)
    }

    assert undocumented == set()


# ---- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15s", 15.0),
        ("500ms", 0.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("2d", 172800.0),
        ("1.5s", 1.5),
        (" 10s ", 10.0),
        ("30", 30.0),
        ("2.5", 2.5),
        (30, 30.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration_accepts(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("15x", "must be a duration like 15s, 5m or 30, got '15x'"),
        ("", "must be a duration"),
        ("s", "must be a duration"),
        ("5 m", "must be a duration"),
        ("30s1m", "must be a duration"),
        ("5m5m", "must be a duration"),
        ("1e3", "must be a duration"),
        ("inf", "must be a duration"),
        ("-5s", "must be a positive duration, got '-5s'"),
        ("-5", "must be a positive duration"),
        (-5, "must be longer than zero, got -5"),
        (0, "must be longer than zero, got 0"),
        ("0s", "must be longer than zero"),
        ("0ms", "must be longer than zero"),
        (float("nan"), "must be a duration"),
        (float("inf"), "must be a duration"),
        (10**400, "must be a duration"),
        (True, "got a boolean"),
    ],
)
def test_parse_duration_rejects(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(15, "15s"), (0.5, "500ms"), (90, "1m30s"), (3600, "1h"), (5400, "1h30m"), (2.5, "2.5s")],
)
def test_format_duration_is_readable_and_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_durations_are_stored_as_seconds() -> None:
    config = parse_config("poll: {interval: 1m, timeout: 1500ms, max_backoff: 1h}", environ={})

    assert (config.poll.interval, config.poll.timeout, config.poll.max_backoff) == (60, 1.5, 3600)


# ---- environment variables and tags ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("${HOST}", {"HOST": "10.0.0.5"}, "10.0.0.5"),
        ("${HOST}:8080", {"HOST": "10.0.0.5"}, "10.0.0.5:8080"),
        ("${HOST:-10.0.0.9}", {}, "10.0.0.9"),
        ("${HOST:-10.0.0.9}", {"HOST": ""}, "10.0.0.9"),
        ("${HOST:-10.0.0.9}", {"HOST": "10.0.0.5"}, "10.0.0.5"),
        ("${A}.${B}", {"A": "charger", "B": "local"}, "charger.local"),
    ],
)
def test_env_references_are_substituted_in_strings(
    value: str, environ: dict[str, str], expected: str
) -> None:
    config = parse_config(f"devices:\n  - name: d\n    host: {value}\n", environ=environ)

    assert config.devices[0].host == expected


def test_double_dollar_keeps_a_literal_reference() -> None:
    config = parse_config("devices:\n  - name: a$${X}b\n    host: h\n", environ={"X": "no"})

    assert config.devices[0].name == "a${X}b"


def test_set_but_empty_variable_without_default_is_empty() -> None:
    config = parse_config("devices:\n  - {name: 'x${SUFFIX}', host: h}\n", environ={"SUFFIX": ""})

    assert config.devices[0].name == "x"


def test_environ_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEKTRICO_TEST_HOST", "10.9.8.7")

    config = parse_config("devices:\n  - {name: d, host: '${LEKTRICO_TEST_HOST}'}\n")

    assert config.devices[0].host == "10.9.8.7"


def test_unset_variable_error_names_key_and_variable() -> None:
    message = error_of("log:\n  level: ${LOG_LEVEL}\n")

    assert message == "log.level: environment variable LOG_LEVEL is not set (line 2)"


def test_env_tag_takes_a_whole_value() -> None:
    config = parse_config("poll:\n  interval: !env INTERVAL\n", environ={"INTERVAL": "1m"})

    assert config.poll.interval == 60


def test_file_tag_reads_file_without_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("abc123\n")
    (tmp_path / "config.yaml").write_text(
        "influxdb:\n  url: http://influx:8086\n  bucket: b\n  token: !file token\n"
    )

    config = load_config(tmp_path / "config.yaml", environ={})

    assert config.influxdb is not None and config.influxdb.token is not None
    assert config.influxdb.token.get_secret_value() == "abc123"


def test_relative_paths_are_relative_to_the_config_file() -> None:
    config = load_config(CONFIGS / "good" / "full.yaml", environ=SECRETS)

    assert config.influxdb is not None and config.web.config_file is not None
    assert Path(config.influxdb.ca_file or "") == CONFIGS / "good" / "files" / "ca.pem"
    assert Path(config.web.config_file) == CONFIGS / "good" / "files" / "web-config.yml"
    assert config.influxdb.token is not None
    assert config.influxdb.token.get_secret_value() == "tok-from-file-0123456789"


# ---- secrets --------------------------------------------------------------------------------


def test_secrets_never_appear_in_repr_or_str() -> None:
    full = load_config(CONFIGS / "good" / "full.yaml", environ=SECRETS)
    v1 = load_config(CONFIGS / "good" / "influx_v1.yaml", environ=SECRETS)

    for config in (full, v1):
        for text in (repr(config), str(config), repr(config.influxdb), str(config.devices)):
            for secret in (*SECRETS.values(), *FILE_SECRETS):
                assert secret not in text


@pytest.mark.parametrize(
    "text",
    [
        "devices:\n  - {name: d, host: 'http://admin:hunter2@10.0.0.1'}\n",
        "devices:\n  - {name: d, host: 'admin:hunter2@10.0.0.1'}\n",
        "influxdb: {url: 'http://admin:hunter2@influx:8086', bucket: b}\n",
        "influxdb: {url: 'http://admin:hunter2@[::1', bucket: b}\n",
        "devices:\n  - {name: d, host: h, username: u, password: hunter2, extra: 1}\n",
        "devices:\n  - {name: d, host: h, password: hunter2}\n",
        "influxdb: {url: 'http://influx:8086', bucket: b, token: hunter2, token_file: x}\n",
        "influxdb: {url: 'http://influx:8086', bucket: b, password: hunter2}\n",
    ],
)
def test_secrets_never_appear_in_errors(text: str) -> None:
    assert "hunter2" not in error_of(text)


def test_secret_from_missing_variable_names_variable_not_value() -> None:
    text = "influxdb:\n  url: http://influx:8086\n  bucket: b\n  token: ${INFLUX_TOKEN}\n"

    message = error_of(text, environ={"OTHER": "tok-env-5f1d2c"})

    assert message == "influxdb.token: environment variable INFLUX_TOKEN is not set (line 4)"


# ---- line numbers and positions -------------------------------------------------------------


def test_error_points_at_the_line_of_the_bad_key() -> None:
    text = (
        "devices:\n"
        "  - name: a\n"
        "    host: 10.0.0.1\n"
        "  - name: b\n"
        "    host: 10.0.0.2\n"
        "  - name: c\n"
        "    host: 10.0.0.3\n"
        "    labels:\n"
        "      site: x\n"
        "      __x: y\n"
    )

    message = error_of(text)

    assert message == "devices[2].labels.__x: label names starting with __ are reserved (line 10)"


def test_missing_key_points_at_the_enclosing_item() -> None:
    text = "poll:\n  interval: 15s\ndevices:\n  - name: a\n    host: h\n  - name: b\n"

    assert error_of(text) == "devices[1].host: required key is missing (line 6)"


def test_duplicate_names_error_names_both_positions() -> None:
    text = "devices:\n  - {name: w, host: a}\n  - {name: x, host: b}\n  - {name: w, host: c}\n"

    assert error_of(text) == (
        "devices[2].name: duplicate device name 'w', first used by devices[0] on line 2 (line 4)"
    )


def test_devices_may_use_different_label_names() -> None:
    text = (
        "devices:\n"
        "  - {name: a, host: h, labels: {site: x}}\n"
        "  - {name: b, host: i, labels: {rack: '1'}}\n"
    )

    config = parse_config(text, environ={})

    assert [d.labels for d in config.devices] == [{"site": "x"}, {"rack": "1"}]


def test_yaml_syntax_error_gives_line_and_column() -> None:
    message = error_of("poll:\n  interval: [15s\n")

    assert message.startswith("<string>: invalid YAML: ")
    assert re.search(r"\(line \d+, column \d+\)$", message)


# ---- device files ---------------------------------------------------------------------------


def test_device_files_are_merged_after_the_inline_devices() -> None:
    config = load_config(CONFIGS / "good" / "fleet.yaml", environ={})

    assert [d.name for d in config.devices] == ["local", "site-a-1", "site-a-2", "site-b-1"]
    assert config.devices[3].labels == {"site": "b", "rack": "r7"}
    assert config.devices[3].base_url == "http://10.0.2.1:8080"


def test_device_file_matched_twice_is_read_once(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("devices:\n  - {name: a, host: h}\n")
    (tmp_path / "config.yml").write_text("device_files: [a.yaml, 'a*.yaml']\n")

    config = load_config(tmp_path / "config.yml", environ={})

    assert [d.name for d in config.devices] == ["a"]


def test_duplicate_names_across_device_files_name_both_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("devices:\n  - {name: x, host: h}\n")
    (tmp_path / "b.yaml").write_text("devices:\n  - {name: y, host: j}\n  - {name: x, host: i}\n")
    (tmp_path / "config.yml").write_text("device_files: ['*.yaml']\n")

    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "config.yml", environ={})

    assert str(caught.value) == (
        f"{tmp_path}/b.yaml: devices[1].name: duplicate device name 'x',"
        f" first used by devices[0] in {tmp_path}/a.yaml on line 2 (line 3)"
    )


def test_empty_device_list_in_a_device_file_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("devices: []\n")
    (tmp_path / "config.yml").write_text("device_files: [none.yaml]\n")

    assert load_config(tmp_path / "config.yml", environ={}).devices == []


# ---- hosts, listen address, networks --------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "base_url", "address"),
    [
        ("192.168.1.20", "http://192.168.1.20:80", "192.168.1.20:80"),
        ("192.168.1.20:8080", "http://192.168.1.20:8080", "192.168.1.20:8080"),
        ("Charger.LOCAL", "http://charger.local:80", "charger.local:80"),
        ("http://charger.local", "http://charger.local:80", "charger.local:80"),
        ("https://charger.local/", "https://charger.local:443", "charger.local:443"),
        ("https://charger.local:8443", "https://charger.local:8443", "charger.local:8443"),
        ("fd00::20", "http://[fd00::20]:80", "[fd00::20]:80"),
        ("[fd00::20]:8080", "http://[fd00::20]:8080", "[fd00::20]:8080"),
        ("http://[fd00::20]", "http://[fd00::20]:80", "[fd00::20]:80"),
    ],
)
def test_device_host_forms(host: str, base_url: str, address: str) -> None:
    device = DeviceConfig(name="d", host=host)

    assert (device.base_url, device.address) == (base_url, address)


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [("0.0.0.0:9654", "0.0.0.0", 9654), ("[::1]:9000", "::1", 9000), (":9654", "", 9654)],
)
def test_listen_address(listen: str, host: str, port: int) -> None:
    config = parse_config(f"listen: '{listen}'\n", environ={})

    assert (config.listen_host, config.listen_port) == (host, port)


def test_probe_allow_networks_are_parsed_leniently() -> None:
    config = parse_config("probe: {allow: [192.168.1.7/24, 'fd00::/64', 10.0.0.1]}", environ={})

    assert [str(n) for n in config.probe.networks] == ["192.168.1.0/24", "fd00::/64", "10.0.0.1/32"]


def test_empty_sections_mean_defaults() -> None:
    config = parse_config("poll:\nprobe:\nweb:\nlog:\ndevices:\n", environ={})

    assert config == Config()


def test_default_influx_buffer_holds_an_hour_of_a_100_device_fleet() -> None:
    config = parse_config("influxdb: {url: 'http://i:8086', bucket: b}", environ={})

    assert config.influxdb is not None
    # A three-phase charger's reading is the largest: lektrico_device, lektrico_charger,
    # lektrico_charger_errors and three lektrico_charger_phase points; 10 leaves room.
    assert config.influxdb.buffer_points >= 100 * (3600 // 15) * 10


def test_config_is_frozen() -> None:
    config = parse_config("devices: [{name: a, host: h}]", environ={})

    with pytest.raises(ValueError, match="frozen"):
        config.devices[0].name = "b"  # type: ignore[misc]


# ---- file-level errors ----------------------------------------------------------------------


def test_missing_file() -> None:
    with pytest.raises(ConfigFileError) as caught:
        load_config(CONFIGS / "no-such.yaml")

    assert str(caught.value) == f"{CONFIGS / 'no-such.yaml'}: file not found"


def test_directory_instead_of_file() -> None:
    with pytest.raises(ConfigFileError, match="is a directory, not a file"):
        load_config(CONFIGS)


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("yaml_syntax_error.yaml", ConfigSyntaxError),
        ("duplicate_device_key.yaml", ConfigSyntaxError),
        ("invalid_utf8.yaml", ConfigFileError),
        ("file_tag_missing.yaml", ConfigFileError),
        ("poll_key_misspelled.yaml", ConfigValueError),
        ("env_var_unset.yaml", ConfigValueError),
    ],
)
def test_errors_are_typed(path: str, kind: type[ConfigError]) -> None:
    with pytest.raises(kind):
        load_config(CONFIGS / "bad" / path, environ={})


# ---- the corpora ----------------------------------------------------------------------------


def _header(path: Path) -> tuple[str, int | None]:
    first, second = path.read_bytes().decode("utf-8", "replace").splitlines()[:2]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: '"
    assert second.startswith("# line: "), f"{path.name}: second line must be '# line: N|none'"
    line = second.removeprefix("# line: ")
    return first.removeprefix("# expect: "), None if line == "none" else int(line)


def test_bad_corpus_is_large_enough() -> None:
    assert len(BAD_CONFIGS) >= 35


@pytest.mark.parametrize("path", BAD_CONFIGS, ids=lambda p: p.stem)
def test_bad_config_gives_one_line_error(path: Path) -> None:
    expect, line = _header(path)

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=SECRETS)

    message = str(caught.value)
    assert "\n" not in message
    assert expect in message
    if line is not None:
        assert f"(line {line})" in message or f"(line {line}," in message
    assert "pydantic" not in message and "Traceback" not in message
    assert not any(secret in message for secret in SECRETS.values())


@pytest.mark.parametrize("path", GOOD_CONFIGS, ids=lambda p: p.stem)
def test_good_config_loads(path: Path) -> None:
    config = load_config(path, environ=SECRETS)

    assert isinstance(config, Config)


# ---- hostile input: special files, huge files, alias bombs ----------------------------------

BAD = CONFIGS / "bad"


def _bounded(call: Callable[[], object], unblock: Path | None = None, seconds: float = 5.0) -> str:
    """The one-line ConfigError `call` raises, failing if it takes longer than `seconds`.

    Runs in a thread so that old code blocking on a FIFO fails the test instead of hanging it;
    `unblock` (the FIFO) is then opened for writing, which lets a blocked reader finish.
    """
    outcome: list[BaseException | object] = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the test below
            outcome.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        if unblock is not None:
            os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(seconds)
        pytest.fail(f"still reading after {seconds} s")
    (result,) = outcome
    assert isinstance(result, ConfigError), f"expected a ConfigError, got {result!r}"
    message = str(result)
    assert "\n" not in message
    return message


def test_alias_bomb_is_refused_at_once_in_little_memory() -> None:
    path = BAD / "yaml_alias_bomb.yaml"
    assert path.stat().st_size < 600
    tracemalloc.start()
    try:
        started = time.perf_counter()
        message = _bounded(lambda: load_config(path, environ={}))
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert message == f"{path}: aliases expand to more than 250,000 values;" + (
        " write the values out or use fewer nested aliases"
    )
    assert elapsed < 0.2
    assert peak < 5 * 1024 * 1024


def test_aliases_a_real_fleet_uses_are_accepted() -> None:
    # Two thousand devices merging one device's settings: about 20,000 values from aliases.
    first = "  - &defaults {name: d, host: h, labels: {site: home, rack: r1}, timeout: 3s}\n"
    rest = "".join(f"  - {{<<: *defaults, name: d{i}, host: h{i}}}\n" for i in range(2000))

    config = parse_config("devices:\n" + first + rest, environ={})

    assert len(config.devices) == 2001
    assert config.devices[-1].labels == {"site": "home", "rack": "r1"}


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def _influx(token_file: str) -> str:
    return f"influxdb:\n  url: http://influxdb:8086\n  bucket: b\n  token_file: {token_file}\n"


def _device_secret(value: str) -> str:
    return f"devices:\n  - name: d\n    host: h\n    username: admin\n    password: {value}\n"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (None, "{fifo}: is a FIFO (named pipe), not a regular file"),
        ("device_files: [pipe]\n", "{fifo}: is a FIFO (named pipe), not a regular file"),
        (_influx("pipe"), "influxdb.token_file: pipe is a FIFO (named pipe), not a file (line 4)"),
        (
            _device_secret("!file pipe"),
            "devices[0].password: pipe is a FIFO (named pipe), not a regular file (line 5)",
        ),
        (
            "web: {config_file: pipe}\n",
            "web.config_file: pipe is a FIFO (named pipe), not a file (line 1)",
        ),
    ],
    ids=["config", "device_file", "token_file", "file_tag", "web_config_file"],
)
def test_a_fifo_is_one_line_error_without_blocking(
    tmp_path: Path, fifo: Path, config: str | None, expected: str
) -> None:
    path = fifo
    if config is not None:
        path = tmp_path / "config.yml"
        path.write_text(config)

    message = _bounded(lambda: load_config(path, environ={}), unblock=fifo)

    assert message == expected.format(fifo=fifo)


def _huge(path: Path, size: int) -> Path:
    line = "# " + "x" * 1021 + "\n"
    path.write_text("devices: []\n" + line * (size // len(line) + 1))
    return path


@pytest.mark.parametrize(
    ("config", "name", "size", "expected"),
    [
        (None, "config.yml", 5 << 20, "{huge}: file is larger than the limit of 4 MiB"),
        (
            "device_files: [huge.yml]\n",
            "huge.yml",
            5 << 20,
            "{huge}: file is larger than the limit of 4 MiB",
        ),
        (
            _influx("huge"),
            "huge",
            100 << 10,
            "influxdb.token_file: huge is larger than the limit of 64 KiB (line 4)",
        ),
        (
            _device_secret("!file huge"),
            "huge",
            100 << 10,
            "devices[0].password: file huge is larger than the limit of 64 KiB (line 5)",
        ),
    ],
    ids=["config", "device_file", "token_file", "file_tag"],
)
def test_a_huge_file_is_refused_after_a_bounded_read(
    tmp_path: Path, config: str | None, name: str, size: int, expected: str
) -> None:
    huge = _huge(tmp_path / name, size)
    path = huge if config is None else tmp_path / "config.yml"
    if config is not None:
        path.write_text(config)

    assert _bounded(lambda: load_config(path, environ={})) == expected.format(huge=huge)


def test_dev_zero_as_the_config_file_is_refused_without_reading() -> None:
    assert _bounded(lambda: load_config("/dev/zero", environ={})) == (
        "/dev/zero: is a character device, not a regular file"
    )


def test_check_config_refuses_a_fifo_with_one_line(
    fifo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _bounded_exit(lambda: main(["--config", str(fifo), "--check-config"]), fifo)

    err = capsys.readouterr().err
    assert code == 2
    assert (
        err
        == f"lektrico-exporter: config error: {fifo}: is a FIFO (named pipe), not a regular file\n"
    )


def _bounded_exit(call: Callable[[], int], fifo: Path) -> int:
    codes: list[int] = []
    worker = threading.Thread(target=lambda: codes.append(call()), daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(5)
        pytest.fail("--check-config still reading after 5 s")
    return codes[0]


# ---- secrets and edge cases -----------------------------------------------------------------


@pytest.mark.parametrize("password", ["h€llo-hunter2", "パスワード-hunter2", "hunter2-\U0001f511"])
def test_password_that_is_not_latin1_is_refused_without_echo(password: str) -> None:
    message = error_of(_device_secret(f"'{password}'").replace("name: d", "name: garage"))

    assert message == (
        "devices[0].password: password of device 'garage' has a character that HTTP Basic"
        " authentication cannot send (only Latin-1 text) (line 5)"
    )
    assert "hunter2" not in message
    assert not any(ch in message for ch in password if ord(ch) > 0xFF)


def test_latin1_password_is_accepted() -> None:
    config = parse_config(_device_secret("'pässwörd'"), environ={})

    assert config.devices[0].password is not None
    assert config.devices[0].password.get_secret_value() == "pässwörd"


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("${DEVICE_PW}", {"DEVICE_PW": ""}, "environment variable DEVICE_PW is empty"),
        ("!env DEVICE_PW", {"DEVICE_PW": ""}, "environment variable DEVICE_PW is empty"),
        (
            "${DEVICE_PW:-}",
            {},
            "environment variable DEVICE_PW is not set and its default is empty",
        ),
    ],
)
def test_empty_secret_from_the_environment_is_refused(
    value: str, environ: dict[str, str], expected: str
) -> None:
    message = error_of(_device_secret(value), environ=environ)

    assert message == f"devices[0].password: {expected}; a password must not be empty (line 5)"


def test_empty_influx_token_from_the_environment_is_refused() -> None:
    text = "influxdb:\n  url: http://influx:8086\n  bucket: b\n  token: ${INFLUX_TOKEN}\n"

    message = error_of(text, environ={"INFLUX_TOKEN": ""})

    assert message == (
        "influxdb.token: environment variable INFLUX_TOKEN is empty;"
        " a token must not be empty (line 4)"
    )


def test_check_config_refuses_an_empty_secret_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LEKTRICO_TEST_DEVICE_PW", "")
    path = tmp_path / "config.yml"
    path.write_text(_device_secret("${LEKTRICO_TEST_DEVICE_PW}"))

    assert main(["--config", str(path), "--check-config"]) == 2
    assert capsys.readouterr().err == (
        "lektrico-exporter: config error: devices[0].password: environment variable"
        " LEKTRICO_TEST_DEVICE_PW is empty; a password must not be empty (line 5)\n"
    )


def test_poll_interval_of_100ms_is_the_floor() -> None:
    config = parse_config("poll: {interval: 100ms, timeout: 50ms}\n", environ={})

    assert config.poll.interval == pytest.approx(0.1)
    assert error_of("poll: {interval: 99ms, timeout: 50ms}\n") == (
        "poll.interval: must be at least 100ms, got 99ms (line 1)"
    )


def test_names_that_differ_only_in_a_rewritten_backslash_are_refused() -> None:
    text = (
        "devices:\n"
        "  - {name: 'carport\\', host: a}\n"
        "  - {name: 'garage', host: b}\n"
        "  - {name: 'carport/', host: c}\n"
    )

    assert error_of(text) == (
        'devices[2].name: "carport/" is the same InfluxDB tag as "carport\\",'
        " the name of devices[0] on line 2 (line 4)"
    )


def test_label_value_colliding_with_a_discovery_label_is_refused() -> None:
    text = (
        "discovery: {labels: {site: 'a\\,b'}}\n"
        "devices:\n  - {name: d, host: h, labels: {site: 'a/,b'}}\n"
    )

    assert error_of(text) == (
        'discovery.labels.site: "a\\,b" is the same InfluxDB tag as "a/,b"'
        " of devices[0].labels.site on line 3 (line 1)"
    )


def test_names_and_values_that_escape_apart_are_accepted() -> None:
    text = (
        "devices:\n"
        "  - {name: 'a\\b', host: a, labels: {site: 'x y'}}\n"
        "  - {name: 'a/b', host: b, labels: {site: 'x,y'}}\n"
        "  - {name: 'a b', host: c, labels: {site: 'x y'}}\n"
    )

    assert [d.name for d in parse_config(text, environ={}).devices] == ["a\\b", "a/b", "a b"]


# ---- the device-file watcher of a running exporter ------------------------------------------


async def _until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_watcher_skips_bad_device_files_and_keeps_watching(
    tmp_path: Path, make_fleet: FleetFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = await make_fleet([DeviceSpec(n, "1p7k", seed=i) for i, n in enumerate("abc")])
    fleet_d = tmp_path / "fleet.d"
    fleet_d.mkdir()

    def device_file(name: str, device: str, host: str | None = None) -> None:
        entry = {"name": device, "host": host or fleet.host(device)}
        (fleet_d / name).write_text(json.dumps({"devices": [entry]}))

    device_file("one.yml", "a")
    path = tmp_path / "config.yml"
    path.write_text(
        f"listen: '127.0.0.1:{free_port()}'\ndevice_files: ['fleet.d/*.yml']\n"
        "poll: {interval: 500ms, timeout: 300ms}\n"
    )
    exp = Exporter(load_config(path), config_path=str(path), watch_interval=0.1)
    await exp.start()

    def logged(name: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if f"{fleet_d / name}: " in r.getMessage()]

    try:
        with caplog.at_level(logging.INFO, logger="lektrico"):
            bomb = (BAD / "device_files" / "alias-bomb.yaml").read_text()
            started = time.monotonic()
            (fleet_d / "bomb.yml").write_text(bomb)
            os.mkfifo(fleet_d / "pipe.yml")
            await _until(lambda: bool(logged("bomb.yml") and logged("pipe.yml")))
            assert time.monotonic() - started < 2
            assert logged("bomb.yml")[0] == (
                f"bad device file: {fleet_d / 'bomb.yml'}: aliases expand to more than 250,000"
                " values; write the values out or use fewer nested aliases;"
                " not loaded, it gave no devices before"
            )
            assert "is a FIFO (named pipe), not a regular file" in logged("pipe.yml")[0]
            assert set(exp.poller.devices) == {"a"}

            device_file("two.yml", "b")  # added later, beside the bad files: still loaded
            await _until(lambda: set(exp.poller.devices) == {"a", "b"})

            device_file("one.yml", "a", host="10.0.0.1:70000")  # goes bad: keeps device a
            await _until(lambda: bool(logged("one.yml")))
            assert "port 70000 is out of range" in logged("one.yml")[0]
            assert logged("one.yml")[0].endswith("; keeping the 1 device it gave before")
            device_file("three.yml", "c")
            await _until(lambda: set(exp.poller.devices) == {"a", "b", "c"})
            assert exp.poller.devices["a"].target.base_url == fleet.url("a")
    finally:
        await exp.stop()


async def test_reload_refuses_an_alias_bomb_in_the_config_at_once(
    tmp_path: Path, make_fleet: FleetFactory
) -> None:
    fleet = await make_fleet([DeviceSpec("a", "1p7k")])
    path = tmp_path / "config.yml"
    path.write_text(
        f"listen: '127.0.0.1:{free_port()}'\n"
        f"devices: [{{name: a, host: '{fleet.host('a')}'}}]\n"
        "poll: {interval: 500ms, timeout: 300ms}\n"
    )
    exp = Exporter(load_config(path), config_path=str(path))
    await exp.start()
    try:
        path.write_text((BAD / "yaml_alias_bomb.yaml").read_text())
        started = time.monotonic()

        reason = await exp.reload()

        assert time.monotonic() - started < 0.5
        assert reason == f"{path}: aliases expand to more than 250,000 values;" + (
            " write the values out or use fewer nested aliases"
        )
        assert set(exp.poller.devices) == {"a"}
    finally:
        await exp.stop()


def test_every_problem_of_a_config_is_reported_a_line_each() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "devices:\n"
            "  - {name: a, hots: 10.0.0.1}\n"
            "  - {name: b, host: 10.0.0.2, labels: {site: 3}}\n"
            "poll: {interval: 5x}\n"
        )
    lines = [str(p) for p in caught.value.problems()]
    assert len(lines) == 3, lines
    assert lines[0].startswith("devices[0].hots: unknown key; did you mean 'host'?")
    assert not any("required key is missing" in line for line in lines)
    assert any(line.startswith("devices[1].labels.site") for line in lines)
    assert any(line.startswith("poll.interval") for line in lines)


def test_check_config_prints_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("devices:\n  - {name: a, hots: 10.0.0.1}\npoll: {interval: 5x}\n")
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(path), "--config.check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 2 and out.stderr.count("config error:") == 2
