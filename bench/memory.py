"""Section 4, memory: worker RSS under steady load, and the proxy's RSS growth over 10,000 requests.

The hook's growth is judged against a no-guardrail proxy driven the same way in the same run: LiteLLM
itself grows while it warms its caches, and only what our hook adds on top of that can be a leak of
ours. Akto answers at once here; latency does not matter to memory and this keeps the run short.
"""

from __future__ import annotations

import asyncio
import itertools

from . import procfs
from .context import NONE, OURS_BLOCK, Bench, median
from .load import drive
from .report import Row, Section, Target
from .worker import drain, records_held

WORKER_RSS_GOAL_MB = 100.0
# "Bounded": the hook may add at most this much steady growth to what LiteLLM grows by itself, i.e. half
# a record (about 1 KB) per request: 5 MB over 10,000 requests.
HOOK_GROWTH_GOAL_KB_PER_REQ = 0.5
CLIENTS = 4


def _steady_growth(samples: list[float]) -> float:
    """Median RSS increment per slice (MB)."""
    return median(b - a for a, b in itertools.pairwise(samples))


def _proxy_growth(bench: Bench, kind: str, n: int, warmup: int, steps: int) -> tuple[list[float], float]:
    """RSS after warm-up and after each of ``steps`` equal slices of ``n`` requests; also CPU s."""
    proxy = bench.proxies[kind]
    pid = proxy.proc.popen.pid
    asyncio.run(drive(proxy.url, warmup, concurrency=CLIENTS, max_seconds=300, first_id=5_000_000))
    bench.wait_drained(bench.e2e_queue)
    samples = [procfs.rss_mb(pid)]
    cpu0 = procfs.cpu_seconds(pid)
    for step in range(steps):
        result = asyncio.run(
            drive(proxy.url, n // steps, concurrency=CLIENTS, max_seconds=600, first_id=6_000_000 + step * n)
        )
        if result.errors:
            raise RuntimeError(f"{kind}: {result.errors} failed requests during the memory run")
        samples.append(procfs.rss_mb(pid))
    cpu = procfs.cpu_seconds(pid) - cpu0
    bench.wait_drained(bench.e2e_queue)
    return samples, cpu


def run(bench: Bench) -> Section:
    section = Section("memory", "4. Memory")
    n, warmup, steps = (1_000, 100, 4) if bench.quick else (10_000, 500, 10)
    bench.start_proxies([NONE, OURS_BLOCK])
    bench.akto.configure(delay_ms=0)
    growth: dict[str, list[float]] = {}
    openings0 = bench.breaker_openings(OURS_BLOCK)
    for kind in (NONE, OURS_BLOCK):
        samples, cpu = _proxy_growth(bench, kind, n, warmup, steps)
        growth[kind] = samples
        row = Row(
            case=f"proxy RSS, {'no guardrail' if kind == NONE else 'ours, block'}, {n:,} requests",
            n=n,
            rss_mb=samples[-1],
            cpu_ms=cpu / n * 1000,
            cpu_unit="/req (proxy)",
        )
        row.extra["RSS after warm-up MB"] = f"{samples[0]:.1f}"
        row.extra["growth MB"] = f"{samples[-1] - samples[0]:+.1f}"
        row.extra["median growth per slice MB"] = f"{_steady_growth(samples):+.2f}"
        row.extra["RSS per slice MB"] = " ".join(f"{s:.0f}" for s in samples)
        section.rows.append(row)
    bench.akto.reset()
    openings = bench.breaker_openings(OURS_BLOCK) - openings0
    if openings:
        section.notes.append(
            f"The hook's breaker opened {openings} time(s) during the proxy runs (Redis slower than "
            "enqueue_timeout): records went through the spool, which changes the memory picture."
        )

    # The worker at steady load: a backlog it works through at full speed for a while. The target is
    # judged on the settings a worker ships with; the tuned case shows what more slots cost.
    worker_cases = [
        ("worker RSS, per-record, default settings", "record", 4_000 if bench.quick else 30_000, None, True),
        ("worker RSS, batch, default settings", "batch", 6_000 if bench.quick else 60_000, None, True),
        ("worker RSS, batch, concurrency 1000", "batch", 6_000 if bench.quick else 60_000, "1000", False),
    ]
    peaks: dict[str, float] = {}
    judged: list[tuple[float, str]] = []
    explain = []
    for label, mode, count, conc, default in worker_cases:
        env = {} if conc is None else {"AKTO_WORKER_CONCURRENCY": conc}
        d = drain(bench, label, mode=mode, procs=1, n=count, env=env)
        held = records_held(bench, mode, env)
        peaks[label] = max(d.peak_rss_mb)
        if default:
            judged.append((peaks[label], label))
        row = Row(case=label, n=count, rss_mb=peaks[label], rate=d.rate, rate_unit="rec/s")
        row.extra["RSS before the backlog MB"] = f"{d.idle_rss_mb:.1f}"
        row.extra["median RSS MB"] = f"{median(d.rss_samples_mb):.1f}" if d.rss_samples_mb else ""
        row.extra["records held at most"] = f"{held:,}"
        row.extra["drain s"] = f"{d.elapsed_s:.1f}"
        section.rows.append(row)
        explain.append(
            f"{label.removeprefix('worker RSS, ')}: {d.idle_rss_mb:.0f} MB before the backlog, peak "
            f"{peaks[label]:.0f} MB (+{peaks[label] - d.idle_rss_mb:.0f} MB) with up to {held:,} records in its jobs"
        )

    worst, worst_label = max(judged)
    tuned = peaks["worker RSS, batch, concurrency 1000"]
    section.targets.append(
        Target(
            goal=f"worker RSS ≤ {WORKER_RSS_GOAL_MB:g} MB (default settings, full-speed backlog)",
            measured=f"peak {worst:.1f} MB ({worst_label.removeprefix('worker RSS, ')}); {tuned:.1f} MB with "
            "AKTO_WORKER_CONCURRENCY=1000 (batch)",
            passed=worst <= WORKER_RSS_GOAL_MB,
            margin=f"{WORKER_RSS_GOAL_MB - worst:+.1f} MB of headroom",
            bound="the records a worker holds at once (arq's max_jobs x records per job) on top of what the "
            "process needs idle: " + "; ".join(explain) + ".",
        )
    )
    ours, none = growth[OURS_BLOCK], growth[NONE]
    slice_n = n // steps
    # The allocator grows the heap in steps of several MB at moments of its choosing, in both proxies;
    # a leak grows in every slice. The median of the per-slice increments sees the leak, not the steps.
    excess_kb = (_steady_growth(ours) - _steady_growth(none)) * 1024 / slice_n
    section.targets.append(
        Target(
            goal=f"hook growth bounded: steady growth ≤ {HOOK_GROWTH_GOAL_KB_PER_REQ:g} KB/request over no "
            f"guardrail's, over {n:,} requests",
            measured=f"median growth per {slice_n:,} requests: ours {_steady_growth(ours):+.2f} MB, no guardrail "
            f"{_steady_growth(none):+.2f} MB ({excess_kb:+.2f} KB/request); in total ours {ours[-1] - ours[0]:+.1f} "
            f"MB, no guardrail {none[-1] - none[0]:+.1f} MB",
            passed=None if bench.quick else excess_kb <= HOOK_GROWTH_GOAL_KB_PER_REQ,
            margin="only judged in the full run"
            if bench.quick
            else f"{HOOK_GROWTH_GOAL_KB_PER_REQ - excess_kb:+.2f} KB/request of headroom",
            bound="see 'RSS per slice': a leak grows in every slice; the allocator's steps show in both proxies",
        )
    )
    section.notes += [
        f"Proxy RSS (VmRSS) after {warmup} warm-up requests and after each slice of {n // steps:,} requests, "
        f"{CLIENTS} concurrent clients, Akto answering at once; a worker delivers the records meanwhile.",
        "Worker RSS is sampled every 100 ms while it drains a backlog at full speed; the fake Akto answers "
        "after 50 ms.",
    ]
    return section
