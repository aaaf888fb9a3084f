"""The InfluxDB schema: golden lines, escaping, and field types that never change."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.catalogue import table as cat
from exporter.outputs.influx.lines import (
    Serializer,
    escape_key,
    escape_measurement,
    quote_string,
    timestamp,
)
from exporter.reading import Reading, Sample
from harness.servers import InfluxDB1, VictoriaMetrics

T0 = 1_700_000_000.25


def charger_reading(**changes: object) -> Reading:
    samples = (
        Sample("lektrico_up", (), 1.0),
        Sample("lektrico_poll_duration_seconds", (), 0.0125),
        Sample("lektrico_last_poll_success_timestamp_seconds", (), T0),
        Sample(
            "lektrico_device_info",
            (
                ("device_id", "3p22k_123456"),
                ("model", "3p22k"),
                ("serial", "123456"),
                ("fw_version", "1.60"),
                ("fw_id", ""),
                ("board_revision", "E"),
                ("alias", 'Garage "left", 2'),
            ),
            1.0,
        ),
        Sample("lektrico_charger_state", (("state", "A"),), 0.0),
        Sample("lektrico_charger_state", (("state", "C"),), 1.0),
        Sample("lektrico_power_watts", (), 11040.0),
        Sample("lektrico_session_energy_joules", (), 7200.5),
        Sample("lektrico_session_id", (), 804.0),
        Sample("lektrico_current_amperes", (("phase", "L1"),), 16.0),
        Sample("lektrico_current_amperes", (("phase", "L2"),), 15.9),
        Sample("lektrico_voltage_volts", (("phase", "L1"),), 230.0),
        Sample("lektrico_voltage_volts", (("phase", "L2"),), 231.5),
        Sample("lektrico_energy_joules_total", (), 12.345 * cat.KWH),
        Sample("lektrico_paused", (), 0.0),
        Sample("lektrico_current_limit_reason", (("reason", "hardware"),), 0.0),
        Sample("lektrico_current_limit_reason", (("reason", "em"),), 1.0),
        Sample("lektrico_current_limit_amperes", (("limit", "install"),), 32.0),
        Sample("lektrico_error_active", (("error", "overtemp"),), 0.0),
        Sample("lektrico_error_logged", (("error", "overtemp"),), 1.0),
        Sample("lektrico_sessions_total", (), 815.0),
        Sample("lektrico_config_flag", (("flag", "rcd_enabled"),), 1.0),
        Sample("lektrico_wifi_signal_dbm", (), -67.0),
        Sample(
            "lektrico_wifi_info", (("ssid", "Home Net,5G"), ("bssid", ""), ("ip", "10.0.0.9")), 1
        ),
        Sample("lektrico_poll_errors_total", (("reason", "timeout"),), 2.0),
    )
    fields: dict[str, object] = {
        "device": "garage",
        "user_labels": (("site", "home"),),
        "time": T0,
        "up": True,
        "duration": 0.0125,
        "model": "3p22k",
        "samples": samples,
    }
    fields.update(changes)
    return Reading(**fields)  # type: ignore[arg-type]


GOLDEN = r"""
lektrico_device,device=garage,model=3p22k,site=home up=true,poll_duration_seconds=0.0125,device_id="3p22k_123456",serial="123456",fw_version="1.60",board_revision="E",alias="Garage \"left\", 2",rcd_enabled=true,wifi_signal_dbm=-67.0,wifi_ssid="Home Net,5G",wifi_ip="10.0.0.9",poll_errors_total_timeout=2i 1700000000
lektrico_charger,device=garage,model=3p22k,site=home state="C",power_watts=11040.0,session_energy_joules=7200.5,session_id=804i,energy_joules_total=44442000i,paused=false,current_limit_reason="em",current_limit_amperes_install=32.0,sessions_total=815i 1700000000
lektrico_charger_phase,device=garage,model=3p22k,phase=L1,site=home current_amperes=16.0,voltage_volts=230.0 1700000000
lektrico_charger_phase,device=garage,model=3p22k,phase=L2,site=home current_amperes=15.9,voltage_volts=231.5 1700000000
lektrico_charger_errors,device=garage,model=3p22k,site=home active_overtemp=false,logged_overtemp=true 1700000000
"""  # noqa: E501


def test_a_charger_poll_gives_one_point_per_measurement_and_phase() -> None:
    lines = Serializer("s").lines(charger_reading())

    assert "\n".join(lines) == GOLDEN.strip()


def test_a_down_device_writes_only_its_health() -> None:
    samples = (
        Sample("lektrico_up", (), 0.0),
        Sample("lektrico_poll_duration_seconds", (), 5.0),
        Sample("lektrico_poll_errors_total", (("reason", "timeout"),), 3.0),
    )
    reading = charger_reading(up=False, samples=samples, model="unknown")

    lines = Serializer("ms").lines(reading)

    assert lines == [
        "lektrico_device,device=garage,model=unknown,site=home up=false,"
        "poll_duration_seconds=5.0,poll_errors_total_timeout=3i 1700000000250"
    ]


@pytest.mark.parametrize(
    ("precision", "expected"),
    [
        ("s", 1_700_000_000),
        ("ms", 1_700_000_000_250),
        ("us", 1_700_000_000_250_000),
        ("ns", 1_700_000_000_250_000_000),
    ],
)
def test_timestamp_is_the_poll_time_at_the_configured_precision(
    precision: str, expected: int
) -> None:
    assert timestamp(T0, precision) == expected
    assert Serializer(precision).lines(charger_reading())[0].endswith(f" {expected}")


def test_measurement_prefix_is_configurable() -> None:
    lines = Serializer("s", prefix="ev").lines(charger_reading())

    assert {line.split(",", 1)[0] for line in lines} == {
        "ev_device",
        "ev_charger",
        "ev_charger_phase",
        "ev_charger_errors",
    }


def test_empty_tag_values_are_left_out() -> None:
    reading = charger_reading(user_labels=(("rack", ""), ("site", "home")))

    assert all(",rack=" not in line for line in Serializer().lines(reading))


def test_values_that_cannot_be_written_are_left_out() -> None:
    samples = (
        Sample("lektrico_up", (), 1.0),
        Sample("lektrico_power_watts", (), float("nan")),
        Sample("lektrico_temperature_celsius", (), float("inf")),
        Sample("lektrico_sessions_total", (), 1e30),
        Sample("lektrico_session_id", (), 7.0),
    )

    lines = Serializer().lines(charger_reading(samples=samples))

    assert (
        lines[1] == "lektrico_charger,device=garage,model=3p22k,site=home session_id=7i 1700000000"
    )


# ---- escaping ----------------------------------------------------------------------------------


def test_escaping_follows_the_line_protocol_reference() -> None:
    assert escape_measurement("my measurement,x=1") == r"my\ measurement\,x=1"
    assert escape_key("tag key,a=b") == r"tag\ key\,a\=b"
    assert quote_string('say "hi" \\o/') == r'"say \"hi\" \\o/"'
    assert escape_key("ünïcödé 🚗") == r"ünïcödé\ 🚗"


def test_line_breaks_become_spaces() -> None:
    assert escape_key("a\nb\tc") == r"a\ b\ c"
    assert quote_string("a\r\nb") == '"a  b"'


def test_backslashes_that_influxdb_versions_read_differently_become_slashes() -> None:
    assert escape_key("DOMAIN\\user") == "DOMAIN\\user"
    assert escape_key("trailing\\") == "trailing/"
    assert escape_key("a\\ b") == r"a/\ b"
    assert escape_key("a\\\\b") == "a/\\b"


def unescape(text: str, specials: str) -> str:
    return re.sub(r"\\([" + re.escape(specials) + "])", r"\1", text)


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, str], int]:
    """A reference parser for what the serializer emits (InfluxDB line protocol)."""
    head = re.match(r"((?:[^\\, ]|\\.)+)((?:,(?:[^\\= ]|\\.)+=(?:[^\\, ]|\\.)+)*) ", line)
    assert head, line
    measurement = unescape(head.group(1), ", ")
    tags = {}
    for pair in re.findall(r",((?:[^\\=, ]|\\.)+)=((?:[^\\, ]|\\.)+)", head.group(2)):
        tags[unescape(pair[0], ",= ")] = unescape(pair[1], ",= ")
    rest = line[head.end() :]
    fields = {}
    field = re.compile(r'((?:[^\\=, ]|\\.)+)=("(?:[^"\\]|\\.)*"|[^, ]+)(,| )')
    pos = 0
    while True:
        m = field.match(rest, pos)
        assert m, rest[pos:]
        value = m.group(2)
        if value.startswith('"'):
            value = '"' + re.sub(r'\\(["\\])', r"\1", value[1:-1]) + '"'
        fields[unescape(m.group(1), ",= ")] = value
        pos = m.end()
        if m.group(3) == " ":
            break
    return measurement, tags, fields, int(rest[pos:])


def expected_text(text: str) -> str:
    """What survives the trip: line breaks as spaces, ambiguous backslashes as slashes."""
    text = re.sub(r"[\n\r\t]", " ", text)
    return re.sub(r"\\(?=[\\ ,=]|$)", "/", text)


printable = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(device=printable, label=printable, alias=printable, state=printable)
def test_any_text_survives_escaping(device: str, label: str, alias: str, state: str) -> None:
    samples = (
        Sample("lektrico_up", (), 1.0),
        Sample("lektrico_wifi_info", (("ssid", alias),), 1.0),
        Sample("lektrico_charger_state", (("state", state),), 1.0),
    )
    reading = charger_reading(device=device, user_labels=(("site", label),), samples=samples)

    lines = Serializer().lines(reading)

    _, tags, fields, ts = parse_line(lines[0])
    assert tags == {"device": expected_text(device), "model": "3p22k", "site": expected_text(label)}
    assert fields["wifi_ssid"] == '"' + alias.translate(str.maketrans("\n\r\t", "   ")) + '"'
    assert ts == 1_700_000_000
    assert parse_line(lines[1])[2]["state"] == '"' + re.sub(r"[\n\r\t]", " ", state) + '"'


NASTY = ["a b", "a,b", "a=b", 'say "x"', "back\\slash", "end\\", "ünï 🚗", "#hash", "a\\ b"]


@pytest.mark.server
async def test_escaped_text_reads_back_the_same_from_influxdb_and_victoriametrics(
    tmp_path: Path,
) -> None:
    influx, vm = InfluxDB1(tmp_path / "influx"), VictoriaMetrics(tmp_path / "vm")
    await influx.start()
    await vm.start()
    try:
        serializer = Serializer("s")
        body = b""
        for i, text in enumerate(NASTY):
            samples = (
                Sample("lektrico_up", (), 1.0),
                Sample("lektrico_device_info", (("alias", text),), 1.0),
            )
            body += serializer.encode(
                charger_reading(device=f"d{i}", user_labels=(("site", text),), samples=samples)
            )
        await influx.query("CREATE DATABASE t")
        assert await influx.write("t", body) == (204, "")
        async with (
            aiohttp.ClientSession() as session,
            session.post(vm.url + "/api/v2/write", data=body) as resp,
        ):
            assert resp.status == 204

        rows = await influx.rows('SELECT "up", "alias" FROM "lektrico_device" GROUP BY *', "t")
        series = await vm.export('{__name__="lektrico_device_up"}')
    finally:
        await influx.stop()
        await vm.stop()
    want = {f"d{i}": expected_text(text) for i, text in enumerate(NASTY)}
    assert {r["device"]: r["site"] for r in rows} == want
    assert {r["device"]: r["alias"] for r in rows} == {f"d{i}": t for i, t in enumerate(NASTY)}
    assert {s["metric"]["device"]: s["metric"]["site"] for s in series} == want


# ---- field types -------------------------------------------------------------------------------


def label_values(metric: cat.Metric) -> tuple[str, ...]:
    ex = metric.extract
    if isinstance(ex, cat.Labelled):
        return tuple(name for name, _ in ex.entries)
    if isinstance(ex, cat.Info):
        return tuple(name for name, _ in ex.fields if name != "model")
    if isinstance(ex, cat.Flags):
        return cat.ERROR_FLAGS
    if metric.name == "lektrico_poll_errors_total":
        return cat.POLL_ERROR_REASONS
    if metric.name == "lektrico_values_dropped_total":
        return ("type", "non_finite", "out_of_range", "duplicate")
    if metric.name == "lektrico_method_supported":
        return tuple(m.name for m in cat.METHODS)
    raise AssertionError(f"{metric.name}: which label values?")


def field_table() -> dict[tuple[str, str], tuple[str, cat.Metric]]:
    """(measurement, field) → (type, metric), for every field the catalogue can produce."""
    table: dict[tuple[str, str], tuple[str, cat.Metric]] = {}
    for m in cat.CATALOGUE:
        if m.influx is None:
            continue
        names = [m.influx.field]
        if m.influx.label_as_field:
            names = [m.influx.field + value for value in label_values(m)]
        for name in names:
            key = (f"lektrico_{m.influx.measurement}", name)
            assert key not in table, f"{m.name} and {table[key][1].name} both write {key}"
            table[key] = (m.influx.type, m)
    return table


def test_no_two_metrics_write_the_same_field() -> None:
    assert len(field_table()) > 60


def test_counters_are_integers_and_flags_booleans() -> None:
    for (_, field), (type_, metric) in field_table().items():
        if metric.kind is cat.Kind.COUNTER:
            assert type_ == "int", metric.name
        if metric.kind is cat.Kind.STATESET or metric.kind is cat.Kind.INFO:
            assert type_ == "string", metric.name
        if field.endswith(("_watts", "_amperes", "_volts", "_celsius", "_ratio")):
            assert type_ == "float", metric.name


def test_measurements_are_per_device_kind() -> None:
    measurements = {measurement for measurement, _ in field_table()}

    assert measurements == {
        "lektrico_device",
        "lektrico_charger",
        "lektrico_charger_phase",
        "lektrico_charger_errors",
        "lektrico_meter",
        "lektrico_meter_phase",
    }


def written_type(value: str) -> str:
    if value.startswith('"'):
        return "string"
    if value in ("true", "false"):
        return "bool"
    if value.endswith("i"):
        assert re.fullmatch(r"-?\d+i", value), value
        return "int"
    assert re.fullmatch(r"-?\d+\.\d+(e[+-]\d+)?|-?\d(\.\d+)?e[+-]\d+", value), value
    return "float"


def every_sample(values: Iterator[float]) -> tuple[Sample, ...]:
    out: list[Sample] = []
    for m in cat.CATALOGUE:
        if m.influx is None:
            continue
        if m.kind is cat.Kind.STATESET:
            out.append(Sample(m.name, ((m.labels[0], "X"),), 1.0))
        elif m.kind is cat.Kind.INFO:
            out.append(Sample(m.name, tuple((v, "text") for v in label_values(m)), 1.0))
        elif m.influx.label_as_field:
            out.extend(Sample(m.name, ((m.labels[0], v),), next(values)) for v in label_values(m))
        elif m.labels:
            out.extend(Sample(m.name, ((m.labels[0], p),), next(values)) for p in cat.PHASES)
        else:
            out.append(Sample(m.name, (), next(values)))
    return tuple(out)


numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15),
    st.integers(-(10**12), 10**12).map(float),
    st.sampled_from([0.0, -0.0, 1.0, 5e-324, 1e15, 0.1 + 0.2]),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(numbers, min_size=40, max_size=40))
def test_a_field_always_has_its_catalogue_type(values: list[float]) -> None:
    table = field_table()
    reading = charger_reading(samples=every_sample(iter(values * 10)))

    lines = Serializer().lines(reading)

    seen = set()
    for line in lines:
        measurement, _, fields, _ = parse_line(line)
        for field, value in fields.items():
            assert written_type(value) == table[measurement, field][0], (measurement, field)
            seen.add((measurement, field))
    assert seen == set(table)
