"""The status board's running counts equal a count from scratch, whatever the readings."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.device.poller import Target
from exporter.reading import Reading, Sample
from exporter.web.status import Query, StatusBoard, select


class Dev:
    def __init__(self, name: str, site: str) -> None:
        self.name = name
        self.target = Target(name=name, base_url=f"http://{name}.lan:80", labels=(("site", site),))


NAMES = [f"d{i}" for i in range(8)]
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["publish", "remove", "sync"]),
        st.sampled_from(NAMES),
        st.booleans(),  # up
        st.sampled_from(["A", "B", "C"]),
        st.floats(0, 22000),
        st.sampled_from(["home", "office"]),
        st.sampled_from(["1p7k", "3em"]),
    ),
    max_size=60,
)


def reading(name: str, up: bool, state: str, power: float, site: str, model: str) -> Reading:
    samples: tuple[Sample, ...] = ()
    if up:
        samples = (
            Sample("lektrico_charger_state", (("state", state),), 1.0),
            Sample("lektrico_power_watts", (), power),
        )
    return Reading(name, (("site", site),), 1.0, up, 0.1, model, samples, None if up else "timeout")


def recount(board: StatusBoard) -> dict[str, Any]:
    rows = board.rows()
    total: Counter[str] = Counter(r["status"] for r in rows)
    power = sum(r["power_w"] or 0.0 for r in rows if not r["meter"])
    return {
        "configured": len(rows),
        "up": total["up"],
        "down": total["down"],
        "pending": total["pending"],
        "charging": sum(1 for r in rows if r["charging"]),
        "power_w": round(power, 1),
    }


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_running_counts_equal_a_recount(events: list[tuple[Any, ...]]) -> None:
    board = StatusBoard()
    configured: dict[str, Dev] = {}
    for kind, name, up, state, power, site, model in events:
        if kind == "publish":
            configured.setdefault(name, Dev(name, site))
            board.publish(
                reading(name, up, state, power, configured[name].target.labels[0][1], model)
            )
        elif kind == "remove":
            configured.pop(name, None)
            board.remove(name)
        else:
            configured.setdefault(name, Dev(name, site))
            board.sync(configured)
    board.sync(configured)
    summary = board.summary()
    expected = recount(board)
    assert {k: summary[k] for k in expected} == expected
    for site, counts in summary["by_label"].items():
        assert site == "site"
        for value, bucket in counts.items():
            rows = [r for r in board.rows() if r["labels"]["site"] == value]
            assert bucket["configured"] == len(rows)
            assert bucket["up"] == sum(r["status"] == "up" for r in rows)
    default = board.page(Query())
    assert default == select(board.rows(), Query(sort="name"))
    assert all(r["host"] for r in board.rows())


def test_a_device_has_a_failure_list_only_once_it_failed() -> None:
    board = StatusBoard()
    board.publish(reading("a", True, "A", 0.0, "home", "1p7k"))
    assert board.devices["a"].failures is None  # an empty deque would be 0.6 KB a device
    board.publish(reading("a", False, "A", 0.0, "home", "1p7k"))
    failures = board.devices["a"].failures
    assert failures is not None and [f.reason for f in failures] == ["timeout"]
