"""The benchmarks, run as modules from the repository root (`python -m bench.run`).

- `run`: the full benchmark, every performance figure for fleets of N devices beside the
  references (`make bench`); `measure`, `fleet`, `floor`, `references`, `pyspy`, `results`,
  `report` and `plot` are its parts;
- `pollcost`: what one poll costs, in-process, to compare one change with the next;
- `influx_bench`: the InfluxDB output's throughput;
- `soak`: the fault-matrix fleet for as long as asked.

They start processes and servers through `harness`, as the tests do.
"""
