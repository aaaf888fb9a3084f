"""Errors that stop the exporter at start with one line and exit status 1 (see cli.py)."""

from __future__ import annotations


class StartupError(RuntimeError):
    """Something the exporter needs cannot be used: the message names what and where."""
