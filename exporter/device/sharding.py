"""Splitting one fleet list over n exporter replicas by rendezvous (highest random weight) hashing.

Every replica computes the same owner for a device from its name alone, so n replicas given the
same list poll every device exactly once, and changing n moves only about 1/n of the devices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def owner(name: str, count: int) -> int:
    """The shard (0..count-1) that polls the device called `name`."""
    return max(
        range(count),
        key=lambda i: hashlib.blake2b(f"{i}\0{name}".encode(), digest_size=8).digest(),
    )


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' → (i, n), with 0 <= i < n; ValueError with a one-line reason otherwise."""
    index_text, sep, count_text = text.partition("/")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"--shard {text!r} must look like i/n, e.g. 0/3") from None
    if not sep or count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def select(names: Iterable[str], index: int, count: int) -> set[str]:
    """The names this shard owns."""
    return {name for name in names if owner(name, count) == index}
