"""What a process has used so far, from /proc: the benchmarks' CPU and memory figures."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command's name: [0] state, [1] parent,
    [11] user and [12] system ticks (proc(5)). Raises OSError when it is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` so far."""
    fields = _stat(pid)
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
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parent = int(_stat(entry.name)[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(entry.name))
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
        return _stat(pid)[0] != "Z"
    except FileNotFoundError:
        return False
