"""The figure: poll CPU and /metrics render time against N (docs/performance.png)."""

from __future__ import annotations

from pathlib import Path

from bench.results import SizeResult


def plot(results: list[SizeResult], path: Path) -> None:
    """Poll CPU and /metrics render time against N; hollow markers: window not steady."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    ns = [r.n for r in results]

    def series(ax: Axes, values: list[float], style: str, label: str, mark: bool = True) -> None:
        (line,) = ax.plot(ns, values, style, label=label)
        hollow = [i for i, r in enumerate(results) if mark and not r.settled]
        if hollow:
            ax.plot(
                [ns[i] for i in hollow],
                [values[i] for i in hollow],
                marker=style[0],
                color=line.get_color(),
                markerfacecolor="white",
                markersize=9,
                linestyle="none",
            )

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    series(left, [r.cpu_per_1000_polls for r in results], "o-", "exporter, steady (N / 15 s)")
    series(
        left,
        [r.capacity.get("cpu_per_1000", 0.0) for r in results],
        "D-",
        "exporter, flat out",
        mark=False,  # its own run, with its own settling
    )
    series(
        left,
        [r.floor_paced.get("cpu_per_1000", 0.0) for r in results],
        "v--",
        "bare aiohttp client, paced at N / 15 s",
        mark=False,  # the floor does not depend on the exporter
    )
    series(
        left,
        [r.floor.get("cpu_per_1000", 0.0) for r in results],
        "s--",
        "bare aiohttp client, flat out",
        mark=False,
    )
    left.set(
        xlabel="devices (N)",
        ylabel="CPU seconds",
        title="CPU per 1,000 polls (requests for the clients)",
        ylim=(0, None),
    )
    series(
        right,
        [1000 * r.metrics_plain_seconds for r in results],
        "o-",
        "exporter /metrics, plain (client-side)",
    )
    series(
        right,
        [1000 * r.metrics_gzip_seconds for r in results],
        "o-",
        "exporter /metrics, gzip (client-side)",
    )
    series(
        right,
        [1000 * r.own_render_seconds for r in results],
        "^:",
        "exporter render alone, plain (in-process)",
    )
    series(
        right,
        [1000 * r.reference_seconds for r in results],
        "s--",
        "prometheus_client generate_latest (in-process)",
    )
    right.set(
        xlabel="devices (N)",
        ylabel="milliseconds (log)",
        title="/metrics render time",
        yscale="log",
    )
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if not all(r.settled for r in results):
        fig.text(
            0.5,
            0.01,
            "hollow markers: the exporter never reached a steady state at that N",
            ha="center",
            fontsize=8,
        )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
