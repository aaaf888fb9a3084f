"""What one fleet size measured (`SizeResult`), and the settings every part of the bench shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROBE_CONCURRENCY = 16


MIX = "1p7k,3p22k,em,3em"


TARGET_N = 10_000


MAIN_METHOD_OF = {
    "1p7k": "Charger_info.Get",
    "3p22k": "Charger_info.Get",
    "em": "Meter_info.Get",
    "3em": "Meter_info.Get",
}


@dataclass
class SizeResult:
    n: int
    concurrency: int
    sim_processes: int
    window_seconds: float = 0.0
    polls: float = 0.0
    polls_late: float = 0.0
    polls_per_second: float = 0.0
    expected_polls_per_second: float = 0.0
    on_time_share: float = 0.0
    exporter_cpu_seconds: float = 0.0
    cpu_per_1000_polls: float = 0.0
    exporter_cores: float = 0.0
    simulator_cores: float = 0.0
    machine_busy_cores: float = 0.0
    other_busy_cores: float = 0.0
    load_average: list[float] = field(default_factory=list)
    requests_per_poll: float = 0.0
    requests_per_poll_simulator: float = 0.0
    calls_by_method_window: dict[str, int] = field(default_factory=dict)
    rss_bytes: int = 0
    rss_per_device_bytes: float = 0.0
    exporter_threads: int = 0
    metrics_plain_seconds: float = 0.0
    metrics_gzip_seconds: float = 0.0
    metrics_plain_bytes: int = 0
    metrics_gzip_bytes: int = 0
    scrapes: int = 0
    probe: dict[str, float] = field(default_factory=dict)
    floor: dict[str, float] = field(default_factory=dict)
    floor_ratio: float = 0.0  # steady polls per CPU s / saturated floor requests per CPU s
    floor_paced: dict[str, float] = field(default_factory=dict)
    floor_paced_ratio: float = 0.0  # the same, to the floor paced at N / interval
    capacity: dict[str, float] = field(default_factory=dict)
    capacity_ratio: float = 0.0  # saturated exporter to saturated floor: throughput to throughput
    reference_samples: int = 0
    reference_seconds: float = 0.0
    reference_bytes: int = 0
    reference_ratio: float = 0.0
    own_render_seconds: float = 0.0
    own_render_gzip_seconds: float = 0.0
    reference_ratio_in_process: float = 0.0
    settled: bool = False
    devices_up_at_window: int = 0
    influx_points_per_second: float | None = None
    influx_note: str = ""
    profile: dict[str, Any] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    # p50/p99/max seconds a poll started after its schedule, from the simulator's call log
    lateness: dict[str, float] = field(default_factory=dict)
    # The same window with the state store off (no session ledger, no derived counters)
    state_off: dict[str, Any] = field(default_factory=dict)
