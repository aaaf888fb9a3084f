"""The small end and the status page's data, beside the big end in one `bench.run`.

Each runs as its own process (`python -m bench.small`, `python -m bench.status_api`), after the
fleets are stopped, so that neither shares the machine with a fleet nor the benchmark's own
process; bench.run prints what each printed and keeps it in results.json.
"""

from __future__ import annotations

import asyncio
import sys

from harness.processes import ROOT

SCRIPTS = (
    ("small end: one device on a small board", "bench.small", 300.0),
    ("status page data: /api/devices at 10,000 devices", "bench.status_api", 300.0),
)


async def run_script(module: str, timeout: float) -> str:
    """What `python -m module` printed; a line saying why when it failed or took too long."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"{module}: no result within {timeout:.0f} s\n"
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        text += f"{module}: exit status {proc.returncode}\n"
    return text


async def ends_phase() -> dict[str, str]:
    """Each script's printed figures, by heading, printed as they come."""
    printed: dict[str, str] = {}
    for heading, module, timeout in SCRIPTS:
        print(f"\n== {heading} (python -m {module}) ==", flush=True)
        text = await run_script(module, timeout)
        print(text, end="", flush=True)
        printed[heading] = text
    return printed
