"""`lektrico-exporter sessions`: the monthly statement from the state store, exporter not needed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from exporter.config.schema import ConfigError, load_config

from .stage import store_path
from .statement import RENDERERS, current_month, month_bounds, statement
from .store import Store, StoreError


def main(argv: Sequence[str], prog: str) -> int:
    p = argparse.ArgumentParser(
        prog=f"{prog} sessions",
        description="Print a month's charging statement from the exporter's state store.",
    )
    p.add_argument("--config", "-c", metavar="FILE", required=True, help="YAML configuration")
    p.add_argument("--month", metavar="YYYY-MM", help="the month (default: this month, UTC)")
    p.add_argument("--group-by", metavar="LABEL", default="device", help="device or a label")
    p.add_argument("--format", choices=sorted(RENDERERS), default="table")
    args = p.parse_args(list(argv))
    month = args.month or current_month()
    try:
        since, until = month_bounds(month)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=sys.stderr)
        return 2
    store = Store(store_path(config))
    try:
        store.open_readonly()
        found = store.sessions(since=since, until=until)
    except StoreError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    sys.stdout.write(RENDERERS[args.format](statement(found, month, args.group_by)))
    return 0
