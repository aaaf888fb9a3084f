"""Charging sessions, derived counters, tariffs and the state store that keeps them.

What the exporter works out from successive readings rather than reads from a device: each
charger's charging sessions (ledger.py), the counters derived from them and a meter's energy
integrated from its power (ledger.py), the price of each energy delta (tariffs.py), the SQLite
store that keeps all of it across restarts (store.py), the monthly statement (statement.py),
and the stage that runs readings through the ledger before the outputs (stage.py).

This package reads Readings, the catalogue and the config (and the line-protocol escaping of
exporter.outputs.influx.lines); it never imports the poller or anything that talks to
devices. Data still flows one way: poll → Reading → ledger stage → outputs.
"""
