"""Configuration: the typed schema (`schema`), YAML loading with its one-line errors
(`loader`), and the one parser of hosts, ports, URLs and /probe targets (`addresses`).

May import: `exporter.catalogue` (for reserved label names). Never the poller, outputs or web.
"""
