"""Process and CPU accounting from /proc (Linux only); nothing here starts or stops processes.

* CPU time of a process tree: ``utime + stime`` (fields 14 and 15 of ``/proc/PID/stat``, in clock
  ticks, all threads included) summed over a root process and all its descendants, so an nginx
  master and its worker, or a wsrelay master and its workers, count as one proxy.
* Resident memory of a process tree: ``VmRSS`` from ``/proc/PID/status``, summed the same way;
  open descriptors: the entries of ``/proc/PID/fd``, summed the same way.
* Busy time of each core from ``/proc/stat`` (everything but idle and iowait), to show how busy
  the proxy's core and the load generator's core were, including load from other processes.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after ``comm`` (so index 0 is field 3, ``state``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()


def children_map() -> dict[int, list[int]]:
    """ppid -> [pid, ...] for every process on the machine."""
    kids: dict[int, list[int]] = defaultdict(list)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            kids[int(fields[1])].append(int(name))
    return kids


def tree(roots: list[int]) -> list[int]:
    """The given processes and all their descendants that are alive now."""
    kids = children_map()
    seen: list[int] = []
    todo = [r for r in roots if r]
    while todo:
        pid = todo.pop()
        if pid in seen or _stat_fields(pid) is None:
            continue
        seen.append(pid)
        todo.extend(kids.get(pid, []))
    return seen


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    """Sum of VmRSS of these processes, in bytes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def fd_count(pids: list[int]) -> int:
    """Open file descriptors of these processes (entries of /proc/PID/fd), summed."""
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


def core_times() -> dict[str, tuple[int, int]]:
    """cpuN -> (busy ticks, total ticks) from /proc/stat."""
    out: dict[str, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                vals = [int(v) for v in parts[1:9]]  # user nice system idle iowait irq softirq steal
                idle = vals[3] + vals[4]
                out[parts[0]] = (sum(vals) - idle, sum(vals))
    return out


@dataclass
class Snapshot:
    """CPU seconds of each named group of process trees, and core busy ticks, at one instant."""

    t: float
    cpu: dict[str, float] = field(default_factory=dict)
    cores: dict[str, tuple[int, int]] = field(default_factory=dict)


class Probe:
    """Takes snapshots of named groups: {"proxy": [root pids], "loadgen": [...], ...}."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def snap(self) -> Snapshot:
        s = Snapshot(t=time.monotonic())
        for name, roots in self.groups.items():
            s.cpu[name] = cpu_seconds(tree(roots))
        s.cores = core_times()
        return s

    @staticmethod
    def delta(a: Snapshot, b: Snapshot) -> dict[str, float]:
        """CPU seconds and CPU % of each group between two snapshots, and each core's busy %."""
        wall = max(b.t - a.t, 1e-9)
        out: dict[str, float] = {"wall_s": wall}
        for name in a.cpu:
            used = b.cpu.get(name, 0.0) - a.cpu[name]
            out[f"{name}_cpu_s"] = used
            out[f"{name}_cpu_pct"] = 100.0 * used / wall
        for core, (busy0, total0) in a.cores.items():
            busy1, total1 = b.cores.get(core, (busy0, total0))
            out[f"{core}_busy_pct"] = 100.0 * (busy1 - busy0) / max(total1 - total0, 1)
        return out
