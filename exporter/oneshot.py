"""`--once TARGET`: poll one device now and print what the exporter would export for it."""

from __future__ import annotations

import logging
import sys

from exporter.app import settings_of, target_of
from exporter.config.addresses import parse_endpoint
from exporter.config.schema import Config
from exporter.device.poller import Poller
from exporter.outputs.prometheus import render_probe


async def poll_once(config: Config, target: str) -> int:
    # The verdict below says it all; the poller's own state-change line would repeat it.
    quiet = logging.getLogger("lektrico.poller")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    poller = Poller(settings_of(config), [])
    try:
        poller.set_targets(target_of(d) for d in config.devices)
        st = poller.find(target)
        if st is None:
            try:
                endpoint = parse_endpoint(target)
            except ValueError as exc:
                print(f"lektrico-exporter: --once {target[:80]!r}: {exc}", file=sys.stderr)
                return 2
            st = poller.adhoc(target, endpoint.base_url)
        reading = await poller.poll(st)
    finally:
        await poller.close()
        quiet.setLevel(level)
    sys.stdout.write(render_probe(reading).decode())
    if not reading.up:
        print(
            f"lektrico-exporter: {target} is down: {reading.reason}: {reading.error}",
            file=sys.stderr,
        )
        return 1
    return 0
