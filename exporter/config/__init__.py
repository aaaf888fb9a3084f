"""Configuration: the typed schema (`schema`) on a small section model (`model`), YAML loading
with its one-line errors (`loader`), and the one parser of hosts, ports, URLs and /probe targets
(`addresses`).

May import: `exporter.catalogue` (reserved label names) and `exporter.outputs.influx.lines` (its tag
escaping, to refuse names that would collide in InfluxDB) and `exporter.sessions.tariffs` (the
tariff schema, kept beside the pricing it configures). Never the poller, writers or web.
"""
