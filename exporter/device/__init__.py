"""Talking to devices: the wire client (`client`: HTTP, JSON-RPC frames, size caps), firmware
quirks to catalogue samples (`normalise`), the fleet poller (`poller`: scheduling, request
economy, backoff), mDNS `discovery` and `sharding` of a fleet over replicas.

A poll goes one way: client replies → normalise → a `exporter.reading.Reading` handed to sinks.
May import: `exporter.catalogue`, `exporter.config`, `exporter.reading`. Never outputs or web.
"""
