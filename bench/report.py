"""Result types, the one console table, and BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import procfs


@dataclass
class Row:
    """One measured case. Ratios are against the section's reference case, measured in the same run."""

    case: str
    n: int | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    rate: float | None = None
    rate_unit: str = ""
    ratio_p50: float | None = None
    cpu_ms: float | None = None
    cpu_unit: str = ""
    rss_mb: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class Target:
    goal: str
    measured: str
    passed: bool | None  # None: not measured in this run
    margin: str
    bound: str = ""

    @property
    def verdict(self) -> str:
        return "n/a" if self.passed is None else ("PASS" if self.passed else "MISS")


@dataclass
class Section:
    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return ""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def margin(measured: float, goal: float, unit: str, *, lower_is_better: bool) -> str:
    """Signed distance to the goal, in the goal's unit and in percent of the goal."""
    diff = measured - goal
    pct = 100 * diff / goal if goal else 0.0
    good = diff <= 0 if lower_is_better else diff >= 0
    word = "under" if diff < 0 else "over"
    return f"{'ok' if good else 'short'}: {abs(diff):,.{2 if abs(diff) < 10 else 0}f} {unit} {word} ({pct:+.0f} %)"


_COLUMNS: list[tuple[str, str]] = [
    ("n", "n"),
    ("p50", "p50 ms"),
    ("p99", "p99 ms"),
    ("rate", "rate"),
    ("r50", "p50 x"),
    ("cpu", "CPU ms"),
    ("rss", "RSS MB"),
]


def _cells(row: Row) -> dict[str, str]:
    rate = f"{fmt(row.rate)} {row.rate_unit}".strip() if row.rate is not None else ""
    cpu = f"{fmt(row.cpu_ms, 3)} {row.cpu_unit}".strip() if row.cpu_ms is not None else ""
    return {
        "n": "" if row.n is None else f"{row.n:,}",
        "p50": fmt(row.p50_ms, 2),
        "p99": fmt(row.p99_ms, 2),
        "rate": rate,
        "r50": ratio(row.ratio_p50),
        "cpu": cpu,
        "rss": fmt(row.rss_mb),
    }


def _section_table(section: Section) -> tuple[list[str], list[list[str]]]:
    cells = [_cells(r) for r in section.rows]
    keys = [k for k, _ in _COLUMNS if any(c[k] for c in cells)]
    extra_keys: list[str] = []
    for row in section.rows:
        extra_keys.extend(k for k in row.extra if k not in extra_keys)
    header = ["case", *(dict(_COLUMNS)[k] for k in keys), *extra_keys]
    body = [
        [row.case, *(c[k] for k in keys), *(row.extra.get(k, "") for k in extra_keys)]
        for row, c in zip(section.rows, cells, strict=True)
    ]
    return header, body


def console_table(sections: Iterable[Section]) -> str:
    """Every section's rows in one fixed-width table (extras folded into a notes column)."""
    header = ["section", "case", *(title for _, title in _COLUMNS), "notes"]
    lines: list[list[str]] = []
    for section in sections:
        for row in section.rows:
            c = _cells(row)
            notes = ", ".join(f"{k} {v}" for k, v in row.extra.items() if v)
            lines.append([section.key, row.case, *(c[k] for k, _ in _COLUMNS), notes])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out.extend("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines)
    return "\n".join(out)


def targets_table(sections: Iterable[Section]) -> str:
    rows = [t for s in sections for t in s.targets]
    out = ["| target | measured | verdict | margin |", "| --- | --- | --- | --- |"]
    out.extend(f"| {t.goal} | {t.measured} | **{t.verdict}** | {t.margin} |" for t in rows)
    return "\n".join(out)


def _md_table(header: list[str], body: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out.extend("| " + " | ".join(line) + " |" for line in body)
    return "\n".join(out)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, check=False).stdout
    except OSError:
        return ""


def _git_commit() -> str:
    """The commit measured, and the source files that differed from it (the numbers measure those too)."""
    commit = f"`{_git('rev-parse', '--short', 'HEAD').strip() or 'unknown'}`"
    changed = [
        line[3:]
        for line in _git("status", "--porcelain").splitlines()
        if line[:2].strip() and line[3:].endswith(".py") and not line[3:].startswith("bench/")
    ]
    return commit + (f" plus uncommitted changes to {', '.join(changed)}" if changed else "")


def markdown(
    sections: list[Section], *, command: str, elapsed_s: float, notes: Iterable[str] = (), load: str = ""
) -> str:
    machine = procfs.machine()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Benchmarks",
        "",
        targets_table(sections),
        "",
        f"Measured {now} at commit {_git_commit()} with `{command}` ({elapsed_s / 60:.1f} min) on "
        f"{machine['cpu']}. Everything ran on that one machine at once: LiteLLM proxies, the fake model "
        "server, the fake Akto, Redis, arq workers and the load generator share its cores.",
        "",
    ]
    if load:
        parts += [f"**{load}**", ""]
    misses = [t for s in sections for t in s.targets if t.passed is False and t.bound]
    if misses:
        parts += ["## What bounds each miss", ""]
        parts += [f"- **{t.goal}**: {t.bound}" for t in misses]
        parts.append("")
    parts += ["## Machine", "", *(f"- {k}: {v}" for k, v in machine.items()), ""]
    parts += [f"Note: {note}\n" for note in notes]
    for section in sections:
        header, body = _section_table(section)
        parts += [f"## {section.title}", ""]
        if section.rows:
            parts += [_md_table(header, body), ""]
        parts += [f"- {note}" for note in section.notes]
        if section.notes:
            parts.append("")
    parts += [
        "## How to reproduce",
        "",
        "```bash",
        "make bench                      # full run (about 10 minutes on 2 cores); writes this file",
        ".venv/bin/python scripts/with_redis.py .venv/bin/python -m bench --quick    # smoke run, small counts",
        ".venv/bin/python scripts/with_redis.py .venv/bin/python -m bench --only e2e   # one section",
        "```",
        "",
        "py-spy (a dev dependency) measures our share of the monitor proxy's CPU; without it that target is "
        "judged on the CPU difference to the no-op control.",
        "",
    ]
    return "\n".join(parts)


def write(path: Path, text: str) -> None:
    path.write_text(text)
