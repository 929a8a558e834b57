"""CPU time and memory of processes, read from /proc (Linux only; no psutil dependency)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids.extend(int(p) for p in task.read_text().split())
        except OSError:
            continue
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants: the litellm CLI may hand the server to a child process."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(_children(current))
    return found


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid``'s threads and its live descendants', in nanoseconds'
    precision (schedstat: /proc/<pid>/stat counts in 10 ms ticks, too coarse for a few requests)."""
    total = 0
    for member in tree(pid):
        for task in Path(f"/proc/{member}/task").glob("*/schedstat"):
            try:
                total += int(task.read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def own_cpu_seconds(pid: int) -> float:
    """CPU of ``pid`` including children it has already waited for (cutime, cstime) and live descendants:
    everything a process tree has spent, even helpers that exited meanwhile."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    waited = (int(fields[13]) + int(fields[14])) / _CLK_TCK
    return waited + cpu_seconds(pid)


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq) / _CLK_TCK, steal / _CLK_TCK


def rss_mb(pid: int) -> float:
    """Resident set size in MiB of ``pid`` and its descendants (VmRSS)."""
    total_kb = 0
    for member in tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
                    break
        except OSError:
            continue
    return total_kb / 1024


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _lscpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "lscpu unavailable"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    wanted = ("Model name", "Socket(s)", "Core(s) per socket", "Thread(s) per core", "Hypervisor vendor", "L3 cache")
    return "; ".join(f"{k.strip()} {fields[k].strip()}" for k in wanted if k in fields)


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    try:
        redis_version = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.split()[2]
    except (OSError, IndexError, subprocess.SubprocessError):
        redis_version = "unknown"
    return {
        "cpu": f"{os.cpu_count()} x {model} (`nproc` = {len(os.sched_getaffinity(0))})",
        "lscpu": _lscpu(),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "litellm": _version("litellm"),
        "aiohttp": _version("aiohttp"),
        "redis-py": _version("redis"),
        "arq": _version("arq"),
        "redis-server": redis_version,
    }
