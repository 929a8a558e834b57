"""Section 2, end to end through real LiteLLM proxies (mock model) on this machine.

Five proxies run side by side in one run: no guardrail, ours in monitor and in block mode, and
LiteLLM's built-in ``guardrail: akto`` in post_call and in pre_call+post_call. For each Akto delay the
cases are measured in rounds (A B C D E, A B C D E, ...) so drift on the machine lands on all of them
alike; ratios are against the no-guardrail proxy at the same delay. A default worker delivers our
proxies' records meanwhile, on the same cores, and the queue is drained before each window closes so
one case's deliveries never land in another's window.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procfs, profile
from .context import (
    BUILTIN_POST,
    BUILTIN_PREPOST,
    LABELS,
    NONE,
    NOOP,
    OURS,
    OURS_BLOCK,
    OURS_MONITOR,
    PROXY_KINDS,
    Bench,
    percentile,
)
from .load import LoadResult, drive
from .report import Profile, Row, Section, Target, margin

DELAYS_MS = (50, 200)
CLIENTS = 4
MONITOR_TOLERANCE = 0.05
BLOCK_SLACK_MS = 5.0


@dataclass
class Totals:
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    proxy_cpu_s: float = 0.0
    worker_cpu_s: float = 0.0
    akto_calls: int = 0
    akto_rejected: int = 0  # non-200 answers from the fake Akto: a broken comparison if not 0
    errors: int = 0

    def add(self, result: LoadResult) -> None:
        self.latencies_s += result.latencies_s
        self.elapsed_s += result.elapsed_s
        self.errors += result.errors

    @property
    def n(self) -> int:
        return len(self.latencies_s)

    def p(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1000

    @property
    def rate(self) -> float:
        return self.n / self.elapsed_s if self.elapsed_s else 0.0


# Each case names the proxy it drives. The no-guardrail proxy is measured twice, in separate windows
# (an A/A pair): their difference is this machine's noise floor for every ratio in the table.
NONE_AA = "none-aa"
CASES = (NONE, NONE_AA, *PROXY_KINDS[1:])
CASE_LABELS = {**LABELS, NONE_AA: "no guardrail, again (A/A noise floor)"}
# Frames that belong to each guardrail in a py-spy profile of its proxy (litellm's built-in lives in akto/).
_OURS_FRAMES = ("(akto_hook/", "(akto_ingest/")
_BUILTIN_FRAMES = ("(akto/akto",)
GUARDRAIL_FRAMES: dict[str, tuple[str, ...]] = {
    NOOP: ("(bench/noop_guardrail",),
    OURS_MONITOR: _OURS_FRAMES,
    OURS_BLOCK: _OURS_FRAMES,
    BUILTIN_POST: _BUILTIN_FRAMES,
    BUILTIN_PREPOST: _BUILTIN_FRAMES,
}


def _proxy_of(case: str) -> str:
    return NONE if case == NONE_AA else case


def _non200(stats: dict[str, Any]) -> int:
    return sum(int(v) for k, v in stats["requests"].items() if k != "200")


def _window(bench: Bench, case: str, n: int, first_id: int, totals: Totals) -> None:
    kind = _proxy_of(case)
    proxy = bench.proxies[kind]
    worker = bench.e2e_worker() if kind in OURS else None
    stats0 = bench.akto.stats()  # the previous window (or warm-up) ended with wait_drained
    cpu0 = procfs.cpu_seconds(proxy.proc.popen.pid)
    wcpu0 = procfs.cpu_seconds(worker.popen.pid) if worker else 0.0
    result = asyncio.run(drive(proxy.url, n, concurrency=CLIENTS, max_seconds=600, first_id=first_id))
    totals.proxy_cpu_s += procfs.cpu_seconds(proxy.proc.popen.pid) - cpu0
    bench.wait_drained(bench.e2e_queue)
    if worker:
        totals.worker_cpu_s += procfs.cpu_seconds(worker.popen.pid) - wcpu0
    stats1 = bench.akto.stats()
    totals.akto_calls += int(stats1["requests_total"]) - int(stats0["requests_total"])
    totals.akto_rejected += _non200(stats1) - _non200(stats0)
    totals.add(result)


@dataclass
class Sampled:
    """One proxy profiled under load: where its samples landed, and its CPU per request meanwhile."""

    kind: str
    path: Path
    cpu_ms_per_req: float

    def guardrail_share(self) -> float | None:
        frames = GUARDRAIL_FRAMES.get(self.kind)
        return profile.share(self.path, frames) if frames else None

    def ms_by_package(self) -> dict[str, float]:
        return {pkg: part * self.cpu_ms_per_req for pkg, part in profile.package_shares(self.path).items()}


def _profile(bench: Bench, kind: str, seconds: float) -> Sampled:
    """Sample one proxy under the same load (a separate, unmeasured window)."""
    proxy = bench.proxies[kind]
    out = bench.log_dir / f"profile-proxy-{kind}.txt"
    spy = profile.start(proxy.proc.popen.pid, seconds, out)
    time.sleep(1.0)
    cpu0 = procfs.cpu_seconds(proxy.proc.popen.pid)
    result = asyncio.run(drive(proxy.url, 100_000, concurrency=CLIENTS, max_seconds=seconds - 1, first_id=9_000_000))
    cpu = procfs.cpu_seconds(proxy.proc.popen.pid) - cpu0
    profile.finish(spy)
    bench.wait_drained(bench.e2e_queue)
    return Sampled(kind, out, cpu / max(1, len(result.latencies_s)) * 1000)


def _differential(sampled: dict[str, Sampled]) -> str:
    """Proxy CPU per request by package, each guardrail against no guardrail: where the added CPU goes."""
    base = sampled[NONE].ms_by_package()
    lines = []
    for kind, s in sampled.items():
        if kind == NONE:
            continue
        mine = s.ms_by_package()
        added = {pkg: mine.get(pkg, 0.0) - base.get(pkg, 0.0) for pkg in set(mine) | set(base)}
        top = sorted(added.items(), key=lambda kv: -kv[1])[:6]
        share = s.guardrail_share()
        lines.append(
            f"{LABELS[kind]}: {s.cpu_ms_per_req:.2f} ms/req vs {sampled[NONE].cpu_ms_per_req:.2f} "
            f"(guardrail code {share or 0:.1%} of samples = {(share or 0) * s.cpu_ms_per_req:.2f} ms/req)"
        )
        lines.append("  added ms/req by package: " + ", ".join(f"{pkg} {ms:+.2f}" for pkg, ms in top))
    return "\n".join(lines)


def _idle_worker_cores(bench: Bench, seconds: float = 3.0) -> float:
    """CPU the e2e worker burns with nothing to do (arq and the collector poll Redis every 50 ms)."""
    pid = bench.e2e_worker().popen.pid
    cpu0 = procfs.cpu_seconds(pid)
    time.sleep(seconds)
    return (procfs.cpu_seconds(pid) - cpu0) / seconds


def run(bench: Bench) -> Section:
    section = Section("e2e", f"2. End to end through a LiteLLM proxy ({CLIENTS} concurrent clients, mock model)")
    bench.start_proxies(PROXY_KINDS)
    if bench.quick:
        per_round, rounds, warmup = 30, 2, 10
    else:
        # Many short rounds: the proxies' speed drifts by several percent over minutes, and
        # interleaving finely spreads that drift evenly over every case.
        per_round, rounds, warmup = 100, 10, 40
    idle_worker = _idle_worker_cores(bench)
    totals: dict[tuple[str, int], Totals] = {}
    first_id = 0
    for delay in DELAYS_MS:
        bench.akto.configure(delay_ms=delay)
        for kind in PROXY_KINDS:
            asyncio.run(drive(bench.proxies[kind].url, warmup, concurrency=CLIENTS, max_seconds=120))
        bench.wait_drained(bench.e2e_queue)
        for rnd in range(rounds):
            # Rotate the order every round so no case always follows the slow built-in windows or
            # always comes first after a pause.
            shift = rnd % len(CASES)
            for case in CASES[shift:] + CASES[:shift]:
                _window(bench, case, per_round, first_id, totals.setdefault((case, delay), Totals()))
                first_id += per_round
        bench.akto.reset()

    shares: dict[str, float | None] = {}
    if bench.profiling:
        bench.akto.configure(delay_ms=50)
        seconds = 6 if bench.quick else 12
        sampled = {kind: _profile(bench, kind, seconds) for kind in PROXY_KINDS}
        shares = {kind: s.guardrail_share() for kind, s in sampled.items()}
        section.profiles.append(
            Profile("proxy CPU per request by package, each guardrail vs no guardrail (50 ms)", _differential(sampled))
        )
        for kind, s in sampled.items():
            focus = ("akto_hook", "akto_ingest") if kind in OURS else ("akto",) if kind != NONE else ()
            title = f"proxy '{LABELS[kind]}' under load, Akto delay 50 ms"
            section.profiles.append(Profile(title, profile.summarize(s.path, focus=focus)))
    bench.akto.configure(delay_ms=0)
    bench.akto.reset()

    for delay in DELAYS_MS:
        base = totals[(NONE, delay)]
        base_cpu = base.proxy_cpu_s / base.n
        for case in CASES:
            t = totals[(case, delay)]
            cpu = t.proxy_cpu_s / t.n
            row = Row(
                case=f"{CASE_LABELS[case]} @ {delay} ms",
                n=t.n,
                p50_ms=t.p(50),
                p99_ms=t.p(99),
                rate=t.rate,
                rate_unit="req/s",
                ratio_p50=t.p(50) / base.p(50),
                ratio_p99=t.p(99) / base.p(99),
                ratio_rate=t.rate / base.rate,
                cpu_ms=cpu * 1000,
                cpu_unit="/req (proxy)",
            )
            row.extra["CPU vs none ms/req"] = f"{(cpu - base_cpu) * 1000:+.2f}"
            row.extra["Akto calls/req"] = f"{t.akto_calls / t.n:.2f}"
            if case in OURS:
                row.extra["worker CPU ms/rec"] = f"{t.worker_cpu_s / t.n * 1000:.2f}"
            part = shares.get(case)
            if part is not None:
                row.extra["guardrail share of proxy CPU"] = f"{part:.1%}"
            if t.errors:
                row.extra["client errors"] = str(t.errors)
            if t.akto_rejected:
                row.extra["Akto non-200"] = str(t.akto_rejected)
            section.rows.append(row)

    _judge(section, totals, shares)
    openings = {kind: bench.breaker_openings(kind) for kind in sorted(OURS)}
    section.notes.append(
        "Hook breaker openings (Redis slower than enqueue_timeout, records spooled) in our proxies' logs: "
        + ", ".join(f"{LABELS[k]} {n}" for k, n in openings.items())
        + "."
    )
    section.notes += [
        "CPU ms is the proxy process's CPU time (user + system, from /proc) per request; 'CPU vs none' is what "
        "the guardrail adds to it. It grows when the proxy is less busy (at 200 ms the event loop wakes up for "
        "fewer requests at a time), so compare cases at the same delay.",
        "'guardrail share of proxy CPU' is the share of py-spy samples of that proxy, under the same load at 50 ms, "
        "whose stack is inside the guardrail's code (ours: akto_hook and akto_ingest; built-in: litellm's akto "
        "module, including its httpx calls).",
        f"'worker CPU' is the e2e worker's CPU per record it delivered, on the same cores as the proxy; it includes "
        f"the worker's idle polling, measured at {idle_worker:.1%} of a core with nothing to do.",
        "'Akto calls/req' counts every call the fake Akto received in the window, inline or from the worker "
        "(ours: the worker's one delivery per record; block mode adds the inline check).",
        f"{per_round * rounds} measured requests per case and delay after {warmup} warm-up requests, in "
        f"{rounds} interleaved rounds of {per_round}, the order rotated each round. The A/A row drives the "
        "no-guardrail proxy again in its own windows: its distance from 1.00x is the noise in every ratio here.",
    ]
    return section


def _judge(section: Section, totals: dict[tuple[str, int], Totals], shares: dict[str, float | None]) -> None:
    for delay in DELAYS_MS:
        base = totals[(NONE, delay)]
        aa = totals[(NONE_AA, delay)]
        mon = totals[(OURS_MONITOR, delay)]
        noop = totals[(NOOP, delay)]
        base_cpu = base.proxy_cpu_s / base.n
        r50, r99 = mon.p(50) / base.p(50), mon.p(99) / base.p(99)
        worst = max(r50, r99)
        part = shares.get(OURS_MONITOR)
        section.targets.append(
            Target(
                goal=f"monitor p50 and p99 within 5 % of no guardrail @ {delay} ms",
                measured=f"p50 {mon.p(50):.1f} vs {base.p(50):.1f} ms ({r50:.3f}x), "
                f"p99 {mon.p(99):.1f} vs {base.p(99):.1f} ms ({r99:.3f}x)",
                passed=worst <= 1 + MONITOR_TOLERANCE,
                margin=f"worst ratio {worst:.3f}x: {abs(worst - 1 - MONITOR_TOLERANCE) * 100:.1f} points "
                f"{'inside' if worst <= 1 + MONITOR_TOLERANCE else 'outside'} the 5 % band",
                bound=(
                    "split by the no-op control guardrail (post_call, does nothing): LiteLLM with it ran at "
                    f"{noop.p(50) / base.p(50):.3f}x p50, {noop.p(99) / base.p(99):.3f}x p99 and "
                    f"{(noop.proxy_cpu_s / noop.n - base_cpu) * 1000:+.2f} ms CPU/req; ours against that "
                    f"control: {mon.p(50) / noop.p(50):.3f}x p50, {mon.p(99) / noop.p(99):.3f}x p99, "
                    f"{(mon.proxy_cpu_s / mon.n - noop.proxy_cpu_s / noop.n) * 1000:+.2f} ms CPU/req"
                    + (
                        f"; py-spy puts {part:.1%} of the monitor proxy's samples in our code"
                        if part is not None
                        else ""
                    )
                    + f". The A/A pair (the same no-guardrail proxy in two sets of windows) differed by "
                    f"{aa.p(50) / base.p(50) - 1:+.1%} at p50 and {aa.p(99) / base.p(99) - 1:+.1%} at p99: the noise "
                    "floor of these ratios. The proxy is CPU-bound at 4 clients, so its latency follows its CPU "
                    "per request."
                ),
            )
        )
    for delay in DELAYS_MS:
        base = totals[(NONE, delay)]
        blk = totals[(OURS_BLOCK, delay)]
        goal = base.p(50) + delay + BLOCK_SLACK_MS
        section.targets.append(
            Target(
                goal=f"block p50 ≤ no guardrail + {delay} ms + {BLOCK_SLACK_MS:g} ms @ {delay} ms",
                measured=f"p50 {blk.p(50):.1f} ms; goal {goal:.1f} ms ({base.p(50):.1f} + {delay} + "
                f"{BLOCK_SLACK_MS:g})",
                passed=blk.p(50) <= goal,
                margin=margin(blk.p(50), goal, "ms", lower_is_better=True),
                bound=(
                    f"one inline check at {delay} ms plus {(blk.proxy_cpu_s - base.proxy_cpu_s) / blk.n * 1000:+.2f} "
                    "ms proxy CPU per request over no guardrail"
                ),
            )
        )
