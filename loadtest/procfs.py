"""What a process has used so far, from /proc: the benchmarks' CPU and memory figures."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of process `pid` (this one by default), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def family(pid: int) -> list[int]:
    """`pid` and every live process descended from it: a Triton's model stubs, a gateway
    supervisor's workers."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def family_cpu_seconds(pid: int) -> float:
    """cpu_seconds summed over `family(pid)` (a member gone meanwhile counts nothing)."""
    total = 0.0
    for member in family(pid):
        try:
            total += cpu_seconds(member)
        except OSError:
            continue
    return total


def largest_rss_mib(pid: int) -> float:
    """rss_mib of the largest process of `family(pid)`: per worker, as its goal is set (a
    member gone meanwhile counts nothing)."""
    sizes = [0.0]
    for member in family(pid):
        with contextlib.suppress(OSError):
            sizes.append(rss_mib(member))
    return max(sizes)


def alive(pid: int) -> bool:
    """Whether `pid` runs (not a zombie: reaped children of init may linger as those)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
