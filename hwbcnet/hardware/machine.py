"""What the machine is doing besides us, recorded with every end-to-end measurement (LUT calibration, the latency
loop of `search --verify`) and compared by `hwbcnet verify`. Standard library only: verify runs on targets without
torch."""

from __future__ import annotations

import os
import time
from pathlib import Path


def machine_load() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none), as LUTs record them."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _cpu_times() -> tuple[int, int] | None:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


BUSY_SAMPLE_SECONDS = 0.5


def busy_cores(seconds: float | None = None) -> float | None:
    """Cores kept busy by other processes right now: the machine's busy CPU time over `seconds` while this process
    sleeps (Linux /proc/stat; None elsewhere). Unlike the load average it does not count this process's own past
    work, so a long search or training run in the same process does not look like a busy machine."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(BUSY_SAMPLE_SECONDS if seconds is None else seconds)
    second = _cpu_times()
    total = second[1] - first[1]
    return round((os.cpu_count() or 1) * (second[0] - first[0]) / total, 2) if total > 0 else None


def machine_conditions() -> dict:
    """What the machine is doing besides us, recorded before a measurement: load averages and busy cores."""
    return {"load_average": machine_load(), "busy_cores": busy_cores()}
