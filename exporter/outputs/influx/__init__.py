"""InfluxDB output: line protocol from readings (`lines`), the buffered, retrying writer
(`writer`) and its on-disk spool (`spool`).

May import: `exporter.catalogue`, `exporter.config`, `exporter.reading`.
"""
