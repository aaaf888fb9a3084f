"""Optional profiling of the exporter process with py-spy (`bench.run --profile`)."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def py_spy_path() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def profile_exporter(pid: int, seconds: float, out: Path, n: int) -> dict[str, Any]:
    """py-spy samples of the exporter; shares of busy samples by innermost exporter/*.py
    function (library time is charged to the exporter function that called it)."""
    py_spy = py_spy_path()
    if py_spy is None:
        return {"error": "py-spy not installed"}
    raw = out / f"profile-{n}.txt"
    proc = await asyncio.create_subprocess_exec(
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "200",
        "--format",
        "raw",
        "--output",
        str(raw),
        "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(proc.wait(), seconds + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if not raw.exists():
        return {"error": "py-spy produced no output"}
    return summarise_profile(raw.read_text())


FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")


OWN_FILE = re.compile(r"(?:^|/)exporter/")  # py-spy names files relative to the working dir


LOOP_FRAME = "BaseEventLoop._run_once "


def summarise_profile(text: str, top: int = 12) -> dict[str, Any]:
    """Shares of busy samples: by innermost exporter/*.py function under the event loop (time
    in aiohttp or the stdlib is charged to the exporter function that called it), inclusive
    per exporter function, and by leaf function."""
    inner: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        loop = max((i for i, f in enumerate(frames) if f.startswith(LOOP_FRAME)), default=-1)
        own: list[str] = []
        for frame in frames[loop + 1 :]:
            match = FRAME.match(frame)
            if match and OWN_FILE.search(match["file"]):
                own.append(f"exporter/{OWN_FILE.split(match['file'])[-1]}:{match['func']}")
        inner[own[-1] if own else "(event loop, aiohttp callbacks, sockets)"] += count
        for name in set(own):
            inclusive[name] += count
        match = FRAME.match(frames[-1])
        leaf[f"{Path(match['file']).name}:{match['func']}" if match else frames[-1]] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(v / total, 4)) for k, v in counter.most_common(top)] if total else []

    return {
        "samples": total,
        "innermost_exporter_function": shares(inner),
        "inclusive": shares(inclusive),
        "leaf": shares(leaf),
    }
