"""Sampling profiles of running processes with py-spy: which share of a proxy's CPU is our code.

py-spy attaches from outside (``--nonblocking``: it never pauses the target), so the process under
test runs unmodified.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def executable() -> str | None:
    """py-spy from this interpreter's environment (the venv may not be on PATH), else from PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path, *, rate: int = 250) -> subprocess.Popen[bytes] | None:
    """Begin sampling ``pid`` (and its children) for ``seconds``; None when py-spy is missing."""
    exe = executable()
    if exe is None:
        return None
    args = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate)]
    args += ["--format", "raw", "--function", "--nonblocking", "--subprocesses", "--output", str(out)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish(proc: subprocess.Popen[bytes] | None, timeout: float = 60) -> None:
    if proc is None:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(10)


def _samples(path: Path) -> list[tuple[list[str], int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            out.append((stack.split(";"), int(count_text)))
    return out


def share(path: Path, markers: tuple[str, ...], *, within: tuple[str, ...] = ()) -> float | None:
    """Fraction of samples whose stack has a frame containing any of ``markers``, among the samples
    whose stack has one of ``within`` (all samples when empty); None without samples."""

    def has(frames: list[str], wanted: tuple[str, ...]) -> bool:
        return any(m in f for f in frames for m in wanted)

    samples = [(frames, c) for frames, c in _samples(path) if not within or has(frames, within)]
    total = sum(c for _, c in samples)
    if not total:
        return None
    return sum(c for frames, c in samples if has(frames, markers)) / total
