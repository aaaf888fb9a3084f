"""The work a poll saves by reusing the last one's: the same result as doing it all again.

Extraction reuses each catalogue row's samples while its inputs are unchanged (normalise.Memo),
replies keep only the keys that are read, the exposition re-renders only the families whose
samples changed and compresses for gzip only the blocks a poll touched. Each is checked here
against the plain way of doing the same work, on the simulator's replies and on any replies.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.catalogue import table as cat
from exporter.device.normalise import Memo, extract, kept_keys, normalise_reply
from exporter.outputs.prometheus import Exposition, crc32_combine, crc32_shift
from exporter.reading import Reading, Sample
from exporter.simulator.device import PROFILES as SIM_PROFILES
from exporter.simulator.device import ManualClock, make_device

from .test_normalise import CS, NIGHTS, REPLIES, TUESDAY_2130_UTC, charger_info

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROFILES = tuple(SIM_PROFILES)


def wire(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply as it comes off the wire: new objects, as json.loads makes them."""
    data: dict[str, Any] = json.loads(json.dumps(reply))
    return data


def simulated_polls(profile: str, polls: int, seed: int) -> Iterator[dict[str, dict[str, Any]]]:
    """Replies of one simulated device poll after poll, 15 s apart, normalised as the poller
    does; the main method is new every poll, the others now and then (same objects between)."""
    clock = ManualClock(1000.0)
    device = make_device("d", profile, seed=seed, clock=clock)
    rng = random.Random(seed)
    replies = {m: normalise_reply(wire(device.read(m)), m) for m in device.methods}
    for _ in range(polls):
        yield replies
        clock.advance(15.0 * rng.randint(1, 40))
        fresh = {
            m: normalise_reply(wire(device.read(m)), m)
            for m in device.methods
            if rng.random() < 0.3
        }
        main = cat.MAIN_METHOD[cat.CHARGER if "Charger_info.Get" in device.methods else cat.METER]
        fresh[main] = normalise_reply(wire(device.read(main)), main)
        replies = {**replies, **fresh}


def model_of(replies: dict[str, dict[str, Any]]) -> cat.Model:
    ids = [r.get("device_id") for r in replies.values() if "device_id" in r]
    return cat.MODELS[cat.model_from_device_id(ids[0] if ids else None)]


@pytest.mark.parametrize("profile", PROFILES)
def test_memo_gives_the_samples_and_drops_of_a_full_extraction(profile: str) -> None:
    memo = Memo()
    reused = 0
    for replies in simulated_polls(profile, 60, seed=len(profile)):
        model = model_of(replies)
        plain_dropped: Counter[str] = Counter()
        memo_dropped: Counter[str] = Counter()

        plain = extract(model, replies, plain_dropped)
        before = memo.samples
        incremental = extract(model, replies, memo_dropped, memo=memo)

        assert incremental == plain
        assert memo_dropped == plain_dropped
        reused += sum(1 for s in incremental if any(s is b for b in before))
    assert reused > 0  # the memo did reuse samples, it is not a full extraction in disguise


@PROPERTY
@given(steps=st.lists(REPLIES, min_size=1, max_size=5), keep=st.lists(st.booleans(), max_size=25))
def test_memo_matches_a_full_extraction_on_any_replies(
    steps: list[dict[str, dict[str, Any]]], keep: list[bool]
) -> None:
    """Any replies, poll after poll, with some methods' replies carried over as they were."""
    for model in (cat.MODELS["1p7k"], cat.MODELS["3p22k"], cat.MODELS["3em"]):
        memo = Memo()
        replies: dict[str, dict[str, Any]] = {}
        flags = iter(keep)
        for step in steps:
            fresh = {m: normalise_reply(r) for m, r in step.items() if next(flags, True)}
            replies = {**replies, **fresh}
            for group in (
                frozenset({cat.Group.HEALTH}),
                frozenset({cat.Group.HEALTH, cat.Group.LIVE}),
            ):
                plain_dropped: Counter[str] = Counter()
                memo_dropped: Counter[str] = Counter()
                plain = extract(model, replies, plain_dropped, group)
                assert extract(model, replies, memo_dropped, group, memo) == plain
                assert memo_dropped == plain_dropped


def test_memo_tells_apart_values_equal_but_of_another_type() -> None:
    model = cat.MODELS["1p7k"]
    memo = Memo()
    base = normalise_reply(json.loads(json.dumps({"charger_state": "C", "instant_power": 1})))
    extract(model, {"Charger_info.Get": base}, Counter(), memo=memo)
    for value in (True, 1.0, "1", [1]):
        replies = {"Charger_info.Get": {**base, "instant_power": value}}
        plain_dropped: Counter[str] = Counter()
        memo_dropped: Counter[str] = Counter()

        plain = extract(model, replies, plain_dropped)

        assert extract(model, replies, memo_dropped, memo=memo) == plain
        assert memo_dropped == plain_dropped


@pytest.mark.parametrize(
    "app",
    [
        {"timezone": "Europe/Bucharest"},
        {"timezone": "", "gmt_offset": 1},
        {"timezone": "", "gmt_offset": 1.0123},  # an offset of whole seconds, not minutes
    ],
)
def test_memo_works_the_schedule_out_again_when_its_minute_changes(app: dict[str, Any]) -> None:
    """The schedule rows depend on the time; the memo reuses them within one minute of the
    device's week only. Polls every 7 s across the hour a schedule interval starts."""
    model = cat.MODELS["1p7k"]
    replies = {
        m: normalise_reply(r)
        for m, r in {
            "Charger_info.Get": charger_info(),
            "App_config.Get": {"charging_schedule_enabled": True, **app},
            CS: {"charging_schedule": [*NIGHTS, {"start_d": 9}]},  # one unreadable interval
        }.items()
    }
    memo = Memo()
    reused = 0
    start = TUESDAY_2130_UTC - 3600 * 4
    for now in range(int(start), int(start + 3600 * 3), 7):
        plain_dropped: Counter[str] = Counter()
        memo_dropped: Counter[str] = Counter()
        plain = extract(model, replies, plain_dropped, now=now)
        before = memo.samples
        incremental = extract(model, replies, memo_dropped, memo=memo, now=now)

        assert incremental == plain
        assert memo_dropped == plain_dropped
        schedule = [s for s in incremental if s.metric.startswith("lektrico_schedule_")]
        reused += all(any(s is b for b in before) for s in schedule)
    assert reused > 1000  # most polls fall in a minute already worked out


@PROPERTY
@given(replies=REPLIES)
def test_trimmed_replies_extract_exactly_as_whole_ones(replies: dict[str, dict[str, Any]]) -> None:
    # Methods read whole (error flags) keep their keys as sent: they are cleaned where they
    # become labels, so that keys which clean alike are merged there, not overwritten.
    whole = {m: normalise_reply(r) if kept_keys(m) is not None else r for m, r in replies.items()}
    trimmed = {m: normalise_reply(r, m) for m, r in replies.items()}
    for model in cat.MODELS.values():
        whole_dropped: Counter[str] = Counter()
        trimmed_dropped: Counter[str] = Counter()

        samples = extract(model, whole, whole_dropped)

        assert extract(model, trimmed, trimmed_dropped) == samples
        assert trimmed_dropped == whole_dropped


def test_trimming_keeps_what_the_poller_reads_and_every_error_flag() -> None:
    for src in cat.POLLER_INPUTS:
        keep = kept_keys(src.method)
        assert keep is None or src.key in keep, src
    assert kept_keys("Active_errors.Get") is None  # read whole: every flag, known or not
    raw = {"charger_state": "C", "fw_extra_debug": "x" * 500, "session_id ": 7}
    assert normalise_reply(raw, "Charger_info.Get") == {"charger_state": "C", "session_id": 7}


# ---- the exposition: families re-rendered and blocks recompressed only where changed ------


def sample_set(device: int, poll: int, rng: random.Random) -> tuple[Sample, ...]:
    """A device's samples at a poll: some families change every poll, some never, and some
    devices lose and regain families (down, or a method that stopped answering)."""
    samples = [
        Sample("lektrico_up", (), 1.0),
        Sample("lektrico_poll_duration_seconds", (), 0.01 * (poll % 7)),
    ]
    if rng.random() < 0.8:
        samples.append(Sample("lektrico_power_watts", (), float(device * 10 + poll)))
        samples += [
            Sample("lektrico_current_amperes", (("phase", p),), float(poll % 3)) for p in cat.PHASES
        ]
    if device % 3:
        samples.append(Sample("lektrico_wifi_signal_dbm", (), -60.0 - device % 5))
    return tuple(samples)


def test_gzip_blocks_follow_publishes_and_removals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Exposition, "BLOCK", 3)  # many blocks from a few devices
    rng = random.Random(5)
    exposition = Exposition()
    names = [f"d{i}" for i in range(11)]
    for poll in range(40):
        for i in rng.sample(range(len(names)), rng.randint(0, len(names))):
            reading = Reading(names[i], (("site", "x"),), 0.0, True, 0.0, "1p7k", ())
            reading = Reading(
                names[i], reading.user_labels, 0.0, True, 0.0, "1p7k", sample_set(i, poll, rng)
            )
            exposition.publish(reading)
        if rng.random() < 0.2:
            exposition.remove(rng.choice(names))
        tail = f"lektrico_devices_up {poll}\n".encode()

        body = exposition.render_gzip(tail)

        decoder = zlib.decompressobj(31)  # one gzip member, CRC and length checked
        assert decoder.decompress(body) == exposition.render() + tail
        assert decoder.eof and decoder.unused_data == b""


def test_gzip_compresses_only_the_blocks_that_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Exposition, "BLOCK", 4)
    exposition = Exposition()
    rng = random.Random(1)
    for i in range(16):
        exposition.publish(Reading(f"d{i}", (), 0.0, True, 0.0, "1p7k", sample_set(i, 0, rng)))
    exposition.render_gzip()
    compressed: list[bytes] = []
    original = Exposition._gzip_plan

    def spy(self: Exposition) -> Any:
        plan = original(self)
        compressed.extend(b"".join(block) for block in plan.stale)
        return plan

    monkeypatch.setattr(Exposition, "_gzip_plan", spy)
    exposition.render_gzip()
    assert compressed == []  # nothing changed: every block is reused

    changed = Reading("d5", (), 0.0, True, 0.0, "1p7k", (Sample("lektrico_up", (), 0.0),))
    exposition.publish(changed)
    body = exposition.render_gzip()

    # d5 is in block 1 of each family it had or has: only those blocks are compressed again.
    assert 0 < len(compressed) <= 5
    assert all(b'device="d5"' in text or b'device="d4"' in text for text in compressed if text)
    assert gzip.decompress(body) == exposition.render()


async def test_async_gzip_is_the_exposition_as_the_scrape_began() -> None:
    exposition = Exposition()
    rng = random.Random(2)
    for i in range(600):  # more than one block
        exposition.publish(Reading(f"d{i}", (), 0.0, True, 0.0, "1p7k", sample_set(i, 0, rng)))
    before = exposition.render()

    body = await exposition.render_gzip_async(b"tail 1\n")

    assert gzip.decompress(body) == before + b"tail 1\n"


def test_crc32_combine_matches_zlib() -> None:
    rng = random.Random(3)
    for _ in range(300):
        a = os.urandom(rng.randint(0, 2000))
        b = os.urandom(rng.choice([0, 1, 2, 7, 255, 256, 4096, rng.randint(0, 200_000)]))
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), crc32_shift(len(b))) == zlib.crc32(a + b)
