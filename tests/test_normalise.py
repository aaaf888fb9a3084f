"""Firmware drift in, catalogue samples out: real captures, wire quirks and dropped values."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import reading as reading_module
from exporter.catalogue import table as cat
from exporter.device.client import PollError, decode_reply
from exporter.device.normalise import (
    check_main_reply,
    extract,
    inactive_errors,
    normalise_reply,
    to_number,
)
from exporter.reading import Sample, shared_sample

CAPTURES = Path(__file__).parent / "captures"
CI = "Charger_info.Get"
MI = "Meter_info.Get"
AC = "App_config.Get"
CF = "Charger_config.Get"
SC = "System_currents.Get"
AE = "Active_errors.Get"
EM = "EM_status.Get"


def capture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CAPTURES / name).read_text())
    return data


FW147 = "1p7k-charger_info.get-fw1.47.json"
FW151 = "1p7k-charger_info.get-fw1.51-partial.json"
CHARGER_CONFIG = "1p7k-charger_config.get-library-docstring.json"
EM_APP_CONFIG = "em-app_config.get.json"
METER_INFO = "em-meter_info-merged-library-mock.json"


def run(
    model: str, replies: Mapping[str, Mapping[str, Any]], dropped: Counter[str] | None = None
) -> list[Sample]:
    """Replies as they come off the wire (normalised here, as the poller does), to samples."""
    normalised = {method: normalise_reply(reply) for method, reply in replies.items()}
    return extract(cat.MODELS[model], normalised, Counter() if dropped is None else dropped)


def series(samples: list[Sample], metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {s.labels: s.value for s in samples if s.metric == metric}


def one(samples: list[Sample], metric: str, **labels: str) -> float | None:
    return series(samples, metric).get(tuple(labels.items()))


def label(samples: list[Sample], metric: str, name: str) -> str:
    (labels,) = series(samples, metric)
    return dict(labels)[name]


def charger_info(**changes: Any) -> dict[str, Any]:
    reply = capture(FW147)
    reply.update(changes)
    return reply


def without(reply: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in keys}


# ---- fw 1.47 Charger_info ------------------------------------------------------------------


def test_instant_power_is_exported_in_watts() -> None:
    samples = run("1p7k", {CI: capture(FW147)})

    assert one(samples, "lektrico_power_watts") == 1179.57


def test_session_energy_in_wh_is_exported_in_joules() -> None:
    samples = run("1p7k", {CI: capture(FW147)})

    assert one(samples, "lektrico_session_energy_joules") == pytest.approx(12_650_832.0, rel=1e-12)


def test_total_charged_energy_in_kwh_is_exported_in_exact_joules() -> None:
    samples = run("1p7k", {CI: capture(FW147)})

    assert one(samples, "lektrico_energy_joules_total") == 6_700_028_400.0


@pytest.mark.parametrize(
    ("wire", "joules"), [(1861, 6_699_600_000.0), (1861.9, 6_702_840_000.0), (0.5, 1_800_000.0)]
)
def test_total_charged_energy_is_never_truncated(wire: float, joules: float) -> None:
    samples = run("1p7k", {CI: charger_info(total_charged_energy=wire)})

    assert one(samples, "lektrico_energy_joules_total") == pytest.approx(joules, rel=1e-12)


def test_total_charged_energy_falls_back_to_counters_config() -> None:
    replies = {
        CI: without(capture(FW147), "total_charged_energy"),
        "Counters_config.Get": {"total_charged_energy": 1861.119},
    }

    samples = run("1p7k", replies)

    assert one(samples, "lektrico_energy_joules_total") == 6_700_028_400.0


@pytest.mark.parametrize("metric", ["lektrico_current_amperes", "lektrico_voltage_volts"])
def test_single_phase_charger_exports_l1_only(metric: str) -> None:
    samples = run("1p7k", {CI: capture(FW147)})

    assert [dict(labels)["phase"] for labels in series(samples, metric)] == ["L1"]


def test_single_phase_charger_phase_values_come_from_the_arrays() -> None:
    samples = run("1p7k", {CI: capture(FW147)})

    assert one(samples, "lektrico_current_amperes", phase="L1") == 5.468
    assert one(samples, "lektrico_voltage_volts", phase="L1") == 221.43


def test_charger_state_c_is_one_and_every_other_known_state_zero() -> None:
    samples = run("1p7k", {CI: capture(FW147)})

    states = {dict(k)["state"]: v for k, v in series(samples, "lektrico_charger_state").items()}
    assert states == {s: (1.0 if s == "C" else 0.0) for s in cat.CHARGER_STATES}


def test_current_limit_reason_6_is_em() -> None:
    samples = run("1p7k", {CI: capture(FW147)})

    reasons = series(samples, "lektrico_current_limit_reason")
    assert [dict(k)["reason"] for k, v in reasons.items() if v == 1.0] == ["em"]
    assert set(reasons.values()) == {0.0, 1.0}


def test_capture_values_are_all_trusted() -> None:
    dropped: Counter[str] = Counter()

    run("1p7k", {CI: capture(FW147), CF: capture(CHARGER_CONFIG)}, dropped)

    assert dropped == Counter()


# ---- fw 1.51 partial Charger_info ----------------------------------------------------------


def test_extended_state_wins_over_charger_state() -> None:
    samples = run("1p7k", {CI: capture(FW151)})

    assert one(samples, "lektrico_charger_state", state="B_AUTH") == 1.0
    assert one(samples, "lektrico_charger_state", state="B") == 0.0


def test_charger_state_is_the_fallback_without_an_extended_state() -> None:
    samples = run("1p7k", {CI: without(capture(FW151), "extended_charger_state")})

    assert one(samples, "lektrico_charger_state", state="B") == 1.0


@pytest.mark.parametrize(
    "metric",
    [
        "lektrico_session_duration_seconds",
        "lektrico_session_id",
        "lektrico_heap_free_bytes",
        "lektrico_offered_current_amperes",
        "lektrico_led_brightness_ratio",
    ],
)
def test_keys_missing_on_partial_firmware_are_absent_not_zero(metric: str) -> None:
    dropped: Counter[str] = Counter()

    samples = run("1p7k", {CI: capture(FW151)}, dropped)

    assert series(samples, metric) == {}
    assert dropped == Counter()


def test_current_limit_reason_is_absent_when_the_firmware_omits_it() -> None:
    samples = run("1p7k", {CI: without(capture(FW151), "current_limit_reason")})

    assert series(samples, "lektrico_current_limit_reason") == {}


# ---- Charger_config ------------------------------------------------------------------------


def test_charger_config_serial_and_board_revision_feed_device_info() -> None:
    samples = run("1p7k", {CI: capture(FW147), CF: capture(CHARGER_CONFIG)})

    assert label(samples, "lektrico_device_info", "serial") == "500006"
    assert label(samples, "lektrico_device_info", "board_revision") == "B"
    assert label(samples, "lektrico_device_info", "model") == "1p7k"


def test_serial_falls_back_to_the_device_id_suffix() -> None:
    samples = run("1p7k", {"Device_info.Get": {"device_id": "1p7k_500006"}})

    assert label(samples, "lektrico_device_info", "serial") == "500006"


def test_temperature_thresholds_come_from_charger_config() -> None:
    samples = run("1p7k", {CF: capture(CHARGER_CONFIG)})

    metric = "lektrico_temperature_threshold_celsius"
    assert one(samples, metric, threshold="overtemp") == 65.0
    assert one(samples, metric, threshold="critical") == 75.0


def test_rcd_enabled_false_is_config_flag_zero() -> None:
    samples = run("1p7k", {CF: capture(CHARGER_CONFIG)})

    assert one(samples, "lektrico_config_flag", flag="rcd_enabled") == 0.0


# ---- energy meters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metric",
    [
        "lektrico_meter_current_amperes",
        "lektrico_meter_voltage_volts",
        "lektrico_meter_power_watts",
        "lektrico_meter_power_factor",
    ],
)
def test_three_phase_meter_exports_three_phases(metric: str) -> None:
    samples = run("3em", {MI: capture(METER_INFO), AC: capture(EM_APP_CONFIG)})

    assert [dict(k)["phase"] for k in series(samples, metric)] == ["L1", "L2", "L3"]


def test_three_phase_meter_values_keep_their_phase() -> None:
    samples = run("3em", {MI: capture(METER_INFO)})

    volts = {
        dict(k)["phase"]: v for k, v in series(samples, "lektrico_meter_voltage_volts").items()
    }
    assert volts == {"L1": 238.53, "L2": 238.521, "L3": 236.852}


@pytest.mark.parametrize(
    "metric",
    [
        "lektrico_meter_current_amperes",
        "lektrico_meter_voltage_volts",
        "lektrico_meter_power_watts",
        "lektrico_meter_power_factor",
    ],
)
def test_single_phase_meter_exports_l1_only(metric: str) -> None:
    samples = run("em", {MI: capture(METER_INFO), AC: capture(EM_APP_CONFIG)})

    assert [dict(k)["phase"] for k in series(samples, metric)] == ["L1"]


def test_load_balancing_mode_is_a_stateset_with_one_series_per_mode() -> None:
    samples = run("em", {MI: capture(METER_INFO)})

    modes = {
        dict(k)["mode"]: v for k, v in series(samples, "lektrico_meter_load_balancing_mode").items()
    }
    assert modes == {"off": 1.0, "power": 0.0, "hybrid": 0.0, "green": 0.0, "power_share": 0.0}


def test_load_balancing_mode_falls_back_to_app_config() -> None:
    replies = {
        MI: without(capture(METER_INFO), "load_balancing_mode"),
        AC: capture(EM_APP_CONFIG),
    }

    samples = run("em", replies)

    assert one(samples, "lektrico_meter_load_balancing_mode", mode="green") == 1.0


def test_breaker_rating_comes_from_meter_info_first() -> None:
    samples = run("3em", {MI: capture(METER_INFO), AC: capture(EM_APP_CONFIG)})

    assert one(samples, "lektrico_meter_breaker_rating_amperes") == 32.0


def test_breaker_rating_falls_back_to_app_config() -> None:
    replies = {MI: without(capture(METER_INFO), "breaker_rating"), AC: capture(EM_APP_CONFIG)}

    samples = run("3em", replies)

    assert one(samples, "lektrico_meter_breaker_rating_amperes") == 25.0


def test_meter_exports_no_charger_metrics() -> None:
    samples = run("em", {MI: capture(METER_INFO), CI: capture(FW147)})

    assert series(samples, "lektrico_power_watts") == {}
    assert series(samples, "lektrico_charger_state") == {}


# ---- error frame, zeroconf, main reply check -----------------------------------------------


def test_error_frame_capture_is_an_rpc_poll_error() -> None:
    body = (CAPTURES / "1p7k-rpc-error-frame.json").read_bytes()

    with pytest.raises(PollError) as caught:
        decode_reply(body, CI)

    assert caught.value.reason == "rpc"
    assert "-6" in str(caught.value)


def test_zeroconf_id_gives_model_1p7k() -> None:
    record = capture("1p7k-zeroconf-record.json")

    assert cat.model_from_device_id(record["properties"]["id"]) == "1p7k"


@pytest.mark.parametrize(
    ("device_id", "model"),
    [
        ("1p7k_500006", "1p7k"),
        ("3p22k_500123", "3p22k"),
        ("m2w_81001234", "em"),
        ("m2w_83001234", "3em"),
        ("M2W_83001234 ", "3em"),
        ("m2w_85001234", "unknown"),
        ("wallbox_1", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_model_comes_from_the_device_id_prefix(device_id: str | None, model: str) -> None:
    assert cat.model_from_device_id(device_id) == model


def test_main_reply_without_any_main_value_is_a_schema_error() -> None:
    with pytest.raises(PollError) as caught:
        check_main_reply(CI, {"fw_version": "1.51", "headless": True})

    assert caught.value.reason == "schema"


# ---- wire quirks ---------------------------------------------------------------------------


def test_trailing_space_keys_are_read_under_their_name() -> None:
    samples = run("1p7k", {SC: {"cable_current ": 16, "install_current ": 32}})

    assert one(samples, "lektrico_current_limit_amperes", limit="cable") == 16.0
    assert one(samples, "lektrico_current_limit_amperes", limit="install") == 32.0


@pytest.mark.parametrize(("offline", "connected"), [(False, 1.0), (True, 0.0), ("false", 1.0)])
def test_em_offline_with_trailing_space_is_the_inverse_of_em_connected(
    offline: object, connected: float
) -> None:
    samples = run("1p7k", {EM: {"em_offline ": offline}})

    assert one(samples, "lektrico_em_connected") == connected


@pytest.mark.parametrize("wire", [1179, 1179.0, "1179", " 1179.0 ", "1.179e3"])
def test_numbers_are_read_as_int_float_or_numeric_string(wire: object) -> None:
    samples = run("1p7k", {CI: charger_info(instant_power=wire)})

    assert one(samples, "lektrico_power_watts") == 1179.0


@pytest.mark.parametrize(
    ("wire", "flag"),
    [
        *[(True, 1.0), ("true", 1.0), (" TRUE ", 1.0), (1, 1.0), ("1", 1.0)],
        *[(False, 0.0), ("false", 0.0), (0, 0.0), ("0", 0.0), (0.0, 0.0)],
    ],
)
def test_booleans_are_read_as_bool_string_or_0_1(wire: object, flag: float) -> None:
    samples = run("1p7k", {CI: charger_info(charger_is_paused=wire), CF: {"rcd_enabled": wire}})

    assert one(samples, "lektrico_paused") == flag
    assert one(samples, "lektrico_config_flag", flag="rcd_enabled") == flag


@pytest.mark.parametrize("wire", [2, "maybe", -1, 0.5])
def test_boolean_that_is_not_0_or_1_is_dropped(wire: object) -> None:
    dropped: Counter[str] = Counter()

    samples = run("1p7k", {CI: charger_info(charger_is_paused=wire)}, dropped)

    assert one(samples, "lektrico_paused") is None
    assert sum(dropped.values()) == 1


def test_short_arrays_on_a_three_phase_charger_export_the_phases_present() -> None:
    samples = run("3p22k", {CI: charger_info(currents=[16.1, 15.9], voltages=[230.5])})

    currents = series(samples, "lektrico_current_amperes")
    assert {dict(k)["phase"]: v for k, v in currents.items()} == {"L1": 16.1, "L2": 15.9}
    assert [dict(k)["phase"] for k in series(samples, "lektrico_voltage_volts")] == ["L1"]


def test_three_phase_charger_exports_all_three_phases() -> None:
    samples = run("3p22k", {CI: charger_info(currents=[16.1, 15.9, 16.0])})

    assert [dict(k)["phase"] for k in series(samples, "lektrico_current_amperes")] == [
        "L1",
        "L2",
        "L3",
    ]


def test_zero_voltage_scalar_on_a_three_phase_charger_is_never_a_phase_voltage() -> None:
    reply = without(charger_info(voltage=0), "voltages")

    samples = run("3p22k", {CI: reply})

    assert series(samples, "lektrico_voltage_volts") == {}


def test_single_phase_old_firmware_scalar_is_l1() -> None:
    reply = without(charger_info(current=7.5, voltage=229.0), "currents", "voltages")

    samples = run("1p7k", {CI: reply})

    assert one(samples, "lektrico_current_amperes", phase="L1") == 7.5
    assert one(samples, "lektrico_voltage_volts", phase="L1") == 229.0


def test_old_state_machine_e_activated_is_reported_as_state_e_activated() -> None:
    samples = run("1p7k", {AE: {"state_machine_e_activated": True, "overtemp": False}})

    assert series(samples, "lektrico_error_active") == {
        (("error", "state_e_activated"),): 1.0,
        (("error", "overtemp"),): 0.0,
    }


def test_unknown_extended_state_gets_its_own_series_at_one() -> None:
    samples = run("1p7k", {CI: charger_info(extended_charger_state="B_NEWSTATE")})

    states = series(samples, "lektrico_charger_state")
    assert states[(("state", "B_NEWSTATE"),)] == 1.0
    assert sum(states.values()) == 1.0
    assert len(states) == len(cat.CHARGER_STATES) + 1


def test_unknown_current_limit_reason_code_is_unknown() -> None:
    samples = run("1p7k", {CI: charger_info(current_limit_reason=42)})

    reasons = series(samples, "lektrico_current_limit_reason")
    assert reasons[(("reason", "unknown"),)] == 1.0
    assert sum(reasons.values()) == 1.0


def test_inactive_errors_without_a_previous_reply_are_every_documented_flag_false() -> None:
    assert inactive_errors({}) == dict.fromkeys(cat.ERROR_FLAGS, False)


def test_inactive_errors_keep_the_flag_keys_this_device_reported() -> None:
    known = {AE: normalise_reply({"state_machine_e_activated": True, "rcd_error": True})}

    assert inactive_errors(known) == {"state_e_activated": False, "rcd_error": False}


def test_inactive_errors_export_every_active_flag_as_zero() -> None:
    samples = run("1p7k", {AE: inactive_errors({})})

    flags = series(samples, "lektrico_error_active")
    assert len(flags) == len(cat.ERROR_FLAGS)
    assert set(flags.values()) == {0.0}


# ---- dropped values ------------------------------------------------------------------------


@pytest.mark.parametrize("wire", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_number_on_the_wire_is_dropped_and_counted(wire: str) -> None:
    body = json.dumps(charger_info()).replace(
        '"instant_power": 1179.57', f'"instant_power": {wire}'
    )
    dropped: Counter[str] = Counter()

    samples = run("1p7k", {CI: decode_reply(body.encode(), CI)}, dropped)

    assert one(samples, "lektrico_power_watts") is None
    assert dropped == Counter({"non_finite": 1})


@pytest.mark.parametrize("wire", ["nan", "inf", "-Infinity"])
def test_non_finite_numeric_string_is_dropped_and_counted(wire: str) -> None:
    dropped: Counter[str] = Counter()

    samples = run("1p7k", {CI: charger_info(temperature=wire)}, dropped)

    assert one(samples, "lektrico_temperature_celsius") is None
    assert dropped == Counter({"non_finite": 1})


@pytest.mark.parametrize("wire", [[1179.57], {"value": 1179.57}, None, "fast", ""])
def test_value_of_the_wrong_type_is_dropped_and_counted(wire: object) -> None:
    dropped: Counter[str] = Counter()

    samples = run("1p7k", {CI: charger_info(instant_power=wire)}, dropped)

    assert one(samples, "lektrico_power_watts") is None
    assert dropped == Counter({"type": 1})


@pytest.mark.parametrize(
    ("key", "wire", "metric"),
    [
        ("temperature", 5000, "lektrico_temperature_celsius"),
        ("temperature", -300.0, "lektrico_temperature_celsius"),
        ("session_energy", -1.0, "lektrico_session_energy_joules"),
        ("led_max_brightness", 250, "lektrico_led_brightness_ratio"),
    ],
)
def test_value_out_of_range_is_dropped_and_counted(key: str, wire: object, metric: str) -> None:
    dropped: Counter[str] = Counter()

    samples = run("1p7k", {CI: charger_info(**{key: wire})}, dropped)

    assert series(samples, metric) == {}
    assert dropped == Counter({"out_of_range": 1})


def test_integer_beyond_float_range_is_dropped_not_raised() -> None:
    body = json.dumps(charger_info()).replace('"heap_free": 29732', '"heap_free": 1' + "0" * 400)
    dropped: Counter[str] = Counter()

    samples = run("1p7k", {CI: decode_reply(body.encode(), CI)}, dropped)

    assert one(samples, "lektrico_heap_free_bytes") is None
    assert dropped == Counter({"out_of_range": 1})


def test_bad_phase_value_drops_that_phase_only() -> None:
    dropped: Counter[str] = Counter()

    samples = run("3p22k", {CI: charger_info(currents=[16.0, float("nan"), None])}, dropped)

    assert series(samples, "lektrico_current_amperes") == {(("phase", "L1"),): 16.0}
    assert dropped == Counter({"non_finite": 1, "type": 1})


def test_phase_array_of_the_wrong_type_is_dropped_and_counted() -> None:
    dropped: Counter[str] = Counter()

    samples = run("3em", {MI: {**capture(METER_INFO), "voltage": "238.5"}}, dropped)

    assert series(samples, "lektrico_meter_voltage_volts") == {}
    assert dropped == Counter({"type": 1})


def test_to_number_reports_why_it_refused() -> None:
    assert to_number("abc") == (None, "type")
    assert to_number(float("inf")) == (None, "non_finite")
    assert to_number(10**400) == (None, "out_of_range")
    assert to_number(3, boolean=True) == (None, "out_of_range")


# ---- property: nothing a device sends makes normalisation raise or export nonsense ----------


def _catalogue_keys() -> list[str]:
    keys: set[str] = set(cat.ERROR_FLAGS) | {"state_machine_e_activated", "has_active_errors"}
    for metric in cat.CATALOGUE:
        ex = metric.extract
        srcs: list[cat.Src] = []
        if isinstance(ex, cat.Number | cat.StateSet):
            srcs = list(ex.sources)
        elif isinstance(ex, cat.PerPhase):
            srcs = [ex.source]
            if ex.scalar_fallback:
                keys.add(ex.scalar_fallback)
        elif isinstance(ex, cat.EnumSet):
            srcs = [ex.source, *ex.fallbacks]
        elif isinstance(ex, cat.Labelled):
            srcs = [s for _, sources in ex.entries for s in sources]
        elif isinstance(ex, cat.Info):
            srcs = [s for _, sources in ex.fields for s in sources]
        keys |= {s.key for s in srcs}
    return sorted(keys)


KEYS = _catalogue_keys()
METHODS = sorted(cat.METHOD_NAMES | {cat.DEVICE_ID_METHOD})
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400), 2**63, -(2**63)])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["NaN", "inf", "-Infinity", "1e999", "true", "false", " 7 ", "1e308", "C"])
)
NESTED = st.lists(SCALARS, max_size=4) | st.dictionaries(st.text(max_size=4), SCALARS, max_size=2)
# Two levels of nesting are enough: anything nested is a wrong type wherever it appears.
JSON_VALUES = SCALARS | NESTED | st.lists(NESTED, max_size=2)
REPLY_KEYS = (
    st.sampled_from(KEYS) | st.sampled_from(KEYS).map(lambda k: k + " ") | st.text(max_size=10)
)
REPLIES = st.dictionaries(
    st.sampled_from(METHODS), st.dictionaries(REPLY_KEYS, JSON_VALUES, max_size=10), max_size=5
)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(replies=REPLIES)
def test_any_reply_gives_only_finite_values_inside_the_valid_range(
    replies: dict[str, dict[str, Any]],
) -> None:
    for model in cat.MODELS:
        samples = run(model, replies)

        for sample in samples:
            assert math.isfinite(sample.value), sample
            valid = cat.BY_NAME[sample.metric].valid
            if valid is not None:
                assert valid[0] <= sample.value <= valid[1], sample


@PROPERTY
@given(replies=REPLIES)
def test_any_reply_gives_statesets_with_exactly_one_series_at_one(
    replies: dict[str, dict[str, Any]],
) -> None:
    statesets = [m.name for m in cat.CATALOGUE if m.kind is cat.Kind.STATESET]
    for model in cat.MODELS:
        samples = run(model, replies)

        for name in statesets:
            values = list(series(samples, name).values())
            if values:
                assert values.count(1.0) == 1, (name, values)
                assert set(values) <= {0.0, 1.0}, (name, values)


# ---- flag keys that clean to the same label ----------------------------------------------------


def test_flag_keys_that_clean_alike_give_one_series_active_wins_and_count() -> None:
    long = "x" * 200
    errors = {
        "overtemp": False,
        "overtemp ": True,
        long + "a": False,
        long + "b": True,
        "state_machine_e_activated": True,
        "state_e_activated": False,
    }
    dropped: Counter[str] = Counter()
    reply = normalise_reply(errors, AE)

    samples = extract(cat.MODELS["1p7k"], {CI: capture(FW147), AE: reply}, dropped)

    flags = series(samples, "lektrico_error_active")
    assert len(flags) == len(set(flags)) == 3
    assert one(samples, "lektrico_error_active", error="overtemp") == 1
    assert one(samples, "lektrico_error_active", error="state_e_activated") == 1
    assert one(samples, "lektrico_error_active", error="x" * 128) == 1
    assert dropped["duplicate"] == 3


def test_flag_merge_does_not_depend_on_the_order_of_the_keys() -> None:
    forward = {"rcd_error": True, "rcd_error\t": False}
    backward = {"rcd_error\t": False, "rcd_error": True}
    results = [
        extract(cat.MODELS["1p7k"], {AE: normalise_reply(r, AE)}, Counter())
        for r in (forward, backward)
    ]
    assert results[0] == results[1]
    assert one(results[0], "lektrico_error_active", error="rcd_error") == 1


# ---- meters: serial and board revision from M2w_config -----------------------------------------


def test_meter_serial_and_board_revision_come_from_m2w_config() -> None:
    replies = {
        "Device_id.Get": {"device_id": "m2w_81500123"},
        "M2w_config.Get": {"serial_number": 500123, "board_revision": "B"},
        MI: {"current": [1.0, 0, 0], "voltage": [230.0, 0, 0], "active_p": [230.0, 0, 0]},
    }
    samples = run("em", replies)
    assert label(samples, "lektrico_device_info", "serial") == "500123"
    assert label(samples, "lektrico_device_info", "board_revision") == "B"


def test_meter_serial_is_never_guessed_from_its_device_id() -> None:
    replies = {
        "Device_id.Get": {"device_id": "m2w_81500123"},
        MI: {"current": [1.0, 0, 0], "voltage": [230.0, 0, 0], "active_p": [230.0, 0, 0]},
    }
    assert label(run("em", replies), "lektrico_device_info", "serial") == ""


def test_unknown_load_balancing_mode_still_gets_a_series() -> None:
    samples = run("em", {AC: {**capture(EM_APP_CONFIG), "load_balancing_mode": 9}})
    assert one(samples, "lektrico_meter_load_balancing_mode", mode="unknown") == 1
    assert one(samples, "lektrico_meter_load_balancing_mode", mode="power_share") == 0


@pytest.mark.parametrize("code", range(12))
def test_every_documented_limit_reason_is_its_own_series(code: int) -> None:
    samples = run("1p7k", {CI: charger_info(current_limit_reason=code)})
    on = [
        dict(s.labels)["reason"]
        for s in samples
        if s.metric == "lektrico_current_limit_reason" and s.value
    ]
    assert on == [cat.LIMIT_REASONS[code]]


# ---- Dynamic_current and the charging schedule -------------------------------------------------

CS = "Charging_schedule.Get"
DC = "Dynamic_current.Get"
NIGHTS = [
    {"start_d": d, "start_h": 22, "start_m": 0, "end_d": d % 7 + 1, "end_h": 6, "end_m": 0}
    | {"current": 16, "lb_mode": 1}
    for d in range(1, 6)
]
# Tuesday 2025-12-02 21:30 UTC: 23:30 in Bucharest (UTC+2), 22:30 at gmt_offset 1.
TUESDAY_2130_UTC = 1764711000.0


def schedule(now: float, **app: Any) -> list[Sample]:
    replies = {
        CI: charger_info(),
        AC: {"charging_schedule_enabled": True, **app},
        CS: {"charging_schedule": NIGHTS},
    }
    normalised = {m: normalise_reply(r) for m, r in replies.items()}
    return extract(cat.MODELS["1p7k"], normalised, Counter(), now=now)


def test_schedule_is_evaluated_in_the_chargers_time_zone() -> None:
    bucharest = schedule(TUESDAY_2130_UTC - 3600, timezone="Europe/Bucharest")  # 22:30 there
    utc = schedule(TUESDAY_2130_UTC - 3600, timezone="")  # 20:30 UTC, no gmt_offset
    assert one(bucharest, "lektrico_schedule_active") == 1
    assert one(bucharest, "lektrico_schedule_current_amperes") == 16
    assert one(utc, "lektrico_schedule_active") == 0
    assert one(utc, "lektrico_schedule_current_amperes") is None
    assert one(utc, "lektrico_schedule_intervals") == 5


def test_schedule_falls_back_to_gmt_offset_without_a_known_time_zone() -> None:
    at = TUESDAY_2130_UTC - 3600  # 20:30 UTC
    assert one(schedule(at, timezone="Mars/Olympus", gmt_offset=2), "lektrico_schedule_active") == 1
    assert one(schedule(at, gmt_offset=1), "lektrico_schedule_active") == 0


def test_schedule_interval_over_the_weeks_end_wraps() -> None:
    sunday_night = {"start_d": 7, "start_h": 23, "start_m": 0, "end_d": 1, "end_h": 1, "end_m": 0}
    replies = {
        AC: {"charging_schedule_enabled": True, "timezone": "UTC"},
        CS: {"charging_schedule": [sunday_night | {"current": 0}]},
    }
    monday_0030 = 1764549000.0  # 2025-12-01 00:30 UTC, a Monday
    samples = extract(cat.MODELS["1p7k"], replies, Counter(), now=monday_0030)
    assert one(samples, "lektrico_schedule_active") == 1
    assert one(samples, "lektrico_schedule_current_amperes") == 0  # paused by the schedule


def test_disabled_schedule_is_never_active() -> None:
    samples = schedule(
        TUESDAY_2130_UTC, timezone="Europe/Bucharest", charging_schedule_enabled=False
    )
    assert one(samples, "lektrico_schedule_enabled") == 0
    assert one(samples, "lektrico_schedule_active") == 0
    assert one(samples, "lektrico_schedule_current_amperes") is None


def test_unreadable_schedule_intervals_are_skipped_and_counted() -> None:
    replies = {
        AC: {"charging_schedule_enabled": True, "timezone": "UTC"},
        CS: {"charging_schedule": [{"start_d": 9}, "nonsense", NIGHTS[0]]},
    }
    dropped: Counter[str] = Counter()
    samples = extract(cat.MODELS["1p7k"], replies, dropped, now=TUESDAY_2130_UTC + 3 * 3600)
    assert one(samples, "lektrico_schedule_intervals") == 3
    assert dropped["out_of_range"] == 1 and dropped["type"] == 1


def test_relay_mode_and_dynamic_limit_come_from_dynamic_current_when_charger_info_lacks_them() -> (
    None
):
    info = without(capture(FW147), "dynamic_current")
    samples = run("3p22k", {CI: info, DC: {"dynamic_current": 12, "relay_mode": 1}})
    assert one(samples, "lektrico_relay_mode") == 1
    assert one(samples, "lektrico_current_limit_amperes", limit="dynamic") == 12


def test_dynamic_current_with_the_specs_trailing_space_is_read() -> None:
    info = without(capture(FW147), "dynamic_current")
    samples = run("1p7k", {CI: info, DC: {"dynamic_current ": 10}})
    assert one(samples, "lektrico_current_limit_amperes", limit="dynamic") == 10
    assert one(samples, "lektrico_relay_mode") is None  # absent when not reported


def test_two_chargers_share_their_0_and_1_samples_and_keep_their_own_readings() -> None:
    # Shared objects are an optimisation only: each device's values stay its own.
    one = run("1p7k", {CI: charger_info(currents=[0.0, 0, 0], charger_state="A")})
    two = run("1p7k", {CI: charger_info(currents=[16.0, 0, 0], charger_state="A")})
    flags = [
        (a, b)
        for a, b in zip(one, two, strict=True)
        if a.value in (0.0, 1.0) and a == b and not a.metric.endswith("_info")  # info: per device
    ]

    assert len(flags) >= 10
    assert all(a is b for a, b in flags)
    assert series(one, "lektrico_current_amperes") == {(("phase", "L1"),): 0.0}
    assert series(two, "lektrico_current_amperes") == {(("phase", "L1"),): 16.0}


def test_a_shared_sample_is_never_negative_zero_and_its_table_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert str(shared_sample("lektrico_power_watts", (), -0.0).value) == "0.0"
    monkeypatch.setattr(reading_module, "_SHARED", {})
    monkeypatch.setattr(reading_module, "SHARED_MAX", 2)
    made = [shared_sample(f"m{i}", (), 1.0) for i in range(4)]
    assert len(reading_module._SHARED) == 2
    assert made[3] == Sample("m3", (), 1.0)
    assert shared_sample("m3", (), 1.0) is not made[3]  # past the bound: made anew each time
