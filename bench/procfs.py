"""What the benchmark reads from /proc: CPU time and memory of process trees, the machine.

CPU time is ``utime + stime`` from ``/proc/PID/stat`` (it covers every thread
of the process), summed over the process and all its live descendants: chrony's
NTS-KE helpers, gnomon's workers. A descendant that exits inside a
measurement window takes its ticks with it; the servers measured here keep
their process trees fixed while they serve.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after ``comm`` (state is [0], ppid [1], utime [11])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def parent_map() -> dict[int, int]:
    """pid -> ppid for every live process."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and len(fields) > 1 and fields[0] not in ("Z", "X"):
            parents[int(entry.name)] = int(fields[1])
    return parents


def tree(root: int, parents: dict[int, int] | None = None) -> list[int]:
    """``root`` and all its live descendants (``root`` first), or [] if it is gone."""
    parents = parent_map() if parents is None else parents
    if root not in parents:
        return []
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, ()))
    return found


def children_of(pid: int) -> list[int]:
    return [p for p, pp in parent_map().items() if pp == pid]


def cpu_user_sys(pids: Iterable[int]) -> tuple[float, float]:
    """(utime, stime) of ``pids`` (each a whole thread group), in seconds."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None and len(fields) > 12:
            user += int(fields[11])
            system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def cpu_by_pid(pids: Iterable[int]) -> dict[int, tuple[float, float]]:
    """pid -> (utime, stime) in seconds, for the ``pids`` still alive."""
    found = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None and len(fields) > 12:
            found[pid] = (int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of ``pids``, in seconds."""
    return sum(cpu_user_sys(pids))


def tree_cpu_seconds(root: int) -> tuple[float, list[int]]:
    pids = tree(root)
    return cpu_seconds(pids), pids


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of one process, KiB."""
    values: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return values
    for line in lines:
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def pss_kib(pid: int) -> int:
    """Proportional set size (shared pages split among their users), KiB; 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_memory(root: int) -> dict[str, object]:
    """Per-process and total resident memory of the tree rooted at ``root``."""
    processes: list[dict[str, object]] = []
    rss = hwm = pss = 0
    for pid in tree(root):
        mem = memory_kib(pid)
        own_pss = pss_kib(pid)
        rss += mem.get("VmRSS", 0)
        hwm += mem.get("VmHWM", 0)
        pss += own_pss
        processes.append(
            {
                "pid": pid,
                "comm": comm(pid),
                "rss_kib": mem.get("VmRSS", 0),
                "hwm_kib": mem.get("VmHWM", 0),
                "pss_kib": own_pss,
            }
        )
    return {
        "processes": processes,
        "rss_kib_total": rss,
        "hwm_kib_total": hwm,
        "pss_kib_total": pss,
    }


_STAT_NAMES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_cpu_ticks() -> dict[str, dict[str, int]]:
    """The ``cpu`` lines of /proc/stat (``cpu`` for all, ``cpu0``... each), by name, in ticks."""
    lines: dict[str, dict[str, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *values = line.split()
            lines[name] = dict(zip(_STAT_NAMES, (int(v) for v in values), strict=False))
    return lines


def machine_usage(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, Any]:
    """How all CPUs spent the time between two readings, and each CPU's softirq time.

    With tick-based accounting (CONFIG_TICK_CPU_ACCOUNTING, no IRQ_TIME_ACCOUNTING) a
    tick that lands in softirq is counted as softirq time, not as the interrupted
    process's: the loopback delivery a server's ``sendto`` runs is partly there.
    """
    delta = {k: after["cpu"].get(k, 0) - before["cpu"].get(k, 0) for k in before["cpu"]}
    total = sum(delta.values()) or 1
    idle = delta.get("idle", 0) + delta.get("iowait", 0)
    steal = delta.get("steal", 0)
    cpus = len([k for k in before if k != "cpu"]) or 1
    per_cpu_softirq = {}
    for name in before:
        if name == "cpu" or name not in after:
            continue
        ticks = after[name].get("softirq", 0) - before[name].get("softirq", 0)
        ticks += after[name].get("irq", 0) - before[name].get("irq", 0)
        per_cpu_softirq[int(name[3:])] = ticks / CLK_TCK
    return {
        "busy_cores": round((total - idle - steal) / total * cpus, 3),
        "busy": round((total - idle - steal) / total, 4),
        "idle": round(idle / total, 4),
        "steal": round(steal / total, 4),
        "irq_softirq_cores": round(
            (delta.get("softirq", 0) + delta.get("irq", 0)) / total * cpus, 3
        ),
        "irq_softirq_s_by_cpu": per_cpu_softirq,
    }


def machine_info() -> dict[str, object]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_total = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    except (OSError, IndexError):
        mem_total = "?"
    return {
        "cpu_model": model,
        "cpus_online": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mem_total_kib": int(mem_total) if mem_total.isdigit() else None,
        "loadavg_at_start": os.getloadavg()[0],
    }
