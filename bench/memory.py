"""Section 4, memory: the proxy's RSS growth over thousands of requests, ours against no guardrail.

The hook's growth is judged against a no-guardrail proxy driven the same way in the same run: LiteLLM
itself grows while it warms its caches, and only what our hook adds on top of that can be a leak of
ours. Akto answers at once here; latency does not matter to memory and this keeps the run short. The
worker's memory is measured in section 3, while it drains a backlog.
"""

from __future__ import annotations

import asyncio
import itertools

from . import procfs
from .context import NONE, OURS_BLOCK, Bench, median
from .load import drive
from .report import Row, Section, Target

# "Bounded": the hook may add at most this much steady growth to what LiteLLM grows by itself, i.e.
# half a record (about 1 KB) per request.
HOOK_GROWTH_GOAL_KB_PER_REQ = 0.5
CLIENTS = 4


def _steady_growth(samples: list[float]) -> float:
    """Median RSS increment per slice (MB): a leak grows in every slice, the allocator's steps do not."""
    return median(b - a for a, b in itertools.pairwise(samples))


def _proxy_growth(bench: Bench, kind: str, n: int, warmup: int, steps: int) -> list[float]:
    """RSS after warm-up and after each of ``steps`` equal slices of ``n`` requests."""
    proxy = bench.proxies[kind]
    pid = proxy.proc.popen.pid
    asyncio.run(drive(proxy.url, warmup, concurrency=CLIENTS, max_seconds=300, first_id=5_000_000))
    samples = [procfs.rss_mb(pid)]
    for step in range(steps):
        first = 6_000_000 + step * n
        result = asyncio.run(drive(proxy.url, n // steps, concurrency=CLIENTS, max_seconds=600, first_id=first))
        if result.errors:
            raise RuntimeError(f"{kind}: {result.errors} failed requests during the memory run")
        samples.append(procfs.rss_mb(pid))
    return samples


def run(bench: Bench) -> Section:
    section = Section("memory", "4. Proxy memory")
    n, warmup, steps = (800, 100, 4) if bench.quick else (4_000, 300, 8)
    bench.start_proxies([NONE, OURS_BLOCK])
    bench.akto.configure(delay_ms=0)
    growth = {kind: _proxy_growth(bench, kind, n, warmup, steps) for kind in (NONE, OURS_BLOCK)}
    bench.akto.reset()
    for kind, samples in growth.items():
        row = Row(case=f"proxy RSS, {'no guardrail' if kind == NONE else 'ours, block'}, {n:,} requests", n=n)
        row.rss_mb = samples[-1]
        row.extra["growth MB"] = f"{samples[-1] - samples[0]:+.1f}"
        row.extra["median growth per slice MB"] = f"{_steady_growth(samples):+.2f}"
        row.extra["RSS per slice MB"] = " ".join(f"{s:.0f}" for s in samples)
        section.rows.append(row)
    ours, none = growth[OURS_BLOCK], growth[NONE]
    slice_n = n // steps
    excess_kb = (_steady_growth(ours) - _steady_growth(none)) * 1024 / slice_n
    section.targets.append(
        Target(
            goal=f"hook growth bounded: steady growth ≤ {HOOK_GROWTH_GOAL_KB_PER_REQ:g} KB/request over no guardrail's",
            measured=f"median growth per {slice_n:,} requests: ours {_steady_growth(ours):+.2f} MB, no guardrail "
            f"{_steady_growth(none):+.2f} MB ({excess_kb:+.2f} KB/request)",
            passed=None if bench.quick else excess_kb <= HOOK_GROWTH_GOAL_KB_PER_REQ,
            margin="only judged in the full run"
            if bench.quick
            else f"{HOOK_GROWTH_GOAL_KB_PER_REQ - excess_kb:+.2f} KB/request of headroom",
            bound="see 'RSS per slice': a leak grows in every slice; the allocator's steps show in both proxies",
        )
    )
    section.notes.append(
        f"Proxy RSS (VmRSS) after {warmup} warm-up requests and after each slice of {slice_n:,} requests, "
        f"{CLIENTS} concurrent clients, mock model, Akto answering at once."
    )
    return section
