"""Sampling profiles of running processes with py-spy, summarised as text for BENCHMARKS.md.

py-spy attaches from outside (``--nonblocking``: it never pauses the target), so the process under
test runs unmodified. The summary gives where CPU samples land by package (self time) and the
heaviest functions (inclusive), which is what explains a rate or latency bound.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Frames every asyncio stack has; listing them as "heavy" says nothing.
_BOILERPLATE = ("asyncio/runners", "asyncio/base_events", "asyncio/events", "selectors", "<frozen", "threading")


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


def _package(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None or not match["file"]:
        return "(native / unknown)"
    path = match["file"]
    if path.startswith("<frozen"):
        return "importlib"
    top = path.split("/", 1)[0].removesuffix(".py")
    # py-spy sometimes reports a frame it could not resolve as garbage such as "__doc__:-1461".
    return top if re.fullmatch(r"[\w.-]+", top) else "(native / unknown)"


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    return frame if match is None else f"{match['func']} ({match['file']})"


def _samples(path: Path) -> list[tuple[list[str], int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            out.append((stack.split(";"), int(count_text)))
    return out


def package_shares(path: Path) -> dict[str, float]:
    """Fraction of samples whose innermost frame is in each package (self time)."""
    by_package: Counter[str] = Counter()
    for frames, count in _samples(path):
        by_package[_package(frames[-1])] += count
    total = sum(by_package.values())
    return {pkg: c / total for pkg, c in by_package.items()} if total else {}


def top_packages(path: Path, k: int = 4) -> str:
    """'asyncio 57%, akto_hook 22%, ...': the packages whose own code used the most CPU samples."""
    by_package: Counter[str] = Counter()
    for frames, count in _samples(path):
        by_package[_package(frames[-1])] += count
    total = sum(by_package.values())
    if not total:
        return "no profile"
    return ", ".join(f"{pkg} {100 * c / total:.0f}%" for pkg, c in by_package.most_common(k))


def share(path: Path, markers: tuple[str, ...]) -> float | None:
    """Fraction of samples whose stack has a frame containing any of ``markers`` (None: no profile)."""
    samples = _samples(path)
    total = sum(c for _, c in samples)
    if not total:
        return None
    hit = sum(c for frames, c in samples if any(m in f for f in frames for m in markers))
    return hit / total


def top_functions(path: Path, packages: tuple[str, ...], k: int = 5) -> str:
    """The heaviest functions (inclusive %) defined in ``packages``, e.g. the project's own code."""
    samples = _samples(path)
    total = sum(c for _, c in samples)
    inclusive: Counter[str] = Counter()
    for frames, count in samples:
        for name in {_name(f) for f in frames}:
            if any(f"({pkg}/" in name for pkg in packages):
                inclusive[name] += count
    if not total:
        return "no profile"
    return ", ".join(f"{name} {100 * c / total:.0f}%" for name, c in inclusive.most_common(k))


def summarize(path: Path, *, top: int = 14, focus: tuple[str, ...] = ()) -> str:
    """Self time by package and the heaviest functions, as percent of all samples.

    ``focus`` names extra packages whose own functions are listed even when they are not the heaviest.
    """
    samples = _samples(path)
    if not samples:
        return "(no samples: py-spy could not attach)"
    total = 0
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in samples:
        total += count
        by_package[_package(frames[-1])] += count
        for name in {_name(f) for f in frames}:
            inclusive[name] += count
    if total == 0:
        return "(no samples)"

    def pct(count: int) -> str:
        return f"{100 * count / total:5.1f}%"

    lines = [f"{total} samples; self time by package (where the CPU is spent):"]
    lines += [f"  {pct(c)}  {pkg}" for pkg, c in by_package.most_common(12)]
    lines.append("heaviest functions (inclusive: the function and what it calls):")
    shown = 0
    for name, count in inclusive.most_common():
        if any(b in name for b in _BOILERPLATE) or name.startswith(("process ", "Thread ")) or "(" not in name:
            continue
        if count >= 0.9 * total:  # the call chain's roots (main, the event loop, the CLI): no information
            continue
        lines.append(f"  {pct(count)}  {name}")
        shown += 1
        if shown >= top:
            break
    for pkg in focus:
        mine = [(n, c) for n, c in inclusive.items() if f"({pkg}/" in n]
        if mine:
            lines.append(f"{pkg} functions (inclusive):")
            lines += [f"  {pct(c)}  {n}" for n, c in sorted(mine, key=lambda x: -x[1])[:8]]
    return "\n".join(lines)
