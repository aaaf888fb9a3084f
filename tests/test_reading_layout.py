"""A reading's layout: where each metric's samples are, as the outputs read them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from exporter.reading import Sample, layout_of, samples_of

METRICS = ["lektrico_up", "lektrico_power_watts", "lektrico_current_amperes", "lektrico_error"]


@given(st.lists(st.tuples(st.sampled_from(METRICS), st.floats(allow_nan=False)), max_size=30))
def test_samples_of_a_metric_are_those_a_filter_gives_in_order(
    picks: list[tuple[str, float]],
) -> None:
    samples = tuple(Sample(metric, (), value) for metric, value in picks)
    layout = layout_of(samples)

    for metric in METRICS:
        assert list(samples_of(samples, layout, metric)) == [
            s for s in samples if s.metric == metric
        ]
    assert [samples[i].metric for i in range(len(samples))] == [
        layout.names[f] for f in layout.family_of
    ]
    assert layout.split == (len(set(layout.names)) < len(layout.names))


def test_a_metric_in_two_places_is_split_and_keeps_both_runs() -> None:
    samples = (
        Sample("lektrico_up", (), 1.0),
        Sample("lektrico_power_watts", (), 2.0),
        Sample("lektrico_up", (), 3.0),
    )
    layout = layout_of(samples)

    assert layout.split
    assert layout.names == ("lektrico_up", "lektrico_power_watts", "lektrico_up")
    assert [s.value for s in samples_of(samples, layout, "lektrico_up")] == [1.0, 3.0]


def test_readings_with_the_same_metric_names_share_one_layout() -> None:
    a = (Sample("lektrico_up", (), 1.0), Sample("lektrico_power_watts", (), 2.0))
    b = (Sample("lektrico_up", (), 0.0), Sample("lektrico_power_watts", (), 7.0))

    assert layout_of(a) is layout_of(b)
