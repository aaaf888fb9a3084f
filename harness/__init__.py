"""What the tests and the benchmarks share to run the exporter for real: the test harness.

Not part of the exporter (it is not installed with it); `tests/` and `bench/` import it, from
the repository root, and nothing else does.

- `processes`: children started in their own process groups and killed at the end, free
  loopback ports, waiting for an HTTP endpoint or a line of output;
- `procfs`: what /proc says about a process (CPU seconds, RSS, open fds, threads) and about the
  machine (busy CPU time, load average);
- `servers`: real VictoriaMetrics, InfluxDB 1.x and Prometheus servers, and `unavailable`, which
  skips a test whose server is missing, except under CI, where it fails it;
- `fleet`: the fault-matrix fleet (the simulator CLI with a seeded fault mix, an exporter
  process polling it), its snapshots of /metrics and /proc, and the verdict over a window, run
  for a minute by tests/test_reliability.py and for as long as asked by bench/soak.py.
"""
